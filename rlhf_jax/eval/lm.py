"""Language-model evaluation: held-out perplexity and samples from fixed prompts."""

from __future__ import annotations

import json
import math
from pathlib import Path
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


def write_samples(path: str | Path, step: int, prompts: list[str], completions: list[str]) -> None:
  """Appends one JSON line per sample: `{"step", "prompt", "completion"}`."""
  with open(path, "a") as f:
    for prompt, completion in zip(prompts, completions):
      f.write(json.dumps({"step": step, "prompt": prompt, "completion": completion}) + "\n")


def left_pad(token_lists: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Stacks prompts of different lengths, padded on the left (what the sampler expects)."""
  length = max(len(t) for t in token_lists)
  tokens_BxP = np.full((len(token_lists), length), pad_id, np.int32)
  mask_BxP = np.zeros((len(token_lists), length), np.int32)
  for i, tokens in enumerate(token_lists):
    if tokens:
      tokens_BxP[i, length - len(tokens):] = tokens
      mask_BxP[i, length - len(tokens):] = 1
  return tokens_BxP, mask_BxP


def complete(generate: Callable, params, tokenizer, prompts: list[str], key: jax.Array) -> list[str]:
  """Decoded continuations of `prompts`; `generate(params, tokens, mask, key)` is a jitted sampler."""
  encoded = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]  # EOS starts an empty prompt
  tokens_BxP, mask_BxP = left_pad(encoded, tokenizer.pad_id)
  out = jax.device_get(generate(params, tokens_BxP, mask_BxP, key))
  return [tokenizer.decode([int(t) for t, m in zip(row, mask) if m and t != tokenizer.eos_id])
          for row, mask in zip(out.tokens_BxN, out.mask_BxN)]
