"""The DPO family's losses against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses


def _ls(x):
  return math.log(1 / (1 + math.exp(-x)))


def test_dpo_and_conservative_dpo():
  # h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2; beta 0.5 -> -log sigmoid(1)
  args = [jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]), jnp.array([-2.0])]
  total, count = losses.dpo_loss(*args, beta=0.5)
  assert float(total) == pytest.approx(-_ls(1.0)) and count == 1
  total, _ = losses.dpo_loss(*args, beta=0.5, label_smoothing=0.1)
  assert float(total) == pytest.approx(-0.9 * _ls(1.0) - 0.1 * _ls(-1.0))
  # At the reference (h = 0) the loss is log 2 and the gradient pushes chosen up, rejected down.
  grad = jax.grad(lambda c, r: losses.dpo_loss(c, r, jnp.zeros(1), jnp.zeros(1), beta=1.0)[0], argnums=(0, 1))(
      jnp.zeros(1), jnp.zeros(1))
  assert float(grad[0][0]) == pytest.approx(-0.5) and float(grad[1][0]) == pytest.approx(0.5)


def test_ipo():
  total, _ = losses.ipo_loss(jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]), jnp.array([-2.0]), tau=0.25)
  assert float(total) == pytest.approx((2.0 - 2.0) ** 2)  # h = 2 = 1 / (2 * 0.25): at the target
  total, _ = losses.ipo_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), tau=0.1)
  assert float(total) == pytest.approx(25.0)


def test_kto():
  # r = 1 (desirable), 0.5 (undesirable); z0 = 0.5, beta 2.
  total, count = losses.kto_loss(jnp.array([-1.0, -1.5]), jnp.array([-2.0, -2.0]), jnp.array([True, False]),
                                 jnp.float32(0.5), beta=2.0, undesirable_weight=1.5)
  good = 1 - 1 / (1 + math.exp(-2 * 0.5))
  bad = 1.5 * (1 - 1 / (1 + math.exp(-2 * 0.0)))
  assert float(total) == pytest.approx(good + bad) and count == 2
  # A negative KL estimate is clipped to 0.
  a, _ = losses.kto_loss(jnp.array([-1.0]), jnp.array([-1.0]), jnp.array([True]), jnp.float32(-3.0), beta=1.0)
  assert float(a) == pytest.approx(0.5)


def test_orpo_odds_ratio():
  # P_w = 0.5 -> log odds 0; P_l = 0.2 -> log odds log(0.25).
  total, _ = losses.orpo_odds_ratio_loss(jnp.array([math.log(0.5)]), jnp.array([math.log(0.2)]))
  assert float(total) == pytest.approx(-_ls(-math.log(0.25)), rel=1e-5)
  total, _ = losses.orpo_odds_ratio_loss(jnp.array([0.0]), jnp.array([-50.0]))  # P = 1 is clamped, finite
  assert np.isfinite(float(total))


def test_simpo():
  # beta 2: 2 * -4/4 - 2 * -6/2 - 0.5 = -2 + 6 - 0.5 = 3.5
  total, _ = losses.simpo_loss(jnp.array([-4.0]), jnp.array([-6.0]), jnp.array([4]), jnp.array([2]), beta=2.0,
                               gamma=0.5)
  assert float(total) == pytest.approx(-_ls(3.5))


def test_masked_pairs_do_not_count():
  total, count = losses.dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), beta=1.0,
                                 mask_B=jnp.array([1, 0]))
  assert float(total) == pytest.approx(math.log(2)) and count == 1
