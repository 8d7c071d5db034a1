"""Next-token training (pretraining and SFT): state, optimizer and the pure step.

`train_step(state, batch, key, hp) -> (state, metrics)` is module-level and pure. The model, the
optimizer and the schedule's shape enter by `functools.partial`; numeric hyperparameters that do not
change shapes (peak learning rate, weight decay) travel in `hp` as arrays so sweeps can vmap them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses
from rlhf_jax.models.transformer import Transformer

Batch = dict[str, jax.Array]  # inputs_BxT, targets_BxT, loss_mask_BxT


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: optax.OptState


@flax.struct.dataclass
class LMHparams:
  learning_rate: jax.Array  # peak learning rate; the schedule multiplies it
  weight_decay: jax.Array


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-3
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0  # global-norm clipping; 0 disables
  warmup_steps: int = 100
  min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak

  def __post_init__(self):
    if self.learning_rate <= 0:
      raise ValueError(f"optim.learning_rate must be positive, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")

  def hparams(self) -> LMHparams:
    return LMHparams(learning_rate=jnp.asarray(self.learning_rate, jnp.float32),
                     weight_decay=jnp.asarray(self.weight_decay, jnp.float32))


def _decay_mask(params: Any) -> Any:
  # Decay matrices only, as in GPT-2/nanoGPT: biases, LayerNorm scales and the position table are
  # 1-D or tiny, and decaying them hurts more than it regularises.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _adamw(learning_rate, weight_decay, grad_clip, b1, b2) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask),
  )


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
  """AdamW whose learning rate and weight decay live in the optimizer state (set by the step)."""
  return optax.inject_hyperparams(_adamw, static_args=("grad_clip", "b1", "b2"))(
      learning_rate=config.learning_rate, weight_decay=config.weight_decay,
      grad_clip=config.grad_clip, b1=config.b1, b2=config.b2)


def lr_multiplier(step: jax.Array, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> jax.Array:
  """Linear warmup from 0 to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=1.0, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=min_lr_ratio)
  return schedule(step)


def init_state(key: jax.Array, *, model: Transformer, tx: optax.GradientTransformation) -> TrainState:
  params = model.init(key, jnp.zeros((1, 1), jnp.int32))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _loss_sum(params, batch: Batch, key: jax.Array, model: Transformer):
  deterministic = model.config.dropout == 0.0
  out = model.apply({"params": params}, batch["inputs"], deterministic=deterministic,
                    rngs=None if deterministic else {"dropout": key})
  return losses.next_token_loss(out.logits_BxTxV, batch["targets"], batch["loss_mask"])


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  # Rows m, m+M, m+2M, ... form microbatch m: every device keeps an equal share of each microbatch,
  # so the split needs no data movement when the batch axis is sharded.
  def split(x):
    B = x.shape[0]
    if B % num_microbatches:
      raise ValueError(f"batch size {B} is not divisible by train.microbatches={num_microbatches}")
    return x.reshape(B // num_microbatches, num_microbatches, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def loss_and_grads(params, batch: Batch, key: jax.Array, *, model: Transformer,
                   num_microbatches: int = 1):
  """Summed loss, token count and the gradient of the exact token-mean loss over the whole batch."""
  grad_fn = jax.value_and_grad(_loss_sum, has_aux=True)
  if num_microbatches == 1:
    (loss_sum, count), grads = grad_fn(params, batch, key, model)
  else:
    def body(carry, xs):
      loss_acc, count_acc, grads_acc = carry
      micro, i = xs
      (loss_sum, count), grads = grad_fn(params, micro, jax.random.fold_in(key, i), model)
      return (loss_acc + loss_sum, count_acc + count, jax.tree.map(jnp.add, grads_acc, grads)), None
    zeros = jax.tree.map(jnp.zeros_like, params)
    micro = _split_microbatches(batch, num_microbatches)
    (loss_sum, count, grads), _ = jax.lax.scan(
        body, (jnp.zeros(()), jnp.zeros(()), zeros), (micro, jnp.arange(num_microbatches)))
  # The gradient of a sum divided by the total count is the gradient of the exact token mean.
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  return loss_sum, count, grads


def train_step(state: TrainState, batch: Batch, key: jax.Array, hp: LMHparams, *, model: Transformer,
               tx: optax.GradientTransformation, warmup_steps: int, total_steps: int,
               min_lr_ratio: float, num_microbatches: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update on the token-mean next-token loss of `batch`."""
  key = jax.random.fold_in(key, state.step)
  loss_sum, count, grads = loss_and_grads(state.params, batch, key, model=model,
                                          num_microbatches=num_microbatches)
  lr = hp.learning_rate * lr_multiplier(state.step, warmup_steps=warmup_steps, total_steps=total_steps,
                                        min_lr_ratio=min_lr_ratio)
  opt_state = state.opt_state._replace(
      hyperparams={**state.opt_state.hyperparams, "learning_rate": lr, "weight_decay": hp.weight_decay})
  updates, opt_state = tx.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss_sum / jnp.maximum(count, 1.0),
      "tokens": count,
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "learning_rate": lr,
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: Batch, *, model: Transformer) -> dict[str, jax.Array]:
  """Summed loss and count over a batch; the caller sums these over the eval set."""
  out = model.apply({"params": params}, batch["inputs"])
  loss_sum, count = losses.next_token_loss(out.logits_BxTxV, batch["targets"], batch["loss_mask"])
  return {"loss_sum": loss_sum, "count": count}


def jit_train_step(mesh: jax.sharding.Mesh, *, model: Transformer, tx: optax.GradientTransformation,
                   optim: OptimConfig, total_steps: int, num_microbatches: int = 1):
  """`train_step` compiled for `mesh`: batch split over the data axis, state replicated and donated."""
  from rlhf_jax import sharding
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  step = functools.partial(train_step, model=model, tx=tx, warmup_steps=optim.warmup_steps,
                           total_steps=total_steps, min_lr_ratio=optim.min_lr_ratio,
                           num_microbatches=num_microbatches)
  return jax.jit(step, in_shardings=(repl, data, repl, repl), out_shardings=(repl, repl), donate_argnums=0)


def jit_init(mesh: jax.sharding.Mesh, key: jax.Array, *, model: Transformer, tx: optax.GradientTransformation):
  """A no-argument initializer whose output is created directly with its final sharding."""
  from rlhf_jax import sharding
  init = jax.jit(functools.partial(init_state, model=model, tx=tx), out_shardings=sharding.replicated(mesh))
  return functools.partial(init, key)


def jit_eval_step(mesh: jax.sharding.Mesh, *, model: Transformer):
  from rlhf_jax import sharding
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(functools.partial(eval_step, model=model), in_shardings=(repl, data), out_shardings=repl)
