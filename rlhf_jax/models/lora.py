"""LoRA adapters (Hu et al. 2021) on the Transformer's projections, through qwix.

A low-rank update W + (alpha / rank) A B of each matched kernel (A [in, rank], B [rank, out]; B
starts at 0, so the adapted model starts as the base model). qwix (`qwix.apply_lora_to_model`)
intercepts the projections of our unchanged Flax module, so every sampler, step and trainer takes
the adapted model like any other; its parameters are the base tree with `kernel_lora_a` and
`kernel_lora_b` leaves next to each adapted kernel. The pieces a trainer needs:

  model = lora.adapt(Transformer(config), settings)          # the adapted module
  params = lora.add_adapters(model, base_params, key)        # base arrays reused, adapters fresh
  tx = common.make_optimizer(optim, lora.trainable())         # adapters trained, the base frozen
  model.apply({"params": lora.disabled(params)}, ...)         # the reference: the base model's function
  lora.base(params)                                           # the base tree itself (no copy)
  lora.merge(params, settings)                                # plain params for export

qwix over a hand-written adapter because it needs no change to the model definition and is what
tunix uses; it fits the pure-functional model (the adapted module is still `apply(params, ...)`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix

from rlhf_jax import sharding
from rlhf_jax.config import check_range

ADAPTER_LEAVES = ("kernel_lora_a", "kernel_lora_b")
# Every projection of both layouts: attention and MLP, not the embedding or the output head.
ALL_PROJECTIONS = r".*/(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc)$"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0  # 0: no adapters (the whole model trains)
  alpha: float = 16.0  # the update is scaled by alpha / rank
  targets: str = ALL_PROJECTIONS  # a regex on module paths such as `h_0/attn/q_proj`

  def __post_init__(self):
    check_range(self, "lora", ">= 0", "rank")
    check_range(self, "lora", "> 0", "alpha")
    try:
      re.compile(self.targets)
    except re.error as e:
      raise ValueError(f"lora.targets: not a regular expression ({e}): {self.targets!r}") from None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


class _Provider(qwix.LoraProvider):
  """qwix's LoRA with each adapted projection's output in the projection's own compute dtype.

  The adapters are float32 like every parameter; in a bfloat16 model (`model.dtype`) their float32
  update would promote the residual stream to float32 from the first adapted projection on, and a
  LoRA train step would then hold more activation memory than full fine-tuning."""

  def dot_general(self, lhs, rhs, *args, **kwargs):
    return super().dot_general(lhs, rhs, *args, **kwargs).astype(lhs.dtype)


def adapt(model: nn.Module, settings: LoraConfig) -> nn.Module:
  """`model` with adapters on the projections `settings.targets` matches."""
  if not settings.rank:
    raise ValueError("lora.rank is 0: there are no adapters to add")
  rule = qwix.LoraRule(module_path=settings.targets, rank=settings.rank, alpha=settings.alpha)
  return qwix.apply_lora_to_model(model, _Provider([rule]))


def add_adapters(model: nn.Module, base_params: Any, key: jax.Array) -> Any:
  """The adapted model's parameters: `base_params`' arrays as they are, and fresh adapters."""
  # Initialized under jit with the adapters as the only output, so the base model's fresh (and
  # unused) initialization is compiled away instead of allocated next to `base_params`.
  fresh = jax.jit(lambda k: _adapters(model.init(k, jnp.zeros((1, 1), jnp.int32))["params"]))(key)

  def join(base_tree, new_tree):
    out = dict(base_tree)
    for name, value in new_tree.items():
      if name in ADAPTER_LEAVES:
        out[name] = value
      elif isinstance(value, dict):
        if name not in base_tree:
          raise ValueError(f"adapters for {name!r}, which the base parameters do not have")
        out[name] = join(base_tree[name], value)
    return out
  params = join(base_params, fresh)
  if not has_adapters(params):
    raise ValueError("lora.targets matched no projection of the model")
  return params


def _adapters(params: dict) -> dict:
  """The adapter leaves of `params` and the modules that hold them."""
  out = {}
  for name, value in params.items():
    if name in ADAPTER_LEAVES:
      out[name] = value
    elif isinstance(value, dict) and (inner := _adapters(value)):
      out[name] = inner
  return out


def is_adapter(path) -> bool:
  return getattr(path[-1], "key", None) in ADAPTER_LEAVES


def base(params: Any) -> Any:
  """The base model's parameters: the same arrays without the adapters (no copy)."""
  if not isinstance(params, dict):
    return params
  return {k: base(v) for k, v in params.items() if k not in ADAPTER_LEAVES}


def trainable(also: str = "") -> Callable[[Any], bool]:
  """`(key path) -> bool` for `common.make_optimizer`: the adapters train, and the parameters `also`
  matches (a regex on paths such as `value/scalar_head/kernel`: a reward or value model's new
  head); the base model is frozen."""
  return functools.partial(_trainable, also=also)


def _trainable(path, *, also: str) -> bool:
  return is_adapter(path) or bool(also and re.search(also, sharding.path_str(path)))


def disabled(params: Any) -> Any:
  """The adapted model's parameters with every update set to zero: through the adapted module, the
  base model's function. The reference policy of a LoRA run, built where it is used (a few
  adapter-sized zeros) from the same base arrays the policy trains around, so the base model is
  never held twice."""
  if not isinstance(params, dict):
    return params
  out = {k: disabled(v) for k, v in params.items()}
  if "kernel_lora_b" in params:
    out["kernel_lora_b"] = jnp.zeros_like(params["kernel_lora_b"])
  return out


def has_adapters(params: Any) -> bool:
  return any(is_adapter(path) for path, _ in jax.tree_util.tree_leaves_with_path(params))


def merge(params: Any, settings: LoraConfig) -> Any:
  """Plain parameters of the adapted model: each adapted kernel W becomes W + (alpha / rank) A B."""
  if not isinstance(params, dict):
    return params
  out = {k: merge(v, settings) for k, v in params.items() if k not in ADAPTER_LEAVES}
  if "kernel_lora_a" in params:
    update = params["kernel_lora_a"] @ params["kernel_lora_b"]
    out["kernel"] = params["kernel"] + settings.scale * update.astype(params["kernel"].dtype)
  return out
