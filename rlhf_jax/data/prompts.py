"""Prompt sets for sampling, labeling and RL: fixed, seeded, split into train and held-out.

The default prompts are the first words of WordNet's example sentences (a packaged corpus, see
`corpora`): short, varied, neutral openings that a policy can continue positively or negatively,
the role IMDb review openings play in Ziegler et al. (2019) and the DPO paper.
"""

from __future__ import annotations

import numpy as np

from rlhf_jax.data import corpora


def wordnet_openings(num_prompts: int, words: int, seed: int) -> list[str]:
  """The first `words` words of distinct WordNet example sentences, in a seeded order."""
  docs = corpora.load_documents("wordnet_examples")
  starts = sorted({" ".join(d.text.split()[:words]) for d in docs if len(d.text.split()) > words})
  if num_prompts > len(starts):
    raise ValueError(f"num_prompts={num_prompts} exceeds the {len(starts)} distinct WordNet openings of {words} words")
  order = np.random.default_rng(seed).permutation(len(starts))[:num_prompts]
  return [starts[i] for i in order]


def split_prompts(prompts: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
  """(train, held-out) by a stable hash of the text (`corpora.is_validation`): a prompt's side never
  depends on which other prompts are in the set."""
  test = [p for p in prompts if corpora.is_validation(p, test_fraction)]
  held = set(test)
  return [p for p in prompts if p not in held], test


def encode_prompts(tokenizer, prompts: list[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded int32 tokens [N, length] and mask: the sampler's prompt layout.

  A prompt longer than `length` keeps its last tokens (the ones next to the continuation); an
  empty one becomes a lone EOS, so that every row has a real token. `length=None`: the longest
  prompt's length.
  """
  encoded = [ids or [tokenizer.eos_id] for ids in tokenizer.encode_batch(prompts)]
  length = max(map(len, encoded), default=1) if length is None else length
  tokens_NxP = np.full((len(prompts), length), tokenizer.pad_id, np.int32)
  mask_NxP = np.zeros((len(prompts), length), np.int32)
  for i, ids in enumerate(encoded):
    ids = ids[-length:]
    tokens_NxP[i, length - len(ids):] = ids
    mask_NxP[i, length - len(ids):] = 1
  return tokens_NxP, mask_NxP
