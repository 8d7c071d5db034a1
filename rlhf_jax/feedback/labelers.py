"""Simulated labelers: a scorer that stands in for a person's taste, plus a noise model.

Experiments need judgements that are cheap, repeatable, and come from a known ground truth, so
that a learned reward model and a tuned policy can be checked against the taste that produced the
labels (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization", use a "gold" reward
model this way). A labeler here is two parts:

* a `Scorer` (`rewards.scorers`): anything with a `name` and `score(texts) -> float32 array`
  (higher = better): a lexicon, a user's function or a trained reward model (the "gold reward
  model" labeler).
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

import math
from typing import Literal, Sequence

import numpy as np

from rlhf_jax.rewards.scorers import Scorer, score_range_of, score_texts

Outcome = Literal["a", "b", "tie"]


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

  def skip_comparisons(self, n: int) -> None:
    """Draws the noise of `n` comparisons and drops it: a labeler resuming a collection after `n`
    stored comparisons then judges the rest as the labeler of an unbroken collection did."""
    self._rng.random(n)

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
