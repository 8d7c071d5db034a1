"""RL estimators against hand-computed values and plain-Python loops."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import advantages, losses
from rlhf_jax.eval import best_of_n_stats


def _gae_loop(r, v, m, gamma, lam):
  B, T = r.shape
  adv = np.zeros_like(r)
  for b in range(B):
    last = 0.0
    L = int(m[b].sum())  # right-padded: real tokens are 0..L-1
    for t in reversed(range(L)):
      next_v = v[b, t + 1] if t + 1 < L else 0.0
      delta = r[b, t] + gamma * next_v - v[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
  return adv, (adv + v) * m


def test_gae_hand_computed():
  # One row, two real tokens: delta_1 = 1 - 0.5 = 0.5; delta_0 = 0 + 0.9*0.5 - 0.2 = 0.25;
  # A_1 = 0.5, A_0 = 0.25 + 0.9*0.8*0.5 = 0.61.
  adv, ret = advantages.gae(jnp.array([[0.0, 1.0, 7.0]]), jnp.array([[0.2, 0.5, 3.0]]), jnp.array([[1, 1, 0]]),
                            0.9, 0.8)
  np.testing.assert_allclose(adv, [[0.61, 0.5, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[0.81, 1.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_matches_loop(gamma, lam):
  rng = np.random.default_rng(0)
  r = rng.normal(size=(6, 10)).astype(np.float32)
  v = rng.normal(size=(6, 10)).astype(np.float32)
  lengths = rng.integers(1, 11, 6)
  m = (np.arange(10)[None] < lengths[:, None]).astype(np.float32)
  adv, ret = advantages.gae(jnp.array(r), jnp.array(v), jnp.array(m), gamma, lam)
  adv_loop, ret_loop = _gae_loop(r * m, v, m, gamma, lam)
  np.testing.assert_allclose(adv, adv_loop, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, ret_loop, rtol=1e-5, atol=1e-5)


def test_gae_with_lambda_one_is_return_minus_value():
  rng = np.random.default_rng(1)
  r, v = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
  m = np.ones((3, 5), np.float32)
  adv, _ = advantages.gae(jnp.array(r), jnp.array(v), jnp.array(m), 1.0, 1.0)
  np.testing.assert_allclose(adv, advantages.discounted_returns(jnp.array(r), jnp.array(m), 1.0) - v, atol=1e-5)


def test_whiten():
  x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
  m = jnp.array([[1, 1, 1, 0]])
  w = np.asarray(advantages.whiten(x, m))
  np.testing.assert_allclose(w, [[-1.0, 0.0, 1.0, 0.0]], atol=1e-6)  # unbiased var of 1,2,3 is 1
  np.testing.assert_allclose(advantages.whiten(x, m, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], atol=1e-6)


def test_kl_estimators_hand_values_and_expectations():
  logp, ref = jnp.array([math.log(0.5)]), jnp.array([math.log(0.25)])  # log r = log 0.5
  np.testing.assert_allclose(advantages.kl_estimate(logp, ref, "k1"), [math.log(2)], rtol=1e-6)
  np.testing.assert_allclose(advantages.kl_estimate(logp, ref, "k2"), [0.5 * math.log(2) ** 2], rtol=1e-6)
  np.testing.assert_allclose(advantages.kl_estimate(logp, ref, "k3"), [-0.5 + math.log(2)], rtol=1e-6)
  # k1 and k3 are unbiased: their expectation under p is KL(p || q) exactly.
  p, q = np.array([0.7, 0.2, 0.1]), np.array([0.3, 0.3, 0.4])
  kl = float(np.sum(p * np.log(p / q)))
  for est in ("k1", "k3"):
    values = advantages.kl_estimate(jnp.log(jnp.array(p)), jnp.log(jnp.array(q)), est)
    assert float(np.sum(p * np.asarray(values))) == pytest.approx(kl, rel=1e-5)
  with pytest.raises(ValueError, match="k4"):
    advantages.kl_estimate(logp, ref, "k4")


def test_kl_penalized_rewards():
  logp = jnp.array([[-1.0, -2.0, -3.0]])
  ref = jnp.array([[-1.5, -1.0, -9.0]])
  r = advantages.kl_penalized_rewards(jnp.array([4.0]), logp, ref, jnp.array([[1, 1, 0]]), 0.1)
  np.testing.assert_allclose(r, [[-0.05, 0.1 + 4.0, 0.0]], rtol=1e-6)


def test_group_baselines_hand_and_loop():
  s = jnp.array([[1.0, 2.0, 6.0]])
  # RLOO: 1 - (2+6)/2 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5
  np.testing.assert_allclose(advantages.rloo_advantages(s), [[-3.0, -1.5, 4.5]], rtol=1e-6)
  g = np.asarray(advantages.grpo_advantages(s, eps=0.0))
  np.testing.assert_allclose(g[0], (np.array([1, 2, 6]) - 3) / np.std([1, 2, 6]), rtol=1e-6)
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(4, 5))
  loop = np.array([[scores[p, i] - np.mean(np.delete(scores[p], i)) for i in range(5)] for p in range(4)])
  np.testing.assert_allclose(advantages.rloo_advantages(jnp.array(scores)), loop, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(advantages.remax_advantages(jnp.array([1.0, 2.0]), jnp.array([0.5, 3.0])), [0.5, -1.0])


def test_adaptive_kl_coef():
  # KL twice the target: error clipped to 0.2; K = 64 / 10000.
  np.testing.assert_allclose(advantages.adaptive_kl_coef(0.1, 12.0, target=6.0, horizon=10000, n_steps=64),
                             0.1 * (1 + 0.2 * 64 / 10000), rtol=1e-6)
  np.testing.assert_allclose(advantages.adaptive_kl_coef(0.1, 5.4, target=6.0, horizon=10000, n_steps=64),
                             0.1 * (1 - 0.1 * 64 / 10000), rtol=1e-6)
  assert best_of_n_stats.kl_bound(1) == 0.0
  assert best_of_n_stats.kl_bound(4) == pytest.approx(math.log(4) - 0.75)


def test_ppo_losses_hand_computed():
  # Ratios e^0.5 = 1.65 (A > 0: clipped to 1.2) and e^-0.5 = 0.61 (A < 0: clipped to 0.8 -> min is -0.8*... )
  logp, old = jnp.array([[0.5, -0.5, 0.0]]), jnp.zeros((1, 3))
  adv = jnp.array([[1.0, -1.0, 5.0]])
  total, count = losses.ppo_policy_loss(logp, old, adv, jnp.array([[1, 1, 0]]), 0.2)
  # token 0: min(1.6487, 1.2) = 1.2 -> -1.2; token 1: min(-0.6065, -0.8) = -0.8 -> +0.8
  np.testing.assert_allclose(total, -1.2 + 0.8, rtol=1e-6)
  assert count == 2
  v, old_v, ret = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 2.0]])
  total, _ = losses.ppo_value_loss(v, old_v, ret, jnp.ones((1, 2)), 0.2)
  # token 0: max(1, 0.2^2 = 0.04) = 1; token 1: max(4, 4) = 4 -> 0.5 * 5
  np.testing.assert_allclose(total, 2.5, rtol=1e-6)


def test_best_of_n_select_and_kl():
  np.testing.assert_array_equal(best_of_n_stats.select(np.array([[0.1, 0.5, 0.5], [2.0, -1.0, 0.0]])), [1, 0])
  # Two equally likely values: best-of-2 picks the higher one with prob 3/4 ->
  # KL = 1/4 log(1/2) + 3/4 log(3/2).
  assert best_of_n_stats.kl_plugin(np.array([0.0, 1.0]), 2) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
  # No ties and many samples: the plug-in approaches the closed form.
  rng = np.random.default_rng(0)
  assert best_of_n_stats.kl_plugin(rng.normal(size=200_000), 8) == pytest.approx(best_of_n_stats.kl_bound(8), abs=0.01)
  assert best_of_n_stats.kl_plugin(np.zeros(100), 8) == 0.0  # all tied: best-of-n is the reference
  with pytest.raises(ValueError, match="n >= 1"):
    best_of_n_stats.kl_bound(0)


def _expected_best_by_enumeration(proxy_N, value_N, n):
  """Every n-subset of the pool; within a subset the tied proxy-best share the pick equally."""
  total = 0.0
  subsets = list(itertools.combinations(range(len(proxy_N)), n))
  for subset in subsets:
    top = max(proxy_N[i] for i in subset)
    winners = [value_N[i] for i in subset if proxy_N[i] == top]
    total += sum(winners) / len(winners)
  return total / len(subsets)


def test_expected_best_of_n_matches_enumerating_every_subset():
  # Hand-computed: pool proxy (1, 2, 3), value (10, 20, 30); best-of-2 over the 3 pairs picks
  # 20, 30, 30 -> 80/3; best-of-1 is the pool mean, best-of-3 the proxy-best sample.
  proxy, value = np.array([[2.0, 1.0, 3.0]]), np.array([[20.0, 10.0, 30.0]])
  assert best_of_n_stats.expected_best(proxy, value, 2) == pytest.approx([80 / 3])
  assert best_of_n_stats.expected_best(proxy, value, 1) == pytest.approx([20.0])
  assert best_of_n_stats.expected_best(proxy, value, 3) == pytest.approx([30.0])
  rng = np.random.default_rng(0)
  proxy_PxN = rng.integers(0, 4, size=(5, 7)).astype(float)  # many ties
  value_PxN = rng.normal(size=(5, 7))
  for n in range(1, 8):
    want = [_expected_best_by_enumeration(p, v, n) for p, v in zip(proxy_PxN, value_PxN)]
    np.testing.assert_allclose(best_of_n_stats.expected_best(proxy_PxN, value_PxN, n), want, rtol=1e-10)
  # A large pool: no overflow, and the estimator of best-of-N is the proxy-best sample itself.
  proxy_PxN, value_PxN = rng.normal(size=(2, 4096)), rng.normal(size=(2, 4096))
  np.testing.assert_allclose(best_of_n_stats.expected_best(proxy_PxN, value_PxN, 4096),
                             value_PxN[[0, 1], proxy_PxN.argmax(axis=1)])
  assert np.all(np.isfinite(best_of_n_stats.expected_best(proxy_PxN, value_PxN, 1000)))
  with pytest.raises(ValueError, match="n: expected 1 <= n <= N = 4096"):
    best_of_n_stats.expected_best(proxy_PxN, value_PxN, 4097)


def test_last_token_index_and_masked_variance_do_what_their_docstrings_say():
  mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0]])
  np.testing.assert_array_equal(advantages.last_token_index(mask), [1, 3, 3, 2])  # all-masked: T - 1
  x = jnp.array([[1.0, 2.0, 9.0, 9.0], [3.0, 5.0, 9.0, 9.0]])
  m = jnp.array([[1, 1, 0, 0], [1, 1, 0, 0]])
  np.testing.assert_allclose(advantages.masked_var(x, m), np.var([1.0, 2.0, 3.0, 5.0], ddof=1), rtol=1e-6)
