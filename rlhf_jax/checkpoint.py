"""Orbax checkpoints of a whole run: train state, data-iterator position, RNG and resolved config.

Saving everything a run depends on is what makes a resumed run reach bitwise the same parameters
as an uninterrupted one. Orbax writes each step into a temporary directory and renames it when the
write is complete, so an interrupted save never damages the checkpoints already on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
  """A CheckpointManager for `state` + `data` (grain iterator) + `rng` + `config` items."""

  def __init__(self, directory: str | Path, *, max_to_keep: int = 3):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, *, state: Any, rng: jax.Array, config: dict, data_iterator: Any = None) -> None:
    """Starts an (asynchronous) save of `step`; `wait()` blocks until it is on disk."""
    items = {
        "state": ocp.args.StandardSave(state),
        # As numpy: the key is the same on every process, and a host-local device array cannot be
        # written by a multi-host save.
        "rng": ocp.args.StandardSave({"key_data": np.asarray(jax.random.key_data(rng))}),
        "config": ocp.args.JsonSave(config),
    }
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, *, abstract_state: Any, data_iterator: Any = None) -> tuple[Any, jax.Array]:
    """Restores `state` (with the shardings of `abstract_state`), the RNG and the iterator in place."""
    items = {
        "state": ocp.args.StandardRestore(abstract_state),
        "rng": ocp.args.StandardRestore(),
    }
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    rng = jax.random.wrap_key_data(jax.numpy.asarray(restored["rng"]["key_data"]))
    return restored["state"], rng

  def restore_saved_tree(self, step: int, sharding: jax.sharding.Sharding) -> Any:
    """`state` as the nested dicts it was saved as, every leaf placed with `sharding`: for readers
    that want some part of any trainer's state (e.g. a policy's parameters) without its classes."""
    tree = ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory / str(step) / "state")).tree
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree,
                            is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

