"""Device meshes and shardings.

Data parallelism is written the way JAX now recommends in place of `pmap`: one `jax.jit` program
over a `Mesh`, batches sharded over the `data` axis and parameters replicated. The same code runs on
one device, on 8 forced CPU devices and on many hosts; XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

import dataclasses
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1  # devices on the data axis; -1 means all devices

  def __post_init__(self):
    if self.data == 0 or self.data < -1:
      raise ValueError(f"mesh.data must be -1 (all devices) or a positive count, got {self.data}")


def make_mesh(config: MeshConfig = MeshConfig()) -> Mesh:
  n = jax.device_count() if config.data == -1 else config.data
  if n > jax.device_count():
    raise ValueError(f"mesh.data={n} but only {jax.device_count()} devices are available")
  # Auto axes: XLA propagates shardings from the ones declared at `jit` (the pmap-style data
  # parallelism this codebase is written in); JAX's default for make_mesh is now Explicit.
  return jax.make_mesh((n,), (DATA_AXIS,), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> None:
  n = mesh.shape[DATA_AXIS]
  if batch_size % n:
    raise ValueError(f"{name}={batch_size} must be divisible by the {n} devices of the data axis")


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places this process's slice of a global batch, sharded over the data axis.

  `make_array_from_process_local_data` is the multi-host form of `device_put`: each process passes
  only the rows it loaded, and the result is one global array.
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}

