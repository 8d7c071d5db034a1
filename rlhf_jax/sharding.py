"""Device meshes and shardings.

One `jax.jit` program over a `Mesh` with three named axes, the way JAX now recommends in place of
`pmap`:

- `data`: batches are split over it, parameters replicated along it (data parallelism);
- `fsdp`: batches are split over it too, and parameters and optimizer state are split along it by
  the sharding rules, so each device holds 1/fsdp of them (fully sharded data parallelism; XLA
  gathers a layer's weights when it needs them and reduce-scatters its gradients);
- `tensor`: parameters split within a layer (Megatron-style column/row splits), batches replicated.

Sharding rules are data: `(regex on the parameter path, PartitionSpec entries)` pairs in `RULES`,
picked by name in `MeshConfig.rules`. The first rule whose pattern matches a leaf's path (e.g.
`params/h_0/attn/c_attn/kernel`, or the same path inside the optimizer's `mu`/`nu`) and whose rank
equals the leaf's gives its spec; an axis that does not divide its dimension is dropped (that
dimension stays whole) and unmatched leaves are replicated. States are created already sharded
(`state_shardings` on `jax.eval_shape`, then `jit(init, out_shardings=...)`). The same code runs on
one device, on 8 forced CPU devices and on many hosts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS, FSDP_AXIS, TENSOR_AXIS = "data", "fsdp", "tensor"
AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # a batch's leading axis is split over both

Rules = tuple[tuple[str, tuple[Any, ...]], ...]
RULES: dict[str, Rules] = {
    "replicated": (),
    # Every matrix split along its first dimension; vectors (LayerNorm, biases) stay whole.
    "fsdp": (
        (r"(wte|wpe|wpref)/embedding$", (FSDP_AXIS, None)),
        (r"kernel$", (FSDP_AXIS, None)),
        # LoRA adapters (`models.lora`): A [in, rank] and B [rank, out], split along the kernel's dims.
        (r"kernel_lora_a$", (FSDP_AXIS, None)),
        (r"kernel_lora_b$", (None, FSDP_AXIS)),
    ),
    # Megatron: qkv and the MLP's first layer(s) split by columns, the projections after them by rows
    # (one all-reduce per block each way); the vocabulary split too. GPT-2 and Llama-family names.
    # Composes with fsdp.
    "fsdp_tensor": (
        (r"wte/embedding$", (TENSOR_AXIS, FSDP_AXIS)),
        (r"(wpe|wpref)/embedding$", (FSDP_AXIS, None)),
        (r"(c_attn|c_fc|q_proj|k_proj|v_proj|gate_proj|up_proj|lm_head)/kernel$", (FSDP_AXIS, TENSOR_AXIS)),
        (r"(c_attn|c_fc|q_proj|k_proj|v_proj)/bias$", (TENSOR_AXIS,)),
        (r"(c_proj|o_proj|down_proj)/kernel$", (TENSOR_AXIS, FSDP_AXIS)),
        (r"kernel$", (FSDP_AXIS, None)),
        # LoRA adapters follow their kernel: a column-split kernel's B by columns, a row-split one's A by rows.
        (r"(c_attn|c_fc|q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel_lora_a$", (FSDP_AXIS, None)),
        (r"(c_attn|c_fc|q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel_lora_b$", (None, TENSOR_AXIS)),
        (r"(c_proj|o_proj|down_proj)/kernel_lora_a$", (TENSOR_AXIS, None)),
        (r"(c_proj|o_proj|down_proj)/kernel_lora_b$", (None, FSDP_AXIS)),
    ),
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1  # devices on the data axis; -1: all devices that fsdp x tensor leave
  fsdp: int = 1
  tensor: int = 1
  rules: str = "fsdp"  # a key of RULES: how parameters and optimizer state split over fsdp/tensor

  def __post_init__(self):
    if self.data == 0 or self.data < -1:
      raise ValueError(f"mesh.data must be -1 (all devices) or a positive count, got {self.data}")
    for name in ("fsdp", "tensor"):
      if getattr(self, name) < 1:
        raise ValueError(f"mesh.{name} must be a positive count, got {getattr(self, name)}")
    if self.rules not in RULES:
      raise ValueError(f"mesh.rules must be one of {sorted(RULES)}, got {self.rules!r}")


def make_mesh(config: MeshConfig = MeshConfig()) -> Mesh:
  inner = config.fsdp * config.tensor
  if jax.device_count() % inner:
    raise ValueError(f"mesh.fsdp x mesh.tensor = {inner} does not divide the {jax.device_count()} devices")
  n = jax.device_count() // inner if config.data == -1 else config.data
  if n * inner > jax.device_count():
    raise ValueError(f"mesh.data={n} x fsdp={config.fsdp} x tensor={config.tensor} needs {n * inner} devices, "
                     f"but only {jax.device_count()} are available")
  # Auto axes: XLA propagates shardings from the ones declared at `jit` (the pmap-style
  # parallelism this codebase is written in); JAX's default for make_mesh is now Explicit.
  return jax.make_mesh((n, config.fsdp, config.tensor), AXES, devices=jax.devices()[:n * inner],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data and fsdp axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways a batch is split: data x fsdp."""
  return int(np.prod([mesh.shape.get(a, 1) for a in BATCH_AXES]))


def check_batch_divisible(batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> None:
  n = batch_shards(mesh)
  if batch_size % n:
    raise ValueError(f"{name}={batch_size} must be divisible by the {n} devices a batch is split over "
                     f"(mesh data x fsdp)")


def put_global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a batch that every process holds whole (e.g. fixed evaluation batches): each process
  contributes its own rows, so one process and many give the same global array."""
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return put_batch(batch, mesh)
  local = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if len(v) % n:
      raise ValueError(f"batch[{k!r}] has {len(v)} rows, not divisible by the {n} processes")
    rows = len(v) // n
    local[k] = v[i * rows:(i + 1) * rows]
  return put_batch(local, mesh)


def path_str(path) -> str:
  """A pytree key path as `a/b/c`, the form sharding rules and lr_mults match."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def spec_for(name: str, shape: tuple[int, ...], mesh: Mesh, rules: Rules) -> P:
  """The PartitionSpec the first matching rule gives a leaf (see the module docstring)."""
  for pattern, spec in rules:
    if len(spec) == len(shape) and re.search(pattern, name):
      return P(*(axis if axis is not None and shape[i] % mesh.shape.get(axis, 1) == 0 else None
                 for i, axis in enumerate(spec)))
  return P()


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules | str) -> Any:
  """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs) by the rules."""
  rules = RULES[rules] if isinstance(rules, str) else rules
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, spec_for(path_str(path), tuple(leaf.shape), mesh, rules)), tree)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places this process's slice of a global batch, sharded over the data axis.

  `make_array_from_process_local_data` is the multi-host form of `device_put`: each process passes
  only the rows it loaded, and the result is one global array.
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}

