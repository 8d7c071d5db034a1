"""Losses of every stage. Each returns `(sum, count)`, never a mean.

Returning the unreduced sum and its denominator lets microbatch accumulation and multi-device
reduction produce exact token means: mean = sum(sums) / sum(counts), whatever the split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def next_token_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                    mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed cross-entropy -sum_t m_t log p(x_{t+1} | x_<=t) and the number of counted tokens.

  `mask_BxT` selects which targets count (0 for padding, prompts in SFT, or the tail of a batch).
  """
  nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32), targets_BxT)
  mask_BxT = mask_BxT.astype(jnp.float32)
  return jnp.sum(nll_BxT * mask_BxT), jnp.sum(mask_BxT)


def bradley_terry_loss(r_chosen_B: jax.Array, r_rejected_B: jax.Array,
                       mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed pairwise loss -log sigmoid(r_chosen - r_rejected) and the number of pairs counted.

  The Bradley-Terry model (Bradley & Terry 1952) says P(chosen > rejected) = sigmoid(r_c - r_r);
  this is its negative log-likelihood, the reward-model loss of Christiano et al. 2017 (eq. 1) and
  Ouyang et al. 2022 (eq. 1, for one pair per prompt). `log_sigmoid` keeps it finite for large
  margins.
  """
  mask_B = jnp.ones_like(r_chosen_B) if mask_B is None else mask_B.astype(jnp.float32)
  nll_B = -jax.nn.log_sigmoid(r_chosen_B - r_rejected_B)
  return jnp.sum(nll_B * mask_B), jnp.sum(mask_B)


def binary_rating_loss(logit_B: jax.Array, label_B: jax.Array,
                       mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed binary cross-entropy of a scalar logit against 0/1 labels (e.g. great vs other).

  -[y log sigmoid(s) + (1 - y) log sigmoid(-s)], written with log_sigmoid for stability.
  """
  mask_B = jnp.ones_like(logit_B) if mask_B is None else mask_B.astype(jnp.float32)
  y_B = label_B.astype(jnp.float32)
  nll_B = -(y_B * jax.nn.log_sigmoid(logit_B) + (1.0 - y_B) * jax.nn.log_sigmoid(-logit_B))
  return jnp.sum(nll_B * mask_B), jnp.sum(mask_B)


def last_token_value(scalar_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """The scalar at each row's last real token (mask 1), never at padding after it.

  Reward models read their score there: it is the only position that has seen the whole response.
  Rows are assumed right-padded or left-padded; either way the last 1 in the mask is used.
  """
  T = mask_BxT.shape[-1]
  last_B = T - 1 - jnp.argmax(mask_BxT[:, ::-1].astype(jnp.int32), axis=-1)
  return jnp.take_along_axis(scalar_BxT, last_B[:, None], axis=-1)[:, 0]
