"""Per-token rewards, returns and advantages for RL on sequences.

Tensors are [B, T] over response tokens: `mask_BxT` is 1 on real response tokens (up to and
including EOS) and 0 on padding after it. Every function treats masked positions as absent:
returns and advantages there are 0 and nothing flows across them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def last_token_index(mask_BxT: jax.Array) -> jax.Array:
  """Index of each row's last real token; T - 1 for an all-masked row (nothing to point at: its
  reads are masked out by the callers)."""
  T = mask_BxT.shape[-1]
  return T - 1 - jnp.argmax(mask_BxT[:, ::-1].astype(jnp.int32), axis=-1)


def score_at_last_token(score_B: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Per-token rewards [B, T] that are 0 except for the sequence score at the last real token.

  The shape of RLHF's reward (Ziegler et al. 2019, sec. 2.2; Ouyang et al. 2022): a reward model
  scores the whole response, which arrives when the response ends.
  """
  T = mask_BxT.shape[-1]
  at_last_BxT = jax.nn.one_hot(last_token_index(mask_BxT), T, dtype=jnp.float32)
  return score_B[:, None].astype(jnp.float32) * at_last_BxT * mask_BxT.astype(jnp.float32)


def discounted_returns(rewards_BxT: jax.Array, mask_BxT: jax.Array, gamma: float | jax.Array) -> jax.Array:
  """Reward-to-go G_t = sum_{k >= t} gamma^(k - t) r_k over each row's real tokens.

  Computed right to left as G_t = r_t + gamma G_{t+1} (Sutton & Barto 2018, eq. 3.9) with
  `lax.scan`; masked positions contribute nothing and have G = 0.
  """
  mask_BxT = mask_BxT.astype(jnp.float32)
  r_TxB = (rewards_BxT * mask_BxT).T
  m_TxB = mask_BxT.T

  def step(next_return_B, xs):
    r_B, m_B = xs
    g_B = (r_B + gamma * next_return_B) * m_B
    # A masked position passes the later return through unchanged, so a hole in the mask (e.g. a
    # left-padded row) does not cut the return.
    return jnp.where(m_B > 0, g_B, next_return_B), g_B

  _, g_TxB = jax.lax.scan(step, jnp.zeros_like(r_TxB[0]), (r_TxB, m_TxB), reverse=True)
  return g_TxB.T


# ---------------------------------------------------------------------------------------------
# Masked statistics and whitening.


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Unbiased (n - 1) variance over the masked entries, as TRL's `masked_var` computes it; the
  lm-human-preferences code whitens with the population (n) variance, a factor n / (n - 1) apart."""
  mask = mask.astype(jnp.float32)
  n = jnp.sum(mask)
  mean = masked_mean(x, mask)
  return jnp.sum(((x - mean) ** 2) * mask) / jnp.maximum(n - 1.0, 1.0)


def whiten(x_BxT: jax.Array, mask_BxT: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
  """(x - mean) / std over the masked entries; with shift_mean=False the mean is added back.

  Huang et al. (2024, "The N+ implementation details of RLHF with PPO", details 9 and 10):
  advantages are whitened (shift_mean=True); rewards are scaled to unit variance but keep their
  mean (shift_mean=False), since shifting them would change which responses are better than
  ending the episode. Masked entries come back as 0.
  """
  mean, var = masked_mean(x_BxT, mask_BxT), masked_var(x_BxT, mask_BxT)
  out = (x_BxT - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * mask_BxT.astype(out.dtype)


# ---------------------------------------------------------------------------------------------
# KL to the reference and the per-token reward of RLHF.

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp_BxT: jax.Array, ref_logp_BxT: jax.Array, estimator: str = "k1") -> jax.Array:
  """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, "Approximating
  KL divergence"), with log r = log pi_ref - log pi:

    k1 = -log r                    unbiased, high variance, can be negative
    k2 = (log r)^2 / 2             biased, low variance
    k3 = (r - 1) - log r           unbiased, low variance, always >= 0
  """
  log_ratio = ref_logp_BxT - logp_BxT
  if estimator == "k1":
    return -log_ratio
  if estimator == "k2":
    return 0.5 * log_ratio ** 2
  if estimator == "k3":
    return jnp.expm1(log_ratio) - log_ratio
  raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def sequence_kl(logp_BxN: jax.Array, ref_logp_BxN: jax.Array, mask_BxN: jax.Array) -> jax.Array:
  """Monte-Carlo KL(pi || pi_ref) per sequence: sum_t log pi - log pi_ref over sampled tokens (k1)."""
  return jnp.sum((logp_BxN - ref_logp_BxN) * mask_BxN.astype(jnp.float32), axis=-1)


def kl_penalized_rewards(score_B: jax.Array, logp_BxT: jax.Array, ref_logp_BxT: jax.Array,
                         mask_BxT: jax.Array, kl_coef: jax.Array, estimator: str = "k1") -> jax.Array:
  """Per-token rewards r_t = -beta KL_t, plus the sequence score at the last real token.

  Ziegler et al. (2019, eq. 2): R(x, y) = r(x, y) - beta log(pi(y|x) / pi_ref(y|x)), spread over
  tokens as in their code (and Huang et al. 2024, detail 5): each token pays its own log-ratio,
  the score arrives at the end.
  """
  mask = mask_BxT.astype(jnp.float32)
  kl_BxT = kl_estimate(logp_BxT, ref_logp_BxT, estimator) * mask
  return -kl_coef * kl_BxT + score_at_last_token(score_B, mask_BxT)


# ---------------------------------------------------------------------------------------------
# Advantages.


def gae(rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array, gamma: float | jax.Array,
        lam: float | jax.Array) -> tuple[jax.Array, jax.Array]:
  """Generalized advantage estimation (Schulman et al. 2016, eqs. 11-16) and the value targets.

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t)       with V = 0 after the last real token
    A_t     = delta_t + gamma lambda A_{t+1}
    R_t     = A_t + V(s_t)                          (the value head's regression target)

  Returns (advantages_BxT, returns_BxT), 0 where the mask is 0. Rows are right-padded responses:
  the episode ends at the last real token.
  """
  mask = mask_BxT.astype(jnp.float32)
  r_TxB, v_TxB, m_TxB = (rewards_BxT * mask).T, (values_BxT * mask).T, mask.T

  def step(carry, xs):
    next_value_B, next_adv_B = carry
    r_B, v_B, m_B = xs
    delta_B = r_B + gamma * next_value_B - v_B
    adv_B = (delta_B + gamma * lam * next_adv_B) * m_B
    return (v_B * m_B, adv_B), adv_B

  zeros = jnp.zeros_like(r_TxB[0])
  _, adv_TxB = jax.lax.scan(step, (zeros, zeros), (r_TxB, v_TxB, m_TxB), reverse=True)
  adv_BxT = adv_TxB.T
  return adv_BxT, (adv_BxT + values_BxT) * mask


def rloo_advantages(score_PxK: jax.Array) -> jax.Array:
  """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, eq. 5): for K samples of a
  prompt, A_i = r_i - 1/(K-1) sum_{j != i} r_j = K/(K-1) (r_i - mean(r))."""
  K = score_PxK.shape[-1]
  if K < 2:
    raise ValueError(f"RLOO needs at least 2 samples per prompt, got {K}")
  return (score_PxK - score_PxK.mean(-1, keepdims=True)) * (K / (K - 1))


def grpo_advantages(score_PxK: jax.Array, eps: float = 1e-4) -> jax.Array:
  """Group-relative advantages (Shao et al. 2024, DeepSeekMath, eq. 3 / sec. 4.1.2, outcome
  supervision): A_i = (r_i - mean(r)) / (std(r) + eps) within each prompt's group of K samples."""
  mean = score_PxK.mean(-1, keepdims=True)
  std = score_PxK.std(-1, keepdims=True)
  return (score_PxK - mean) / (std + eps)


def remax_advantages(score_B: jax.Array, greedy_score_B: jax.Array) -> jax.Array:
  """ReMax (Li et al. 2023, eq. 7): the baseline is the reward of the greedy response to the same
  prompt, A = r(x, y) - r(x, y_greedy)."""
  return score_B - greedy_score_B


def sequence_advantages_to_tokens(adv_B: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Broadcast a per-sequence advantage to every real token of the response."""
  return adv_B[:, None] * mask_BxT.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# KL coefficient control.


def adaptive_kl_coef(kl_coef: jax.Array, kl: jax.Array, *, target: float, horizon: float,
                     n_steps: float) -> jax.Array:
  """Ziegler et al. (2019, sec. 2.2, eq. 3) adaptive KL controller:

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2),   beta_{t+1} = beta_t (1 + K_beta e_t)

  with K_beta = n_steps / horizon (n_steps = episodes in this update, as in their code).
  """
  error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
  return kl_coef * (1.0 + error * n_steps / horizon)


def next_state_values(v_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """V(s_{t+1}) for each token t: the value at the next real token, 0 after the last one."""
  mask = mask_BxT.astype(jnp.float32)
  next_v = jnp.pad(v_BxT[:, 1:] * mask[:, 1:], ((0, 0), (0, 1)))
  return next_v * mask


def q_targets(rewards_BxT: jax.Array, target_v_BxT: jax.Array, mask_BxT: jax.Array,
              gamma: float | jax.Array) -> jax.Array:
  """r_t + gamma V_hat(s_{t+1}), the Bellman target of ILQL's Q loss (Snell et al. 2022, eq. 2; no
  gradient flows into it)."""
  return jax.lax.stop_gradient((rewards_BxT + gamma * next_state_values(target_v_BxT, mask_BxT))
                               * mask_BxT.astype(jnp.float32))
