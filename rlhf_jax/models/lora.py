"""LoRA adapters (Hu et al. 2021) on the Transformer's projections, through qwix.

A low-rank update W + (alpha / rank) A B of each matched kernel (A [in, rank], B [rank, out]; B
starts at 0, so the adapted model starts as the base model). qwix (`qwix.apply_lora_to_model`)
intercepts the projections of our unchanged Flax module, so every sampler, step and trainer takes
the adapted model like any other; its parameters are the base tree with `kernel_lora_a` and
`kernel_lora_b` leaves next to each adapted kernel. The pieces a trainer needs:

  model = lora.adapt(Transformer(config), settings)          # the adapted module
  params = lora.add_adapters(model, base_params, key)        # base arrays reused, adapters fresh
  tx = lora.only_adapters(optax.adamw(...))                   # optimizer state for the adapters only
  lora.base(params)                                           # the reference: same arrays, no adapter
  lora.merge(params, settings)                                # plain params for export

qwix over a hand-written adapter because it needs no change to the model definition and is what
tunix uses; it fits the pure-functional model (the adapted module is still `apply(params, ...)`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import qwix

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


def adapt(model: nn.Module, settings: LoraConfig) -> nn.Module:
  """`model` with adapters on the projections `settings.targets` matches."""
  if not settings.rank:
    raise ValueError("lora.rank is 0: there are no adapters to add")
  rule = qwix.LoraRule(module_path=settings.targets, rank=settings.rank, alpha=settings.alpha)
  return qwix.apply_lora_to_model(model, qwix.LoraProvider([rule]))


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
  if not any(is_adapter(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)):
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


def only_adapters(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` on the adapters; every other parameter is frozen and holds no optimizer state."""
  def labels(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: "adapter" if is_adapter(path) else "frozen", params)
  return optax.multi_transform({"adapter": tx, "frozen": optax.set_to_zero()}, labels)


def merge(params: Any, settings: LoraConfig) -> Any:
  """Plain parameters of the adapted model: each adapted kernel W becomes W + (alpha / rank) A B."""
  if not isinstance(params, dict):
    return params
  out = {k: merge(v, settings) for k, v in params.items() if k not in ADAPTER_LEAVES}
  if "kernel_lora_a" in params:
    update = params["kernel_lora_a"] @ params["kernel_lora_b"]
    out["kernel"] = params["kernel"] + settings.scale * update.astype(params["kernel"].dtype)
  return out
