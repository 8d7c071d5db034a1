"""Held-out perplexity of a language model: the exact token mean of its loss over a validation set."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import sharding
from rlhf_jax.errors import UserError


def perplexity(eval_step: Callable, params, batches: Iterable[dict[str, np.ndarray]], mesh: Mesh) -> dict[str, float]:
  """Exact token-mean loss over all `batches` (sums and counts added up), and its exponential."""
  loss_sum, count = 0.0, 0.0
  for batch in batches:
    out = jax.device_get(eval_step(params, sharding.put_global_batch(batch, mesh)))
    loss_sum += float(out["loss_sum"])
    count += float(out["count"])
  if count == 0:
    raise UserError("the validation set has no tokens: lower data.seq_len or raise data.val_fraction")
  loss = loss_sum / count
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
