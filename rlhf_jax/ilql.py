"""Implicit Language Q-Learning (Snell et al. 2022, "Offline RL for Natural Language Generation with
Implicit Language Q Learning"): the math, as small functions over [B, T] token tensors.

Token-level Q-learning on offline data, which is what Q-learning means for language: the state is
the prefix, the action the next token. ILQL learns Q(s, a) and V(s) from fixed data with

  Q loss        (Q(s_t, a_t) - (r_t + gamma V_hat(s_{t+1})))^2                    (eq. 2, first term)
  V loss        L_2^tau(Q_hat(s_t, a_t) - V(s_t)),  L_2^tau(u) = |tau - 1(u < 0)| u^2   (expectile, eq. 2)
  CQL loss      -log softmax(Q(s_t, .))[a_t], pushing down Q of tokens not in the data    (eq. 3)

with V_hat / Q_hat the target networks (V of the state after the last token is 0), and decodes
from the behaviour LM reweighted by the advantage: log pi(a|s) = log pi_beta(a|s) +
beta (Q(s, a) - V(s)) + const (eq. 4). Each loss returns (sum, count) like every loss here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def expectile_loss(diff: jax.Array, tau: float | jax.Array) -> jax.Array:
  """L_2^tau(u) = |tau - 1(u < 0)| u^2, elementwise (Kostrikov et al. 2021, IQL eq. 5)."""
  weight = jnp.where(diff < 0, 1.0 - tau, tau)
  return weight * diff ** 2


def next_state_values(v_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """V(s_{t+1}) for each token t: the value at the next real token, 0 after the last one."""
  mask = mask_BxT.astype(jnp.float32)
  next_v = jnp.pad(v_BxT[:, 1:] * mask[:, 1:], ((0, 0), (0, 1)))
  return next_v * mask


def q_targets(rewards_BxT: jax.Array, target_v_BxT: jax.Array, mask_BxT: jax.Array,
              gamma: float | jax.Array) -> jax.Array:
  """r_t + gamma V_hat(s_{t+1}), the Bellman target of the Q loss (no gradient flows into it)."""
  return jax.lax.stop_gradient((rewards_BxT + gamma * next_state_values(target_v_BxT, mask_BxT))
                               * mask_BxT.astype(jnp.float32))


def ilql_losses(q_BxT: jax.Array, v_BxT: jax.Array, target_q_BxT: jax.Array, target_v_BxT: jax.Array,
                q_all_BxTxV: jax.Array, actions_BxT: jax.Array, rewards_BxT: jax.Array, mask_BxT: jax.Array, *,
                gamma: float | jax.Array, tau: float | jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
  """The three ILQL losses as (sum, count) over real tokens.

  `q_BxT` is Q(s_t, a_t) of the taken token, `q_all_BxTxV` Q(s_t, .) over the vocabulary (for the
  CQL term), `v_BxT` V(s_t); `target_*` come from the target networks.
  """
  mask = mask_BxT.astype(jnp.float32)
  count = jnp.sum(mask)
  q_loss = jnp.sum((q_BxT - q_targets(rewards_BxT, target_v_BxT, mask_BxT, gamma)) ** 2 * mask)
  v_loss = jnp.sum(expectile_loss(jax.lax.stop_gradient(target_q_BxT) - v_BxT, tau) * mask)
  log_softmax = jax.nn.log_softmax(q_all_BxTxV, axis=-1)
  cql = -jnp.take_along_axis(log_softmax, actions_BxT[..., None].astype(jnp.int32), -1)[..., 0]
  return {"q": (q_loss, count), "v": (v_loss, count), "cql": (jnp.sum(cql * mask), count)}


def advantage_logits(lm_logits_BxV: jax.Array, q_BxV: jax.Array, v_B: jax.Array, beta: float | jax.Array) -> jax.Array:
  """Decoding logits log pi_beta(a|s) + beta (Q(s, a) - V(s)) (eq. 4); softmax normalizes them."""
  return jax.nn.log_softmax(lm_logits_BxV, axis=-1) + beta * (q_BxV - v_B[:, None])
