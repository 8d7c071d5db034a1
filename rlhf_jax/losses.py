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
