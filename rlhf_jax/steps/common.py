"""What every trainer's step shares: the state pytree, AdamW with a schedule, exact-mean gradients.

A trainer's pure step is `(state, batch, key, hp) -> (state, metrics)`. It computes a summed loss
and its sums (token or pair counts, correct predictions, ...) with `accumulate_gradients`, which
splits the batch into microbatches and divides by the total count at the end, so the gradient is
that of the exact mean however the batch is split or sharded; then `apply_gradients` takes one
optimizer step with the learning rate of the schedule at `state.step`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, NamedTuple, TypeVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import sharding

Batch = dict[str, jax.Array]
# loss_fn(params, batch, key) -> (loss_sum, sums); `sums` holds at least "count", the denominator.
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
H = TypeVar("H")  # an hparams dataclass


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: optax.OptState


@flax.struct.dataclass
class Hparams:
  """Numeric settings that change no shape: arrays, so sweeps can vmap them."""
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
  # Per-parameter learning-rate multipliers, "REGEX=MULT" (big_vision's lr_mults): the first
  # pattern that matches a parameter's path (e.g. `wpref/embedding`) scales its update.
  lr_mults: tuple[str, ...] = ()

  def __post_init__(self):
    if not 0 < self.learning_rate < math.inf:
      raise ValueError(f"optim.learning_rate must be positive and finite, got {self.learning_rate}")
    if not math.isfinite(self.weight_decay):
      raise ValueError(f"optim.weight_decay must be finite, got {self.weight_decay}")
    if self.warmup_steps < 0:
      raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
    parse_lr_mults(self.lr_mults)

  def hparams(self) -> Hparams:
    return Hparams(learning_rate=jnp.asarray(self.learning_rate, jnp.float32),
                   weight_decay=jnp.asarray(self.weight_decay, jnp.float32))


def hparams_from(cls: type[H], config: Any, optim: OptimConfig) -> H:
  """The `cls` hparams of a step: `optim`'s learning rate and weight decay, every other field read
  from `config` by its name, each a float32 array.

  One recipe for every step's `hp`, so each holds the same dtype a vmapped sweep stacks, and an
  hparams field with no config field of its name fails here instead of silently defaulting.
  """
  values = {"learning_rate": optim.learning_rate, "weight_decay": optim.weight_decay}
  names = [field.name for field in dataclasses.fields(cls)]
  return cls(**{name: jnp.asarray(values[name] if name in values else getattr(config, name), jnp.float32)
                for name in names})


def parse_lr_mults(lr_mults: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
  """("wpref=0.03", ...) -> (("wpref", 0.03), ...), or a ValueError naming `optim.lr_mults`."""
  rules = []
  for item in lr_mults:
    pattern, _, mult = item.rpartition("=")
    try:
      re.compile(pattern)
      value = float(mult)
    except (re.error, ValueError):
      value = -1.0
    if not pattern or not value >= 0:
      raise ValueError(f"optim.lr_mults: expected REGEX=MULT with MULT >= 0 (e.g. 'wpref=0.03'), got {item!r}")
    rules.append((pattern, value))
  return tuple(rules)


def _lr_mult_tree(params: Any, rules: tuple[tuple[str, float], ...]) -> Any:
  def mult(path, _):
    name = sharding.path_str(path)
    return next((m for pattern, m in rules if re.search(pattern, name)), 1.0)
  return jax.tree_util.tree_map_with_path(mult, params)


def scale_by_lr_mults(rules: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
  """Multiplies each update by its parameter's multiplier (1 where no rule matches)."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, _lr_mult_tree(updates, rules)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _decay_mask(params: Any) -> Any:
  # Decay matrices only, as in GPT-2/nanoGPT: biases, LayerNorm scales and the position table are
  # 1-D or tiny, and decaying them hurts more than it regularises.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _adamw(learning_rate, weight_decay, grad_clip, b1, b2, lr_mults=(), trainable=None) -> optax.GradientTransformation:
  tx = optax.chain(
      optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask),
      # After Adam, so a multiplier scales the step itself (Adam would normalize a scaled gradient away).
      scale_by_lr_mults(lr_mults) if lr_mults else optax.identity(),
  )
  if trainable is None:
    return tx
  # Frozen parameters get no state (multi_transform keeps none for set_to_zero) and a zero update.
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: trainable_labels(params, trainable))


def trainable_labels(params: Any, trainable: Callable[[Any], bool]) -> Any:
  """"train" or "frozen" for each leaf of `params`, by `trainable(key path)`."""
  return jax.tree_util.tree_map_with_path(lambda path, _: "train" if trainable(path) else "frozen", params)


class Optimizer(NamedTuple):
  """An optax transformation that knows which parameters it trains: `trainable(key path) -> bool`,
  or None for all of them. A frozen parameter holds no optimizer state and gets no update, and
  `accumulate_gradients(..., tx=)` does not differentiate it, so the backward pass never computes
  its weight gradient (LoRA's base model: `models.lora.trainable`)."""
  init: Callable
  update: Callable
  trainable: Callable[[Any], bool] | None = None


def make_optimizer(config: OptimConfig, trainable: Callable[[Any], bool] | None = None) -> Optimizer:
  """AdamW whose learning rate and weight decay live in the optimizer state (set by the step), on
  the parameters `trainable` selects (default all)."""
  tx = optax.inject_hyperparams(_adamw, static_args=("grad_clip", "b1", "b2", "lr_mults", "trainable"))(
      learning_rate=config.learning_rate, weight_decay=config.weight_decay,
      grad_clip=config.grad_clip, b1=config.b1, b2=config.b2, lr_mults=parse_lr_mults(config.lr_mults),
      trainable=trainable)
  return Optimizer(tx.init, tx.update, trainable)


def lr_multiplier(step: jax.Array, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> jax.Array:
  """Linear warmup from 0 to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=1.0, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=min_lr_ratio)
  return schedule(step)


def init_state(key: jax.Array, *, model: nn.Module, tx: optax.GradientTransformation) -> TrainState:
  params = model.init(key, jnp.zeros((1, 1), jnp.int32))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def restart_state(params: Any, *, tx: optax.GradientTransformation) -> TrainState:
  """A fresh train state (step 0, new optimizer state) around trained `params`: fine-tuning again."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def init_with_trunk(key: jax.Array, lm_params: Any, *, model: nn.Module,
                    tx: optax.GradientTransformation) -> TrainState:
  """Train state of a scalar-head model (reward or value) whose trunk starts from `lm_params`.

  Only the head is freshly initialised (with `model.config.scalar_head_init`); jit this with
  `out_shardings` like any initializer.
  """
  if not model.config.scalar_head:
    raise ValueError("init_with_trunk needs a model with scalar_head=True")
  if "scalar_head" in lm_params:
    raise ValueError("these parameters already have a scalar head")
  fresh = init_state(key, model=model, tx=tx)
  params = {**lm_params, "scalar_head": fresh.params["scalar_head"]}
  return TrainState(step=fresh.step, params=params, opt_state=tx.init(params))


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  # Rows m, m+M, m+2M, ... form microbatch m: every device keeps an equal share of each microbatch,
  # so the split needs no data movement when the batch axis is sharded.
  def split(x):
    B = x.shape[0]
    if B % num_microbatches:
      raise ValueError(f"batch size {B} is not divisible by microbatches={num_microbatches}")
    return x.reshape(B // num_microbatches, num_microbatches, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn: LossFn, params, batch: Batch, key: jax.Array, num_microbatches: int = 1, *,
                         tx: Any = None):
  """Summed loss, summed aux values and the gradient of the exact mean loss over the whole batch.

  Returns `(loss_sum, sums, grads)` where grads = d(sum of loss_sum) / d params / sum of counts.
  With an `Optimizer` `tx` that freezes some parameters, only the ones it trains are
  differentiated; the frozen ones get zero gradients, which the compiler folds away.
  """
  trainable = getattr(tx, "trainable", None)
  if trainable is None:
    return _accumulate(loss_fn, params, batch, key, num_microbatches)
  leaves, treedef = jax.tree.flatten(params)
  flags = [bool(trainable(path)) for path, _ in jax.tree_util.tree_leaves_with_path(params)]

  def join(trained_leaves, frozen_leaf):
    it = iter(trained_leaves)
    return treedef.unflatten([next(it) if flag else frozen_leaf(leaf) for leaf, flag in zip(leaves, flags)])
  loss_sum, sums, grads = _accumulate(lambda live, b, k: loss_fn(join(live, lambda x: x), b, k),
                                      [leaf for leaf, flag in zip(leaves, flags) if flag], batch, key, num_microbatches)
  return loss_sum, sums, join(grads, jnp.zeros_like)


def _accumulate(loss_fn: LossFn, params, batch: Batch, key: jax.Array, num_microbatches: int):
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_microbatches == 1:
    (loss_sum, sums), grads = grad_fn(params, batch, key)
  else:
    def body(carry, xs):
      micro, i = xs
      (loss_sum, sums), grads = grad_fn(params, micro, jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, carry, (loss_sum, sums, grads)), None
    micro = _split_microbatches(batch, num_microbatches)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro),
                                                        key))
    (loss_sum, sums), grads = zeros
    (loss_sum, sums, grads), _ = jax.lax.scan(body, (loss_sum, sums, grads),
                                              (micro, jnp.arange(num_microbatches)))
  # The gradient of a sum divided by the total count is the gradient of the exact mean.
  denom = jnp.maximum(sums["count"], 1.0)
  return loss_sum, sums, jax.tree.map(lambda g: g / denom, grads)


def apply_gradients(state, grads: Any, hp: Hparams, *, tx: optax.GradientTransformation,
                    warmup_steps: int, total_steps: int, min_lr_ratio: float) -> tuple[TrainState, jax.Array]:
  """One optimizer step at the scheduled learning rate; returns the new state and that rate."""
  lr = hp.learning_rate * lr_multiplier(state.step, warmup_steps=warmup_steps, total_steps=total_steps,
                                        min_lr_ratio=min_lr_ratio)
  opt_state = state.opt_state._replace(
      hyperparams={**state.opt_state.hyperparams, "learning_rate": lr, "weight_decay": hp.weight_decay})
  updates, opt_state = tx.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # `replace` keeps any extra fields of a trainer's own state (e.g. PPO's KL coefficient).
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), lr


def sharded_init(init: Callable, mesh: jax.sharding.Mesh, rules: str, *example_args) -> tuple[Callable, Any]:
  """`(jitted init, state shardings)`: a state initializer compiled to create every leaf directly on
  the shards `sharding.RULES[rules]` gives it (found on `jax.eval_shape` of `init(*example_args)`,
  nothing allocated), so a model too big for one device never exists whole. The one way a trainer
  creates its state, e.g. `sharded_init(partial(init_state, model=m, tx=tx), mesh, "fsdp", key)`."""
  shardings = sharding.tree_shardings(jax.eval_shape(init, *example_args), mesh, rules)
  return jax.jit(init, out_shardings=shardings), shardings


def jit_step(step: Callable, mesh: jax.sharding.Mesh, state_shardings: Any = None):
  """A `(state, batch, key, hp)` step compiled for `mesh`: the batch split over the data (and fsdp)
  axes, the state with `state_shardings` (default replicated) and donated (updated in place), keys
  and hyperparameters replicated."""
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = repl if state_shardings is None else state_shardings
  return jax.jit(step, in_shardings=(state, data, repl, repl), out_shardings=(state, repl), donate_argnums=0)
