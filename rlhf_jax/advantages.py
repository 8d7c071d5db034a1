"""Per-token rewards, returns and advantages for RL on sequences.

Tensors are [B, T] over response tokens: `mask_BxT` is 1 on real response tokens (up to and
including EOS) and 0 on padding after it. Every function treats masked positions as absent:
returns and advantages there are 0 and nothing flows across them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def last_token_index(mask_BxT: jax.Array) -> jax.Array:
  """Index of each row's last real token (0 for an all-masked row)."""
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
