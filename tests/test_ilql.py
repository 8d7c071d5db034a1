"""ILQL's losses against hand values and a loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import advantages, losses
from rlhf_jax.steps.ilql import advantage_logits


def test_expectile_loss():
  np.testing.assert_allclose(losses.expectile_loss(jnp.array([2.0, -2.0]), 0.7), [0.7 * 4, 0.3 * 4], rtol=1e-6)
  np.testing.assert_allclose(losses.expectile_loss(jnp.array([1.0, -1.0]), 0.5), [0.5, 0.5])  # tau=1/2: half MSE


def test_q_targets_hand_and_loop():
  r = jnp.array([[0.0, 0.0, 1.0, 5.0]])
  v = jnp.array([[0.2, 0.4, 0.6, 9.0]])
  m = jnp.array([[1, 1, 1, 0]])
  # t0: 0 + 0.9*0.4; t1: 0 + 0.9*0.6; t2 (last real token): 1 + 0; padding: 0.
  np.testing.assert_allclose(advantages.q_targets(r, v, m, 0.9), [[0.36, 0.54, 1.0, 0.0]], rtol=1e-6)
  rng = np.random.default_rng(0)
  r, v = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
  lengths = rng.integers(1, 8, 4)
  m = (np.arange(7)[None] < lengths[:, None]).astype(np.float32)
  loop = np.zeros_like(r)
  for b in range(4):
    for t in range(lengths[b]):
      loop[b, t] = r[b, t] + (0.95 * v[b, t + 1] if t + 1 < lengths[b] else 0.0)
  np.testing.assert_allclose(advantages.q_targets(jnp.array(r), jnp.array(v), jnp.array(m), 0.95), loop, rtol=1e-5,
                             atol=1e-6)


def test_ilql_losses_hand_values():
  q_all = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))  # Q as logits: CQL is -log of a prob
  actions = jnp.array([[0, 2]])
  q = jnp.array([[1.0, 2.0]])
  v = jnp.array([[0.5, 1.0]])
  out = losses.ilql_losses(q, v, target_q_BxT=q, target_v_BxT=v, q_all_BxTxV=q_all, actions_BxT=actions,
                           rewards_BxT=jnp.array([[0.0, 3.0]]), mask_BxT=jnp.ones((1, 2)), gamma=1.0, tau=0.7)
  # targets: t0 = 0 + V(s1) = 1.0, t1 = 3 -> (1-1)^2 + (2-3)^2 = 1
  assert float(out["q"][0]) == pytest.approx(1.0)
  # v: u = Q - V = 0.5, 1.0 (both >= 0, weight 0.7) -> 0.7 * (0.25 + 1)
  assert float(out["v"][0]) == pytest.approx(0.7 * 1.25)
  assert float(out["cql"][0]) == pytest.approx(-np.log(0.5) - np.log(0.8), rel=1e-5)
  assert float(out["q"][1]) == 2


def test_advantage_logits_reweight_the_behaviour_policy():
  lm = jnp.log(jnp.array([[0.5, 0.5]]))
  logits = advantage_logits(lm, jnp.array([[1.0, 0.0]]), jnp.array([0.0]), beta=np.log(3.0))
  p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum()
  np.testing.assert_allclose(p, [[0.75, 0.25]], rtol=1e-6)  # odds 1:1 times exp(beta * 1) = 3
