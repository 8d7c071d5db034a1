"""Scorers of texts: anything with a `name` and `score(texts) -> float32 array` (higher = better).

A scorer is the taste a simulated labeler judges with (`feedback.labelers`), the gold judge of an
RL task, a head-to-head judge and, through `rewards.tokens.HostReward`, an RL reward. Three
lexicon sentiment scorers ship here (VADER, TextBlob, AFINN) and the QA task's gold, `wordnet-qa`
(`SCORERS` is the only list of their names); `py:MODULE:FUNCTION` is a user's Python function (`FunctionScorer`) and `rm:WORKDIR` a
trained reward model (`rewards.reward_model.RewardModelScorer`). `get_scorer(name)` builds any
of them and `score_texts` checks what a scorer returns.
"""

from __future__ import annotations

import difflib
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Scorer(Protocol):
  """Anything that scores texts: higher is better. `name` identifies it in labeler names."""

  @property
  def name(self) -> str: ...

  def score(self, texts: Sequence[str]) -> np.ndarray:
    """Scores as a float32 array of shape (len(texts),)."""
    ...


def score_range_of(scorer: Scorer) -> tuple[float, float] | None:
  """The scorer's documented (low, high) range, or None when it has none (e.g. a reward model).

  A scorer declares its range with a `score_range` attribute; it is optional so that a reward
  model stays a two-member object. Only `SimulatedLabeler.rate` needs it.
  """
  value = getattr(scorer, "score_range", None)
  return None if value is None else (float(value[0]), float(value[1]))


# ---------------------------------------------------------------------------------------------
# Lexicon scorers. Their packages are imported when a scorer is built, not with this module:
# TextBlob pulls in NLTK, which takes ~2 s to import.


class VaderScorer:
  """VADER's compound score in [-1, 1] (Hutto & Gilbert 2014, PyPI `vadersentiment`).

  The compound score sums the valences of the words found in VADER's 7.5k-word lexicon (human
  ratings averaged over 10 raters), adjusted by rules for negation, intensifiers, "but",
  capitals and exclamation marks, then squashes the sum with x / sqrt(x^2 + 15).
  """

  name = "vader"
  score_range = (-1.0, 1.0)

  def __init__(self) -> None:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    self._analyzer = SentimentIntensityAnalyzer()

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return np.array([self._analyzer.polarity_scores(t)["compound"] for t in texts],
                    dtype=np.float32)


class TextBlobScorer:
  """TextBlob's pattern polarity in [-1, 1] (PyPI `textblob`).

  The `PatternAnalyzer` averages the polarity of the adjectives found in pattern's lexicon,
  with modifiers for negation and intensity. It is named explicitly because it needs no NLTK
  corpora (TextBlob's other analyzer, NaiveBayes, would download the movie-review corpus).
  """

  name = "textblob"
  score_range = (-1.0, 1.0)

  def __init__(self) -> None:
    from textblob.en.sentiments import PatternAnalyzer

    self._analyzer = PatternAnalyzer()

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return np.array([self._analyzer.analyze(t).polarity for t in texts], dtype=np.float32)


class AfinnScorer:
  """AFINN valences (Nielsen 2011, PyPI `afinn`, English list AFINN-en-165).

  Each listed word (or phrase) has an integer valence in -5..5. By default the score is their
  sum, as AFINN defines it: unbounded, and it grows with length, so longer texts with the same
  tone score further from 0 (a length bias a reward model can learn and a policy can exploit).
  With `normalize=True` the sum is divided by the number of words (AFINN's own tokenizer,
  `Afinn.split`; 0 for a text without words): the mean valence per word, in [-5, 5].
  """

  score_range: tuple[float, float] | None

  def __init__(self, normalize: bool = False) -> None:
    from afinn import Afinn

    self._afinn = Afinn(language="en")
    self.normalize = normalize
    self.score_range = (-5.0, 5.0) if normalize else None

  @property
  def name(self) -> str:
    return "afinn-per-word" if self.normalize else "afinn"

  def _score_one(self, text: str) -> float:
    total = self._afinn.score(text)
    if not self.normalize:
      return total
    n_words = len(self._afinn.split(text))
    return total / n_words if n_words else 0.0

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return np.array([self._score_one(t) for t in texts], dtype=np.float32)


class FunctionScorer:
  """A user's Python function `fn(texts) -> scores` as a scorer (a reward for RL, a labeler's taste).

  `get_scorer("py:package.module:function")` imports it; the module must be importable (on
  PYTHONPATH or installed). Scores are checked like every scorer's (`score_texts`).
  """

  def __init__(self, fn: Callable[[Sequence[str]], Sequence[float]], name: str | None = None) -> None:
    if not callable(fn):
      raise TypeError(f"fn: expected a callable texts -> scores, got {type(fn).__name__}")
    self._fn = fn
    self.name = name or f"py:{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"

  @classmethod
  def from_path(cls, path: str) -> "FunctionScorer":
    import importlib

    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
      raise ValueError(f"scorer py:{path}: expected py:MODULE:FUNCTION, e.g. py:my_rewards:length_bonus")
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ValueError(f"scorer py:{path}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if fn is None:
      raise ValueError(f"scorer py:{path}: module {module_name!r} has no attribute {attr!r}")
    return cls(fn, name=f"py:{path}")

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return np.asarray(self._fn(list(texts)), dtype=np.float32)


class WordnetQAScorer:
  """1 for a right answer to a `wordnet-qa-v1` question, else 0 (`data.wordnet_qa.is_correct`
  against every answer WordNet knows): the QA task's gold judge.

  It reads the prompt with the response (`reads_prompt`: evaluation passes it prompt + response),
  since the question decides which answers are right; the text must be the task's prompt,
  "Question: ...\nAnswer:", then the response.
  """
  name = "wordnet-qa"
  reads_prompt = True
  score_range = (0.0, 1.0)

  def __init__(self) -> None:
    from rlhf_jax.data import wordnet_qa

    self._qa = wordnet_qa
    self._answers = {q["question"]: q["answers"] for q in wordnet_qa.load()}

  def score(self, texts: Sequence[str]) -> np.ndarray:
    out = np.zeros(len(texts), np.float32)
    for i, text in enumerate(texts):
      head, sep, response = text.partition("\nAnswer:")
      question = head.rpartition("Question: ")[2]
      if not sep or question not in self._answers:
        raise ValueError(f"scorer wordnet-qa: text {i} is not a wordnet-qa-v1 question and its answer "
                         f"(expected 'Question: ...\\nAnswer: ...'), got {text[:80]!r}")
      out[i] = self._qa.is_correct(response, self._answers[question])
    return out


# The only list of scorer names.
SCORERS: dict[str, Callable[[], Scorer]] = {
    "vader": VaderScorer,
    "textblob": TextBlobScorer,
    "afinn": AfinnScorer,
    "wordnet-qa": WordnetQAScorer,
}


def get_scorer(name: str) -> Scorer:
  """A new scorer registered as `name`, or a ValueError listing the valid names and the nearest.

  `rm:WORKDIR` is a trained reward model (`reward_model.RewardModelScorer`), the gold-RM labeler;
  `py:MODULE:FUNCTION` any importable Python function `texts -> scores` (`FunctionScorer`).
  """
  if name.startswith("py:"):
    return FunctionScorer.from_path(name[3:])
  if name.startswith("rm:"):
    from rlhf_jax.rewards.reward_model import RewardModelScorer  # imports JAX: only when asked for

    return RewardModelScorer(name[3:])
  if name not in SCORERS:
    close = difflib.get_close_matches(name, list(SCORERS), n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown scorer {name!r}{hint} Valid scorers: {', '.join(sorted(SCORERS))}, "
                     "or rm:WORKDIR for a trained reward model")
  return SCORERS[name]()


def score_texts(scorer: Scorer, texts: Sequence[str]) -> np.ndarray:
  """`scorer.score(texts)` checked to be finite float32 of shape (len(texts),).

  A reward model or a new scorer that returns the wrong shape or a NaN would otherwise turn into
  silently wrong judgements.
  """
  scores = np.asarray(scorer.score(texts), dtype=np.float32)
  if scores.shape != (len(texts),):
    raise ValueError(f"scorer {scorer.name!r}: expected scores of shape ({len(texts)},) for "
                     f"{len(texts)} texts, got shape {scores.shape}")
  if not np.all(np.isfinite(scores)):
    bad = int(np.flatnonzero(~np.isfinite(scores))[0])
    raise ValueError(f"scorer {scorer.name!r}: score of text {bad} is {scores[bad]}, "
                     "expected a finite number")
  return scores


def score_responses(scorer: Scorer, prompts: Sequence[str], responses: Sequence[str], with_prompt: bool) -> np.ndarray:
  """The scorer's checked float32 scores of the responses (after their prompts when `with_prompt`)."""
  texts = [p + r for p, r in zip(prompts, responses)] if with_prompt else list(responses)
  return score_texts(scorer, texts)


def score_as_judge(scorer: Scorer, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """A judge's scores of responses: of the responses alone, or after their prompts for a scorer
  that needs the question to judge the answer (`reads_prompt`, e.g. `WordnetQAScorer`)."""
  return score_responses(scorer, prompts, responses, getattr(scorer, "reads_prompt", False))
