"""Tests for rlhf_jax.feedback.labelers: the Bradley-Terry model and the simulated labeler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_jax.feedback.labelers import SimulatedLabeler, preference_probability
from rlhf_jax.rewards import scorers


class TableScorer:
  """A scorer that looks each text up in a table: known scores, no lexicon."""

  name = "table"
  score_range = (-1.0, 1.0)

  def __init__(self, table: dict[str, float]):
    self.table = table

  def score(self, texts):
    return np.array([self.table[t] for t in texts], dtype=np.float32)


class LengthScorer:
  """A reward-model-like scorer: only `name` and `score`, no known range."""

  name = "length"

  def score(self, texts):
    return np.array([len(t) for t in texts], dtype=np.float32)


def _pairs(n: int, seed: int = 0) -> tuple[TableScorer, list[str], list[str]]:
  scores = np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))
  a = [f"a{i}" for i in range(n)]
  b = [f"b{i}" for i in range(n)]
  table = dict(zip(a, scores[:, 0].tolist())) | dict(zip(b, scores[:, 1].tolist()))
  return TableScorer(table), a, b


# --- Bradley-Terry --------------------------------------------------------------------------


def test_preference_probability_hand_values():
  np.testing.assert_allclose(preference_probability(0.3, 0.3, 1.0), 0.5)
  np.testing.assert_allclose(preference_probability(math.log(3), 0.0, 1.0), 0.75)  # 3 / (3 + 1)
  np.testing.assert_allclose(preference_probability(0.0, math.log(3), 1.0), 0.25)
  # beta scales the difference: beta=2, diff=ln(3)/2 -> 0.75.
  np.testing.assert_allclose(preference_probability(math.log(3) / 2, 0.0, 2.0), 0.75)
  np.testing.assert_allclose(preference_probability(5.0, -5.0, 0.0), 0.5)  # beta 0: coin flip
  np.testing.assert_allclose(preference_probability(1e6, 0.0, 1.0), 1.0)  # no overflow
  np.testing.assert_allclose(preference_probability(-1e6, 0.0, 1.0), 0.0)


def test_preference_probability_matches_loop():
  rng = np.random.default_rng(1)
  r_a, r_b = rng.normal(size=50), rng.normal(size=50)
  for beta in (0.0, 0.5, 3.0, 40.0):
    expected = [1.0 / (1.0 + math.exp(-beta * (x - y))) for x, y in zip(r_a, r_b)]
    np.testing.assert_allclose(preference_probability(r_a, r_b, beta), expected, rtol=1e-12)


def test_preference_probability_beta_inf_is_a_step():
  p = preference_probability(np.array([1.0, -1.0, 0.2]), np.array([0.0, 0.0, 0.2]), math.inf)
  np.testing.assert_array_equal(p, [1.0, 0.0, 0.5])


def test_preference_probability_rejects_negative_beta():
  with pytest.raises(ValueError, match="beta"):
    preference_probability(0.0, 1.0, -1.0)


# --- comparisons ----------------------------------------------------------------------------


def test_compare_frequency_matches_bradley_terry():
  # Four pairs with known differences, each compared 20,000 times.
  table = {"x": 0.0, "y": 0.25, "z": 1.0}
  labeler = SimulatedLabeler(TableScorer(table), beta=2.0, seed=3)
  a, b = ["y", "z", "x", "z"], ["x", "x", "z", "y"]
  n = 20_000
  outcomes = np.array(labeler.compare(a * n, b * n)).reshape(n, len(a))
  freq = (outcomes == "a").mean(axis=0)
  expected = [1.0 / (1.0 + math.exp(-2.0 * (table[p] - table[q]))) for p, q in zip(a, b)]
  # 4 standard errors of a frequency of n draws (at most 0.5 / sqrt(n) = 0.0035).
  np.testing.assert_allclose(freq, expected, atol=4 * 0.5 / math.sqrt(n))
  assert set(outcomes.ravel()) == {"a", "b"}


def test_compare_ties_below_margin():
  table = {"p": 0.50, "q": 0.53, "r": 0.60, "s": 0.44}
  labeler = SimulatedLabeler(TableScorer(table), beta=1.0, tie_margin=0.05, seed=0)
  out = labeler.compare(["p", "p", "q", "p"] * 50, ["q", "r", "p", "s"] * 50)
  out = np.array(out).reshape(50, 4)
  assert (out[:, 0] == "tie").all() and (out[:, 2] == "tie").all()  # |diff| 0.03 < 0.05
  assert not (out[:, 1] == "tie").any()  # 0.10
  assert not (out[:, 3] == "tie").any()  # 0.06


def test_compare_beta_inf_is_deterministic():
  scorer, a, b = _pairs(200)
  labeler = SimulatedLabeler(scorer, beta=math.inf, seed=0)
  other = SimulatedLabeler(scorer, beta=math.inf, seed=99)
  r_a, r_b = scorer.score(a), scorer.score(b)
  expected = ["a" if x > y else "b" for x, y in zip(r_a, r_b)]
  assert labeler.compare(a, b) == expected
  assert other.compare(a, b) == expected


def test_compare_reproducible_with_seed_and_differs_with_another():
  scorer, a, b = _pairs(300)
  first = SimulatedLabeler(scorer, beta=1.0, seed=7)
  second = SimulatedLabeler(scorer, beta=1.0, seed=7)
  assert [first.compare(a, b) for _ in range(3)] == [second.compare(a, b) for _ in range(3)]
  assert SimulatedLabeler(scorer, beta=1.0, seed=8).compare(a, b) != (
      SimulatedLabeler(scorer, beta=1.0, seed=7).compare(a, b))
  # The stream advances: a second call on the same inputs gives fresh noise.
  labeler = SimulatedLabeler(scorer, beta=1.0, seed=7)
  assert labeler.compare(a, b) != labeler.compare(a, b)


def test_compare_stream_advances_n_uniforms_per_pair():
  """Splitting one call into two gives the same outcomes: the stream does not depend on ties."""
  scorer, a, b = _pairs(100)
  whole = SimulatedLabeler(scorer, beta=3.0, tie_margin=0.2, seed=5).compare(a, b)
  halves = SimulatedLabeler(scorer, beta=3.0, tie_margin=0.2, seed=5)
  assert halves.compare(a[:37], b[:37]) + halves.compare(a[37:], b[37:]) == whole


def test_compare_checks_lengths_and_scores():
  labeler = SimulatedLabeler(TableScorer({"x": 0.0}), beta=1.0)
  with pytest.raises(ValueError, match="texts_a and texts_b"):
    labeler.compare(["x", "x"], ["x"])

  class NanScorer:
    name = "nan"

    def score(self, texts):
      return np.full(len(texts), np.nan, dtype=np.float32)

  with pytest.raises(ValueError, match="scorer 'nan'.*finite"):
    SimulatedLabeler(NanScorer(), beta=1.0).compare(["x"], ["y"])


# --- ratings --------------------------------------------------------------------------------


def test_rate_noiseless_in_range_and_monotone():
  values = np.linspace(-1.2, 1.2, 241)  # beyond both ends of the range too
  texts = [f"t{i}" for i in range(len(values))]
  labeler = SimulatedLabeler(TableScorer(dict(zip(texts, values.tolist()))), beta=1.0)
  for scale in (2, 5, 7):
    ratings = labeler.rate(texts, scale=scale)
    assert all(type(r) is int for r in ratings)  # what the feedback store accepts
    ratings = np.array(ratings)
    assert ratings.min() == 1 and ratings.max() == scale
    assert (np.diff(ratings) >= 0).all()
  # Hand values on (-1, 1) with 5 bins of width 0.4: -1 -> 1, -0.61 -> 1, -0.59 -> 2, 0 -> 3,
  # 0.99 -> 5, 1 -> 5.
  table = {"a": -1.0, "b": -0.61, "c": -0.59, "d": 0.0, "e": 0.99, "f": 1.0}
  labeler = SimulatedLabeler(TableScorer(table), beta=1.0)
  assert labeler.rate(list(table), scale=5) == [1, 1, 2, 3, 5, 5]


def test_rate_noise_is_seeded_and_stays_in_range():
  texts = [f"t{i}" for i in range(500)]
  table = dict(zip(texts, np.linspace(-1, 1, 500).tolist()))
  make = lambda seed: SimulatedLabeler(TableScorer(table), beta=1.0, seed=seed, rating_std=0.3)
  ratings = np.array(make(0).rate(texts, scale=5))
  assert ((ratings >= 1) & (ratings <= 5)).all()
  np.testing.assert_array_equal(ratings, make(0).rate(texts, scale=5))
  assert not np.array_equal(ratings, make(1).rate(texts, scale=5))
  noiseless = np.array(SimulatedLabeler(TableScorer(table), beta=1.0).rate(texts, scale=5))
  assert not np.array_equal(ratings, noiseless)
  assert np.abs(ratings.astype(int) - noiseless).mean() < 1.0


def test_rate_needs_a_range_for_unbounded_scorers():
  with pytest.raises(ValueError, match="score_range.*'length'"):
    SimulatedLabeler(LengthScorer(), beta=1.0).rate(["abc"], scale=5)
  labeler = SimulatedLabeler(LengthScorer(), beta=1.0, score_range=(0, 10))
  assert labeler.rate(["", "abcde", "a" * 20], scale=2) == [1, 2, 2]


# --- names and validation -------------------------------------------------------------------


def test_name_encodes_settings():
  scorer = TableScorer({})
  assert SimulatedLabeler(scorer, beta=5, tie_margin=0.05, seed=0).name == (
      "table(beta=5,tie=0.05,seed=0)")
  assert SimulatedLabeler(scorer, beta=math.inf).name == "table(beta=inf,tie=0,seed=0)"
  assert SimulatedLabeler(scorer, beta=1, seed=3, rating_std=0.2, score_range=(0, 2)).name == (
      "table(beta=1,tie=0,seed=3,rating_std=0.2,range=0..2)")


@pytest.mark.parametrize("kwargs, field", [
    ({"beta": -1.0}, "beta"),
    ({"beta": float("nan")}, "beta"),
    ({"beta": "high"}, "beta"),
    ({"beta": 1.0, "tie_margin": -0.1}, "tie_margin"),
    ({"beta": 1.0, "tie_margin": math.inf}, "tie_margin"),
    ({"beta": 1.0, "seed": -1}, "seed"),
    ({"beta": 1.0, "seed": 1.5}, "seed"),
    ({"beta": 1.0, "rating_std": -1.0}, "rating_std"),
    ({"beta": 1.0, "score_range": (1.0, 1.0)}, "score_range"),
])
def test_invalid_arguments_name_the_argument(kwargs, field):
  with pytest.raises(ValueError, match=f"^{field}"):
    SimulatedLabeler(TableScorer({}), **kwargs)


@pytest.mark.parametrize("scale", [1, 0, 2.5, True])
def test_invalid_scale(scale):
  with pytest.raises(ValueError, match="^scale"):
    SimulatedLabeler(TableScorer({"x": 0.0}), beta=1.0).rate(["x"], scale=scale)


def test_scorer_must_have_name_and_score():
  with pytest.raises(TypeError, match="scorer"):
    SimulatedLabeler(lambda texts: texts, beta=1.0)


# --- the lexicon scorers and the registry -----------------------------------------------------

POSITIVE = "This is wonderful. I love it, the best and most delicious snack I have ever had!"
NEGATIVE = "This is awful. I hate it, the worst and most disgusting snack I have ever had."


def test_simulated_labeler_on_a_lexicon():
  labeler = SimulatedLabeler(scorers.get_scorer("vader"), beta=math.inf, tie_margin=0.05, seed=0)
  assert labeler.name == "vader(beta=inf,tie=0.05,seed=0)"
  assert labeler.compare([POSITIVE, NEGATIVE, POSITIVE], [NEGATIVE, POSITIVE, POSITIVE]) == [
      "a", "b", "tie"]
  assert labeler.rate([NEGATIVE, POSITIVE], scale=5) == [1, 5]
