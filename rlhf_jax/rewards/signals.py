"""Reward signals built from a reward: the transforms the project's seeds describe, selectable by name.

An RL trainer needs per-token rewards [B, T]. `reward_signal(kind, ...)` turns a sequence score
(a reward model's, a lexicon's, a person's) into one, optionally using a human (or gold) rating of
the same samples:

- "score":        the score itself at the last real token (the standard RLHF reward).
- "consistency":  sign(h - s), the sign of the human's rating minus the model's prediction, at
                  the last token; 0 within `tolerance`. +1 where people liked a sample more than
                  predicted, -1 where less: it rewards what the predictor under-rates.
- "correlation":  z(h) z(s), the product of batch-standardized human and predicted scores, at the
                  last token. Its batch mean is Pearson's correlation
                  rho = (1/n) sum_i z(h_i) z(s_i), so each sample's signal is its share of the
                  preference-correlation (positive where the two agree about the sample's side of
                  the mean).
- "discounted":   the per-token discounted return of the score at the last token,
                  G_t = gamma^(L - 1 - t) s for a response of L tokens (`advantages.discounted_returns`):
                  every token gets credit, earlier tokens less when gamma < 1.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from rlhf_jax import advantages

Kind = Literal["score", "consistency", "correlation", "discounted"]
KINDS: tuple[str, ...] = ("score", "consistency", "correlation", "discounted")


def consistency(human_B: jax.Array, predicted_B: jax.Array, tolerance: float = 0.0) -> jax.Array:
  """sign(h - s), 0 where |h - s| <= tolerance."""
  diff_B = human_B.astype(jnp.float32) - predicted_B.astype(jnp.float32)
  return jnp.where(jnp.abs(diff_B) <= tolerance, 0.0, jnp.sign(diff_B))


def correlation_shares(human_B: jax.Array, predicted_B: jax.Array, eps: float = 1e-8) -> jax.Array:
  """z(h)_i z(s)_i with population standardization: its mean over the batch is Pearson's rho."""
  def z(x_B):
    x_B = x_B.astype(jnp.float32)
    return (x_B - x_B.mean()) / jnp.sqrt(x_B.var() + eps)
  return z(human_B) * z(predicted_B)


def reward_signal(kind: str, score_B: jax.Array, mask_BxT: jax.Array, *, human_B: jax.Array | None = None,
                  gamma: float = 1.0, tolerance: float = 0.0) -> jax.Array:
  """Per-token rewards [B, T] of the named transform (see the module docstring)."""
  if kind not in KINDS:
    raise ValueError(f"unknown reward signal {kind!r}; expected one of {', '.join(KINDS)}")
  if kind in ("consistency", "correlation") and human_B is None:
    raise ValueError(f"reward signal {kind!r} needs human_B: the human (or gold) scores of the same samples")
  if kind == "consistency":
    score_B = consistency(human_B, score_B, tolerance)
  elif kind == "correlation":
    score_B = correlation_shares(human_B, score_B)
  rewards_BxT = advantages.score_at_last_token(score_B, mask_BxT)
  if kind == "discounted":
    return advantages.discounted_returns(rewards_BxT, mask_BxT, gamma)
  return rewards_BxT
