"""Reward-model training on pairwise preferences (Bradley-Terry) and on binary ratings.

A reward model is the Transformer trunk with its scalar head (`ModelConfig(scalar_head=True,
scalar_head_init="reward")`); a text's reward is the head's output at its last real token.

Batches:
- preferences: `{"chosen", "chosen_mask", "rejected", "rejected_mask"}`, each [B, T] (prompt and
  response concatenated; padding on either side, mask 0). Chosen and rejected go through one
  forward pass of [2B, T].
- ratings: `{"tokens", "mask", "label"}` with tokens/mask [B, T] and label [B] in {0, 1}.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps.common import Batch, Hparams, TrainState, accumulate_gradients, apply_gradients


def rewards(params, tokens_BxT: jax.Array, mask_BxT: jax.Array, *, model: Transformer,
            key: jax.Array | None = None) -> jax.Array:
  """Scalar reward of each row, read at its last real token."""
  deterministic = key is None or model.config.dropout == 0.0
  out = model.apply({"params": params}, tokens_BxT, input_mask_BxT=mask_BxT, deterministic=deterministic,
                    rngs=None if deterministic else {"dropout": key})
  return losses.last_token_value(out.scalar_BxT, mask_BxT)


def pair_rewards(params, batch: Batch, *, model: Transformer, key: jax.Array | None = None):
  """(r_chosen_B, r_rejected_B) from one forward pass over both halves."""
  B = batch["chosen"].shape[0]
  tokens_2BxT = jnp.concatenate([batch["chosen"], batch["rejected"]])
  mask_2BxT = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
  r_2B = rewards(params, tokens_2BxT, mask_2BxT, model=model, key=key)
  return r_2B[:B], r_2B[B:]


def preference_sums(params, batch: Batch, key: jax.Array | None, *, model: Transformer):
  """Summed Bradley-Terry loss and the sums its metrics need (pairs, correct, margins)."""
  r_chosen_B, r_rejected_B = pair_rewards(params, batch, model=model, key=key)
  mask_B = batch.get("pair_mask", jnp.ones_like(r_chosen_B))
  total, count = losses.bradley_terry_loss(r_chosen_B, r_rejected_B, mask_B)
  margin_B = r_chosen_B - r_rejected_B
  return total, {"count": count, "correct": jnp.sum((margin_B > 0) * mask_B),
                 "margin": jnp.sum(margin_B * mask_B)}


def rating_sums(params, batch: Batch, key: jax.Array | None, *, model: Transformer):
  """Summed binary cross-entropy of the reward as a logit of `label` (e.g. great vs other)."""
  logit_B = rewards(params, batch["tokens"], batch["mask"], model=model, key=key)
  mask_B = batch.get("row_mask", jnp.ones_like(logit_B))
  total, count = losses.binary_rating_loss(logit_B, batch["label"], mask_B)
  correct = jnp.sum(((logit_B > 0) == (batch["label"] > 0)) * mask_B)
  return total, {"count": count, "correct": correct, "margin": jnp.sum(logit_B * mask_B)}


SUMS = {"preference": preference_sums, "rating": rating_sums}


def train_step(state: TrainState, batch: Batch, key: jax.Array, hp: Hparams, *, model: Transformer,
               tx: optax.GradientTransformation, kind: str, warmup_steps: int, total_steps: int,
               min_lr_ratio: float, num_microbatches: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update of a reward model; `kind` is "preference" or "rating"."""
  key = jax.random.fold_in(key, state.step)
  sums_fn = functools.partial(SUMS[kind], model=model)
  total, sums, grads = accumulate_gradients(sums_fn, state.params, batch, key, num_microbatches)
  state, lr = apply_gradients(state, grads, hp, tx=tx, warmup_steps=warmup_steps, total_steps=total_steps,
                              min_lr_ratio=min_lr_ratio)
  count = jnp.maximum(sums["count"], 1.0)
  metrics = {"loss": total / count, "accuracy": sums["correct"] / count, "margin": sums["margin"] / count,
             "grad_norm": optax.tree.norm(grads), "learning_rate": lr}
  return state, metrics


def eval_sums(params, batch: Batch, *, model: Transformer, kind: str) -> dict[str, jax.Array]:
  """Summed loss, correct and count of a batch; the caller adds them up over the eval set."""
  total, sums = SUMS[kind](params, batch, None, model=model)  # no key: dropout off in evaluation
  return {"loss_sum": total, **sums}
