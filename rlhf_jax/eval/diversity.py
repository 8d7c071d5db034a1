"""Diversity of a set of generated texts: distinct-n (Li et al. 2016) and self-BLEU (Zhu et al. 2018).

Both work on whitespace words, so numbers compare across tokenizers. RL against a reward tends
to collapse a policy onto a few high-reward phrasings; these say how far.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
  return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
  """Distinct n-grams over all n-grams in `texts` (pooled over the set; 0 when there are none).

  Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models": the
  number of distinct n-grams divided by the total number of generated n-grams.
  """
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  grams = [g for t in texts for g in ngrams(t.split(), n)]
  return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], *, max_n: int = 4, max_texts: int = 200, seed: int = 0) -> float:
  """Mean BLEU-`max_n` of each text against all the others as references (Zhu et al. 2018,
  "Texygen"): 1 when every text repeats the others, near 0 for unrelated ones. nltk's
  sentence BLEU with smoothing method 1 (Chen & Cherry 2014), so short texts do not score 0 for
  a missing 4-gram. Above `max_texts` texts a seeded subset of that size is used (the cost is
  quadratic). Texts with no words are left out; fewer than two texts give nan.
  """
  words = [t.split() for t in texts if t.split()]
  if len(words) > max_texts:
    keep = np.random.default_rng(seed).choice(len(words), max_texts, replace=False)
    words = [words[i] for i in sorted(keep)]
  if len(words) < 2:
    return float("nan")
  weights = tuple([1.0 / max_n] * max_n)
  smooth = SmoothingFunction().method1
  scores = [sentence_bleu(words[:i] + words[i + 1:], hyp, weights=weights, smoothing_function=smooth)
            for i, hyp in enumerate(words)]
  return float(np.mean(scores))
