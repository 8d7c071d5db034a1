"""Simulated labelers: a scorer that stands in for a person's taste, plus a noise model.

Experiments need judgements that are cheap, repeatable, and come from a known ground truth, so
that a learned reward model and a tuned policy can be checked against the taste that produced the
labels (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization", use a "gold" reward
model this way). A labeler here is two parts:

* a `Scorer`: anything with a `name` and `score(texts) -> float32 array` (higher = better). The
  lexicon sentiment scorers VADER, TextBlob and AFINN ship in this module (`SCORERS` is the only
  list of their names); a trained reward model becomes one more `Scorer` (the "gold reward
  model" labeler) without any change here.
* `SimulatedLabeler`: turns scores into pairwise comparisons with Bradley-Terry noise, eq. (1),
  with a dead band for ties, and into 1..N ratings by quantizing the scorer's range.

    (1)  P(a > b) = sigmoid(beta * (r_a - r_b))        Bradley & Terry (1952)

Christiano et al. (2017, "Deep RL from Human Preferences", sec. 2.2) fit reward models under
exactly this model, and their synthetic-feedback experiments label with the true reward; Gao et
al. (2022) label with a gold reward model. `beta` is the labeler's rationality: 0 is a coin flip,
`inf` always picks the higher score.

The labeler knows nothing about where judgements are stored: the caller passes
`labeler.compare(...)`'s outcomes to the feedback store together with `labeler.name`, which
encodes every setting that changes the judgements, the way a person's name would be recorded.
"""

from __future__ import annotations

import difflib
import math
from typing import Callable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

Outcome = Literal["a", "b", "tie"]


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


# The only list of scorer names.
SCORERS: dict[str, Callable[[], Scorer]] = {
    "vader": VaderScorer,
    "textblob": TextBlobScorer,
    "afinn": AfinnScorer,
}


def get_scorer(name: str) -> Scorer:
  """A new scorer registered as `name`, or a ValueError listing the valid names and the nearest.

  `rm:WORKDIR` is a trained reward model (`pretrained.RewardModelScorer`), the gold-RM labeler;
  `py:MODULE:FUNCTION` any importable Python function `texts -> scores` (`FunctionScorer`).
  """
  if name.startswith("py:"):
    return FunctionScorer.from_path(name[3:])
  if name.startswith("rm:"):
    from rlhf_jax.pretrained import RewardModelScorer  # imports JAX: only when asked for

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


# ---------------------------------------------------------------------------------------------
# The noise model.


def preference_probability(r_a: np.ndarray, r_b: np.ndarray, beta: float) -> np.ndarray:
  """Bradley-Terry P(a > b) = sigmoid(beta * (r_a - r_b)), eq. (1), elementwise (float64).

  Bradley & Terry (1952); the preference model of Christiano et al. (2017, eq. 1) and of the
  simulated labelers of Gao et al. (2022). sigmoid(x) is computed from e = exp(-|x|) as
  1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0: no overflow, and full relative precision
  for tiny probabilities. beta = inf is the noiseless labeler: 1 when r_a > r_b, 0 when
  r_a < r_b, and 1/2 on an exact tie (not inf * 0 = nan).
  """
  if not beta >= 0:
    raise ValueError(f"beta: expected a number >= 0 (inf for a noiseless labeler), got {beta}")
  diff = np.asarray(r_a, dtype=np.float64) - np.asarray(r_b, dtype=np.float64)
  with np.errstate(invalid="ignore"):
    logits = np.where(diff == 0, 0.0, beta * diff)
  e = np.exp(-np.abs(logits))
  return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_number(value: float, field: str, *, low: float, allow_inf: bool = False) -> float:
  """`value` as a float >= low (finite unless allow_inf), or a ValueError naming `field`."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{field}: expected a number, got {value!r}") from None
  if not (number >= low and (allow_inf or math.isfinite(number))):
    what = f"a number >= {low:g}" + (" (inf allowed)" if allow_inf else ", finite")
    raise ValueError(f"{field}: expected {what}, got {value!r}")
  return number


def _check_range(value: tuple[float, float] | None) -> tuple[float, float] | None:
  """`value` as finite floats (low, high) with low < high, or a ValueError naming score_range."""
  if value is None:
    return None
  try:
    low, high = (float(x) for x in value)
  except (TypeError, ValueError):
    raise ValueError(f"score_range: expected (low, high), got {value!r}") from None
  if not (math.isfinite(low) and math.isfinite(high) and low < high):
    raise ValueError(f"score_range: expected finite (low, high) with low < high, got {value!r}")
  return low, high


class SimulatedLabeler:
  """Compares and rates texts like a person whose taste is `scorer`, with seeded noise.

  Arguments:
    scorer: the ground truth (higher = better).
    beta: Bradley-Terry rationality in eq. (1); >= 0, `inf` = always prefer the higher score.
    tie_margin: a comparison is a tie when |r_a - r_b| < tie_margin (0: never a tie).
    seed: seeds the labeler's one `np.random.Generator` (PCG64).
    rating_std: std of the Gaussian noise added to a score, in score units, before `rate`
      quantizes it (0: ratings are a deterministic function of the score).
    score_range: (low, high) quantized by `rate`; defaults to the scorer's `score_range`
      (VADER and TextBlob: (-1, 1)). Needed only by `rate`.

  Randomness: the generator is created once from `seed` and advances with every call:
  `compare` of n pairs draws exactly n uniforms (also for ties and for beta = inf, so the stream
  does not depend on the scores), `rate` of n texts draws n normals when rating_std > 0 and
  nothing otherwise. The same labeler settings given the same calls in the same order therefore
  give the same judgements; a new labeler with the same seed starts the stream again.
  """

  def __init__(
      self,
      scorer: Scorer,
      *,
      beta: float,
      tie_margin: float = 0.0,
      seed: int = 0,
      rating_std: float = 0.0,
      score_range: tuple[float, float] | None = None,
  ) -> None:
    if not isinstance(scorer, Scorer):
      raise TypeError(f"scorer: expected an object with `name` and `score(texts)`, got "
                      f"{type(scorer).__name__}")
    self.scorer = scorer
    self.beta = _check_number(beta, "beta", low=0.0, allow_inf=True)
    self.tie_margin = _check_number(tie_margin, "tie_margin", low=0.0)
    self.rating_std = _check_number(rating_std, "rating_std", low=0.0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    self.seed = int(seed)
    self._explicit_range = score_range is not None
    self.score_range = _check_range(score_range if score_range is not None
                                    else score_range_of(scorer))
    self._rng = np.random.default_rng(self.seed)

  @property
  def name(self) -> str:
    """The scorer and every setting that changes judgements: `vader(beta=5,tie=0.05,seed=0)`.

    Settings left at their defaults (rating_std = 0, the scorer's own range) are not written.
    """
    settings = [f"beta={self.beta:g}", f"tie={self.tie_margin:g}", f"seed={self.seed}"]
    if self.rating_std:
      settings.append(f"rating_std={self.rating_std:g}")
    if self._explicit_range:
      low, high = self.score_range
      settings.append(f"range={low:g}..{high:g}")
    return f"{self.scorer.name}({','.join(settings)})"

  def __repr__(self) -> str:
    return f"SimulatedLabeler({self.name})"

  def compare(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> list[Outcome]:
    """One judgement per pair (texts_a[i], texts_b[i]): 'a', 'b' or 'tie'.

    'tie' when |r_a - r_b| < tie_margin; otherwise 'a' with probability P(a > b) of eq. (1)
    (u < P for a uniform u in [0, 1)), else 'b'.
    """
    if len(texts_a) != len(texts_b):
      raise ValueError(f"texts_a and texts_b: expected the same number of texts, got "
                       f"{len(texts_a)} and {len(texts_b)}")
    r_a = score_texts(self.scorer, texts_a)
    r_b = score_texts(self.scorer, texts_b)
    u = self._rng.random(len(texts_a))
    a_wins = u < preference_probability(r_a, r_b, self.beta)
    tie = np.abs(r_a.astype(np.float64) - r_b) < self.tie_margin
    return ["tie" if t else ("a" if w else "b") for t, w in zip(tie, a_wins)]

  def rate(self, texts: Sequence[str], scale: int = 5) -> list[int]:
    """Ratings 1..scale (Python ints, as the feedback store takes them): the score range cut
    into `scale` equal-width bins.

    rating = 1 + floor(scale * (s - low) / (high - low)), clipped to 1..scale, where
    s = score + N(0, rating_std^2) and (low, high) is the score range; scores at or beyond the
    ends get the end ratings. Without noise the rating is non-decreasing in the score.
    Equal-width bins keep the lexicon's absolute meaning (VADER compound 0 is "neutral"), so a
    skewed score distribution gives skewed ratings, as a person's star ratings are.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
      raise ValueError(f"scale: expected an integer >= 2, got {scale!r}")
    if self.score_range is None:
      raise ValueError(f"score_range: scorer {self.scorer.name!r} has no known score range; "
                       "pass SimulatedLabeler(..., score_range=(low, high)) to rate with it")
    scores = score_texts(self.scorer, texts).astype(np.float64)
    if self.rating_std:
      scores = scores + self.rating_std * self._rng.standard_normal(len(texts))
    low, high = self.score_range
    bins = np.floor(scale * (scores - low) / (high - low))
    return (1 + np.clip(bins, 0, scale - 1)).astype(int).tolist()
