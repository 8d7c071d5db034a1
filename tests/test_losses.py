"""Reward-model losses against hand-computed values and plain-Python loops."""

import math

import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses


def test_bradley_terry_hand_computed():
  # Margin 0 -> -log(1/2); margin ln 3 -> -log(3/4); the masked pair does not count.
  total, count = losses.bradley_terry_loss(jnp.array([1.0, math.log(3.0), 5.0]), jnp.array([1.0, 0.0, -5.0]),
                                           jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(total, math.log(2.0) - math.log(0.75), rtol=1e-6)
  assert count == 2


def test_bradley_terry_matches_loop_and_stays_finite():
  rng = np.random.default_rng(0)
  rc, rr = rng.normal(size=16) * 3, rng.normal(size=16) * 3
  expected = sum(-math.log(1.0 / (1.0 + math.exp(-(c - r)))) for c, r in zip(rc, rr))
  np.testing.assert_allclose(losses.bradley_terry_loss(jnp.array(rc), jnp.array(rr))[0], expected, rtol=1e-5)
  total, _ = losses.bradley_terry_loss(jnp.array([-100.0]), jnp.array([100.0]))
  np.testing.assert_allclose(total, 200.0, rtol=1e-6)  # -log sigmoid(-200), not inf


def test_binary_rating_loss_hand_computed():
  total, count = losses.binary_rating_loss(jnp.array([0.0, math.log(3.0)]), jnp.array([1, 0]))
  np.testing.assert_allclose(total, math.log(2.0) - math.log(0.25), rtol=1e-6)  # p(great)=3/4 for label 0
  assert count == 2


def test_last_token_value_skips_padding_on_either_side():
  scalar = jnp.arange(12.0).reshape(3, 4)
  mask = jnp.array([[1, 1, 0, 0],   # right-padded: last real token at 1
                    [0, 1, 1, 1],   # left-padded: at 3
                    [1, 0, 0, 0]])  # one token: at 0
  np.testing.assert_array_equal(losses.last_token_value(scalar, mask), [1.0, 7.0, 8.0])


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def test_ordinal_loss_hand_computed_and_sums_to_one():
  # N = 3: cut points -0.5, 0.5. Score 0.2: P(y>=1) = s(0.7), P(y>=2) = s(-0.3).
  s = 0.2
  p = [1 - _sigmoid(0.7), _sigmoid(0.7) - _sigmoid(-0.3), _sigmoid(-0.3)]
  assert sum(p) == np.float64(1.0) or abs(sum(p) - 1) < 1e-12
  total, count = losses.ordinal_rating_loss(jnp.full(3, s), jnp.array([0, 1, 2]), 3)
  np.testing.assert_allclose(total, -sum(math.log(q) for q in p), rtol=1e-5)
  assert count == 3
  np.testing.assert_allclose(losses.ordinal_expected_level(jnp.array([s]), 3), [p[1] + 2 * p[2]], rtol=1e-6)


def test_ordinal_loss_two_levels_is_binary_cross_entropy_and_finite():
  score = jnp.array([-3.0, 0.5, 4.0])
  label = jnp.array([1, 0, 1])
  ordinal, _ = losses.ordinal_rating_loss(score, label, 2)
  binary, _ = losses.binary_rating_loss(score, label)  # cut point 0 for N = 2
  np.testing.assert_allclose(ordinal, binary, rtol=1e-6)
  total, _ = losses.ordinal_rating_loss(jnp.array([500.0, -500.0, 0.0]), jnp.array([0, 4, 2]), 5)
  assert np.isfinite(total) and total > 900  # confidently wrong ratings cost a lot, but finitely


def test_squared_error_loss():
  total, count = losses.squared_error_loss(jnp.array([1.0, 2.0, 5.0]), jnp.array([0, 2, 1]), jnp.array([1, 1, 0]))
  assert total == 1.0 and count == 2
