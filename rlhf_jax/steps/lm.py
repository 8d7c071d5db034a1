"""Next-token training (pretraining and SFT): the pure step and its compiled forms.

`train_step(state, batch, key, hp) -> (state, metrics)` is module-level and pure. The model, the
optimizer and the schedule's shape enter by `functools.partial`; numeric hyperparameters that do not
change shapes (peak learning rate, weight decay) travel in `hp` as arrays so sweeps can vmap them.
Batches are `{"inputs": [B, T], "targets": [B, T], "loss_mask": [B, T]}`; SFT masks the prompt.
An optional `"preference": [B, T]` feeds a model's preference embedding (conditional pretraining).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps.common import (Batch, Hparams, OptimConfig, TrainState, accumulate_gradients, apply_gradients,
                                   jit_step)


def loss_sum(params, batch: Batch, key: jax.Array, *, model: Transformer, contrastive_weight: float = 0.0,
             preference_flip: tuple[int, ...] = ()):
  """Summed next-token loss of a batch and `{"count": tokens counted}`.

  With `contrastive_weight` > 0 (a model with a preference embedding and batches with
  "preference"), adds that weight times `losses.preference_contrastive_loss` against the
  preferences mapped through `preference_flip` (e.g. (0, 2, 1): good <-> bad, unconditioned kept;
  tokens whose preference the flip keeps do not count), summed over the same tokens.
  """
  deterministic = model.config.dropout == 0.0
  rngs = None if deterministic else {"dropout": key}
  pref_BxT = batch.get("preference")
  # Packed batches (`lm_pipeline.sft_dataset`) carry each token's sequence: "segment_ids".
  out = model.apply({"params": params}, batch["inputs"], preference_BxT=pref_BxT, deterministic=deterministic,
                    rngs=rngs, segment_ids_BxT=batch.get("segment_ids"))
  total, count = losses.next_token_loss(out.logits_BxTxV, batch["targets"], batch["loss_mask"])
  sums = {"count": count}
  if contrastive_weight:
    if pref_BxT is None or not preference_flip:
      raise ValueError("contrastive_weight > 0 needs batches with 'preference' and a preference_flip")
    flipped_BxT = jnp.asarray(preference_flip, jnp.int32)[pref_BxT]
    flipped = model.apply({"params": params}, batch["inputs"], preference_BxT=flipped_BxT,
                          deterministic=deterministic, rngs=rngs)
    logp_BxT, logp_flipped_BxT = (
        jnp.take_along_axis(jax.nn.log_softmax(o.logits_BxTxV), batch["targets"][..., None], axis=-1)[..., 0]
        for o in (out, flipped))
    contrast, _ = losses.preference_contrastive_loss(logp_BxT, logp_flipped_BxT,
                                                     batch["loss_mask"] * (flipped_BxT != pref_BxT))
    total = total + contrastive_weight * contrast
    sums["contrastive"] = contrast
  return total, sums


def train_step(state: TrainState, batch: Batch, key: jax.Array, hp: Hparams, *, model: Transformer,
               tx: optax.GradientTransformation, warmup_steps: int, total_steps: int,
               min_lr_ratio: float, num_microbatches: int = 1, contrastive_weight: float = 0.0,
               preference_flip: tuple[int, ...] = ()) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update on the token-mean next-token loss of `batch` (see `loss_sum` for the
  optional preference-contrastive term)."""
  key = jax.random.fold_in(key, state.step)
  loss_fn = functools.partial(loss_sum, model=model, contrastive_weight=contrastive_weight,
                              preference_flip=preference_flip)
  total, sums, grads = accumulate_gradients(loss_fn, state.params, batch, key, num_microbatches, tx=tx)
  state, lr = apply_gradients(state, grads, hp, tx=tx, warmup_steps=warmup_steps, total_steps=total_steps,
                              min_lr_ratio=min_lr_ratio)
  metrics = {
      "loss": total / jnp.maximum(sums["count"], 1.0),
      "tokens": sums["count"],
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(state.params),
      "learning_rate": lr,
  }
  if "contrastive" in sums:
    metrics["contrastive"] = sums["contrastive"] / jnp.maximum(sums["count"], 1.0)
  return state, metrics


def eval_step(params, batch: Batch, *, model: Transformer) -> dict[str, jax.Array]:
  """Summed loss and count over a batch; the caller sums these over the eval set."""
  out = model.apply({"params": params}, batch["inputs"], preference_BxT=batch.get("preference"))
  total, count = losses.next_token_loss(out.logits_BxTxV, batch["targets"], batch["loss_mask"])
  return {"loss_sum": total, "count": count}


def jit_train_step(mesh: jax.sharding.Mesh, *, model: Transformer, tx: optax.GradientTransformation,
                   optim: OptimConfig, total_steps: int, num_microbatches: int = 1, contrastive_weight: float = 0.0,
                   preference_flip: tuple[int, ...] = (), state_shardings=None):
  """`train_step` compiled for `mesh` (see `common.jit_step`)."""
  return jit_step(functools.partial(train_step, model=model, tx=tx, warmup_steps=optim.warmup_steps,
                                    total_steps=total_steps, min_lr_ratio=optim.min_lr_ratio,
                                    num_microbatches=num_microbatches, contrastive_weight=contrastive_weight,
                                    preference_flip=preference_flip), mesh, state_shardings)


def jit_eval_step(mesh: jax.sharding.Mesh, *, model: Transformer, param_shardings=None):
  from rlhf_jax import sharding
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  params = repl if param_shardings is None else param_shardings
  return jax.jit(functools.partial(eval_step, model=model), in_shardings=(params, data), out_shardings=repl)
