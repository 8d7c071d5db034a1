"""Reward-model training on pairwise preferences (Bradley-Terry) and on ratings.

A reward model is the Transformer trunk with its scalar head (`ModelConfig(scalar_head=True,
scalar_head_init="reward")`); a text's reward is the head's output at its last real token.

Batches:
- preferences: `{"chosen", "chosen_mask", "rejected", "rejected_mask"}`, each [B, T] (prompt and
  response concatenated; padding on either side, mask 0). Chosen and rejected go through one
  forward pass of [2B, T].
- ratings: `{"tokens", "mask", "label"}` with tokens/mask [B, T] and label [B]: in {0, 1} for
  `kind="rating"` (binary, e.g. great vs other), in 0..N-1 for `kind="ordinal"` (ratings 1..N
  shifted down by one; N = `num_levels`), and a float target for `kind="regression"`.

`kind` picks the loss: "preference" (Bradley-Terry), "rating" (binary cross-entropy), "ordinal"
(ordered logit, `losses.ordinal_rating_loss`) or "regression" (squared error). The ordinal model
keeps the rating's order without pretending its steps are equal in reward; regression does.
"rubric" scores each criterion of a rubric with its own output of the scalar head
(`ModelConfig.scalar_heads` = K): batches `{"tokens", "mask", "labels" [B, K] (levels 0..N-1),
"label_mask" [B, K]}` (a judgement may leave a criterion unscored), and the loss is the ordered
logit of every scored criterion, summed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import advantages, losses
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps.common import Batch, Hparams, TrainState, accumulate_gradients, apply_gradients


def rewards(params, tokens_BxT: jax.Array, mask_BxT: jax.Array, *, model: Transformer,
            key: jax.Array | None = None) -> jax.Array:
  """Scalar reward of each row, read at its last real token."""
  deterministic = key is None or model.config.dropout == 0.0
  out = model.apply({"params": params}, tokens_BxT, input_mask_BxT=mask_BxT, deterministic=deterministic,
                    rngs=None if deterministic else {"dropout": key})
  return losses.last_token_value(out.scalar_BxT, mask_BxT)


def criterion_rewards(params, tokens_BxT: jax.Array, mask_BxT: jax.Array, *, model: Transformer,
                      key: jax.Array | None = None) -> jax.Array:
  """[B, K]: each output of the scalar head (one per rubric criterion), read at each row's last
  real token."""
  deterministic = key is None or model.config.dropout == 0.0
  out = model.apply({"params": params}, tokens_BxT, input_mask_BxT=mask_BxT, deterministic=deterministic,
                    rngs=None if deterministic else {"dropout": key})
  last_B = advantages.last_token_index(mask_BxT)
  return jnp.take_along_axis(out.scalars_BxTxK, last_B[:, None, None], axis=1)[:, 0]


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


def ordinal_sums(params, batch: Batch, key: jax.Array | None, *, model: Transformer, num_levels: int):
  """Summed ordered-logit NLL of ratings 0..N-1; `correct` counts exact predicted levels."""
  score_B = rewards(params, batch["tokens"], batch["mask"], model=model, key=key)
  mask_B = batch.get("row_mask", jnp.ones_like(score_B))
  total, count = losses.ordinal_rating_loss(score_B, batch["label"], num_levels, mask_B)
  expected_B = losses.ordinal_expected_level(score_B, num_levels)
  correct = jnp.sum((jnp.round(expected_B) == batch["label"]) * mask_B)
  return total, {"count": count, "correct": correct, "margin": jnp.sum(score_B * mask_B)}


def regression_sums(params, batch: Batch, key: jax.Array | None, *, model: Transformer):
  """Summed squared error of the reward against a numeric rating; `correct` counts |error| < 0.5."""
  score_B = rewards(params, batch["tokens"], batch["mask"], model=model, key=key)
  mask_B = batch.get("row_mask", jnp.ones_like(score_B))
  total, count = losses.squared_error_loss(score_B, batch["label"], mask_B)
  correct = jnp.sum((jnp.abs(score_B - batch["label"]) < 0.5) * mask_B)
  return total, {"count": count, "correct": correct, "margin": jnp.sum(score_B * mask_B)}


def rubric_sums(params, batch: Batch, key: jax.Array | None, *, model: Transformer, num_levels: int):
  """Summed ordered-logit NLL of every scored criterion (one head each); `correct` counts exact
  predicted levels."""
  score_BxK = criterion_rewards(params, batch["tokens"], batch["mask"], model=model, key=key)
  row_B = batch.get("row_mask", jnp.ones(score_BxK.shape[:1], jnp.float32))
  mask_BxK = batch["label_mask"].astype(jnp.float32) * row_B[:, None]
  # Criteria are independent outputs: flattening [B, K] makes them rows of one ordinal loss.
  total, count = losses.ordinal_rating_loss(score_BxK.reshape(-1), batch["labels"].reshape(-1), num_levels,
                                            mask_BxK.reshape(-1))
  expected_BxK = losses.ordinal_expected_level(score_BxK.reshape(-1), num_levels).reshape(score_BxK.shape)
  correct = jnp.sum((jnp.round(expected_BxK) == batch["labels"]) * mask_BxK)
  return total, {"count": count, "correct": correct, "margin": jnp.sum(score_BxK * mask_BxK)}


SUMS = {"preference": preference_sums, "rating": rating_sums, "ordinal": ordinal_sums,
        "regression": regression_sums, "rubric": rubric_sums}


def sums_fn(kind: str, model: Transformer, num_levels: int = 2):
  """`(params, batch, key) -> (loss_sum, sums)` of a reward-model kind, its settings bound."""
  if kind not in SUMS:
    raise ValueError(f"unknown reward-model kind {kind!r}; expected one of {sorted(SUMS)}")
  if kind in ("ordinal", "rubric"):
    return functools.partial(SUMS[kind], model=model, num_levels=num_levels)
  return functools.partial(SUMS[kind], model=model)


def train_step(state: TrainState, batch: Batch, key: jax.Array, hp: Hparams, *, model: Transformer,
               tx: optax.GradientTransformation, kind: str, warmup_steps: int, total_steps: int,
               min_lr_ratio: float, num_microbatches: int = 1,
               num_levels: int = 2) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update of a reward model; `kind` is a key of `SUMS`."""
  key = jax.random.fold_in(key, state.step)
  total, sums, grads = accumulate_gradients(sums_fn(kind, model, num_levels), state.params, batch, key,
                                            num_microbatches, tx=tx)
  state, lr = apply_gradients(state, grads, hp, tx=tx, warmup_steps=warmup_steps, total_steps=total_steps,
                              min_lr_ratio=min_lr_ratio)
  count = jnp.maximum(sums["count"], 1.0)
  metrics = {"loss": total / count, "accuracy": sums["correct"] / count, "margin": sums["margin"] / count,
             "grad_norm": optax.tree.norm(grads), "learning_rate": lr}
  return state, metrics


def eval_sums(params, batch: Batch, *, model: Transformer, kind: str, num_levels: int = 2) -> dict[str, jax.Array]:
  """Summed loss, correct and count of a batch; the caller adds them up over the eval set."""
  total, sums = sums_fn(kind, model, num_levels)(params, batch, None)  # no key: dropout off in evaluation
  return {"loss_sum": total, **sums}


def normalize_head(params, mean: jax.Array, std: jax.Array):
  """Parameters whose reward is (r - mean) / std: the scalar head's kernel and bias rescaled.

  Ziegler et al. (2019, sec. 2.2) normalise the reward model so that its rewards on the reference
  policy's samples have mean 0 and standard deviation 1 before RL. The head is affine in the
  trunk's features, r = w.h + b, so (r - mean) / std = (w / std).h + (b - mean) / std exactly:
  the normalisation lives in the parameters and every consumer of the reward model gets it.
  """
  head = params["scalar_head"]
  std = jnp.maximum(jnp.asarray(std, jnp.float32), 1e-6)
  return {**params, "scalar_head": {"kernel": head["kernel"] / std, "bias": (head["bias"] - mean) / std}}
