"""Per-token rewards and the seeds' reward-signal transforms against hand values and loops."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import advantages
from rlhf_jax.rewards import signals


def _returns_loop(r, m, gamma):
  out = np.zeros_like(r)
  for b in range(r.shape[0]):
    g = 0.0
    for t in reversed(range(r.shape[1])):
      if m[b, t]:
        g = r[b, t] + gamma * g
        out[b, t] = g
  return out


def test_score_at_last_token():
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
  r = advantages.score_at_last_token(jnp.array([2.0, -1.0, 3.0]), mask)
  np.testing.assert_array_equal(r, [[0, 0, 2, 0], [-1, 0, 0, 0], [0, 0, 0, 3]])


def test_discounted_returns_hand_and_loop():
  g = advantages.discounted_returns(jnp.array([[1.0, 0.0, 2.0, 9.0]]), jnp.array([[1, 1, 1, 0]]), 0.5)
  np.testing.assert_allclose(g, [[1 + 0.25 * 2, 0.5 * 2, 2, 0]])
  rng = np.random.default_rng(0)
  r = rng.normal(size=(5, 9)).astype(np.float32)
  m = (rng.random((5, 9)) < 0.7).astype(np.float32)  # holes too: returns skip masked positions
  np.testing.assert_allclose(advantages.discounted_returns(jnp.array(r), jnp.array(m), 0.9),
                             _returns_loop(r, m, 0.9), rtol=1e-5, atol=1e-6)


def test_signals():
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
  score = jnp.array([0.5, 2.0, -1.0])
  human = jnp.array([1.0, 2.05, -3.0])
  np.testing.assert_allclose(signals.reward_signal("score", score, mask)[:, :2], [[0, 0.5], [0, 0], [-1, 0]])
  cons = signals.reward_signal("consistency", score, mask, human_B=human, tolerance=0.1)
  np.testing.assert_allclose(cons, [[0, 1, 0], [0, 0, 0], [-1, 0, 0]])  # 2.05 vs 2.0 is within tolerance
  corr = signals.reward_signal("correlation", score, mask, human_B=human)
  np.testing.assert_allclose(corr.sum(), 3 * np.corrcoef(np.array(score), np.array(human))[0, 1], rtol=1e-5)
  disc = signals.reward_signal("discounted", score, mask, gamma=0.5)
  np.testing.assert_allclose(disc, [[0.25, 0.5, 0], [0.5, 1.0, 2.0], [-1, 0, 0]])


def test_signal_errors():
  with pytest.raises(ValueError, match="human_B"):
    signals.reward_signal("consistency", jnp.zeros(2), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="unknown reward signal 'scor'"):
    signals.reward_signal("scor", jnp.zeros(2), jnp.ones((2, 3)))
