"""Multi-host runs through JAX's own runtime (`jax.distributed`).

Every host runs the same command; `rlhf-jax run ... --coordinator HOST:PORT --num-processes N
--process-id I` (or `--distributed` where the cluster is detected: Slurm, Open MPI, Cloud TPU)
joins them before anything touches a device. After that the code is unchanged: meshes span the
devices of all processes, each process loads its rows of every global batch (`data.lm_pipeline.lm_dataset`,
`sharding.put_batch`), Orbax writes every process's shards of one checkpoint, and only process 0
writes metrics. On CPU the collectives go through gloo, so two processes on one machine are a
faithful test of the multi-host path.
"""

from __future__ import annotations

import jax

from rlhf_jax.errors import UserError


def initialize(*, coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               auto: bool = False) -> bool:
  """Joins a multi-process run; returns whether one was joined. Call before any JAX computation."""
  explicit = (coordinator, num_processes, process_id)
  if all(v is None for v in explicit) and not auto:
    return False
  if not auto and any(v is None for v in explicit):
    raise UserError("a multi-host run needs all of --coordinator, --num-processes and --process-id "
                     "(or --distributed to detect them from the cluster)")
  if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
    raise UserError(f"--process-id must be in [0, {num_processes}), got {process_id}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  return True
