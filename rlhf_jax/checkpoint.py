"""Orbax checkpoints of a whole run: train state, data-iterator position, RNG and resolved config.

Saving everything a run depends on is what makes a resumed run reach bitwise the same parameters
as an uninterrupted one. Orbax writes each step into a temporary directory and renames it when the
write is complete, so an interrupted save never damages the checkpoints already on disk.

Damage after the fact (a flipped bit on disk, a truncated or emptied file) Orbax does not notice:
a flipped bit restores silently. So each finished step gets a manifest of its files' sizes and
CRC-32s (`manifest.json`, written once the asynchronous save is on disk), checked before the step
is restored; a step that fails the check, fails to restore, or restores non-finite values raises
`CheckpointError` naming the step, and `loop.train_loop` falls back to the step before it.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rlhf_jax import files

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
  """A saved step that cannot be used: damaged files, a failed restore, or non-finite values."""

  def __init__(self, step: int, directory: Path, reason: str):
    super().__init__(f"checkpoint step {step} in {directory} is unusable: {reason}")
    self.step = step


def _crc32(path: Path) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(step_dir: Path) -> list[Path]:
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def _unreadable_json(step_dir: Path) -> list[Path]:
  """The JSON files of a step (the data iterator's position, metadata) that do not parse."""
  bad = []
  for path in sorted(step_dir.rglob("*.json")):
    try:
      json.loads(path.read_text())
    except (ValueError, OSError):
      bad.append(path)
  return bad


def write_manifest(step_dir: Path) -> None:
  """Sizes and CRC-32s of every file of a finished step, written atomically (temp file + rename)."""
  entries = {str(p.relative_to(step_dir)): {"size": p.stat().st_size, "crc32": _crc32(p)} for p in _files(step_dir)}
  files.atomic_write_text(step_dir / MANIFEST, json.dumps(entries, indent=0, sort_keys=True))


def verify_manifest(step_dir: Path) -> list[str]:
  """The files of a step that differ from its manifest (missing, resized or changed); [] when all
  match or the step has no manifest (saved by an older version, or stopped before writing it)."""
  manifest = step_dir / MANIFEST
  if not manifest.exists():
    return []
  try:
    entries = json.loads(manifest.read_text())
  except ValueError:
    return [f"{MANIFEST} (unreadable)"]
  bad = []
  for name, entry in entries.items():
    path = step_dir / name
    if not path.is_file():
      bad.append(f"{name} (missing)")
    elif path.stat().st_size != entry["size"]:
      bad.append(f"{name} ({path.stat().st_size} bytes, saved {entry['size']})")
    elif _crc32(path) != entry["crc32"]:
      bad.append(f"{name} (contents changed)")
  return bad


@jax.jit
def _finite(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _all_finite(tree: Any) -> bool:
  """Whether every float in a (possibly sharded, multi-host) tree is finite: one jitted reduction."""
  floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return not floats or bool(_finite(floats))


class Checkpointer:
  """A CheckpointManager for `state` + `data` (grain iterator) + `rng` + `config` items."""

  def __init__(self, directory: str | Path, *, max_to_keep: int = 3):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def _write_manifests(self) -> None:
    """Manifests of the finished steps that lack one (after `wait`: the asynchronous save is done)."""
    if jax.process_index() != 0:
      return
    for step in self._manager.all_steps():
      step_dir = self.directory / str(step)
      if step_dir.is_dir() and not (step_dir / MANIFEST).exists():
        write_manifest(step_dir)

  def set_aside(self, step: int) -> Path:
    """Renames a damaged step to `<step>.damaged-N` (kept, never deleted) so that the run can save
    that step again; returns the new path."""
    n = 0
    while (aside := self.directory / f"{step}.damaged-{n}").exists():
      n += 1
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(aside)
    self._manager.reload()
    return aside

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
    self.wait()  # the previous step is on disk: its manifest is written now
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, *, abstract_state: Any, data_iterator: Any = None) -> tuple[Any, jax.Array]:
    """Restores `state` (with the shardings of `abstract_state`), the RNG and the iterator in place.
    Raises `CheckpointError` for a damaged step (module docstring)."""
    bad = verify_manifest(self.directory / str(step))
    if bad:
      raise CheckpointError(step, self.directory, "files differ from its manifest: " + ", ".join(bad[:5]))
    items = {
        "state": ocp.args.StandardRestore(abstract_state),
        "rng": ocp.args.StandardRestore(),
    }
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # TensorStore, JSON, shape errors: which step is broken is what matters
      first_line = (str(e).strip().splitlines() or [""])[0][:300]
      unreadable = [str(f.relative_to(self.directory)) for f in _unreadable_json(self.directory / str(step))]
      where = f"; unreadable: {', '.join(unreadable)}" if unreadable else ""
      raise CheckpointError(step, self.directory,
                            f"restoring it failed ({type(e).__name__}: {first_line}){where}") from e
    state = restored["state"]
    if not _all_finite(state):
      raise CheckpointError(step, self.directory, "its state holds non-finite values")
    rng = jax.random.wrap_key_data(jax.numpy.asarray(restored["rng"]["key_data"]))
    return state, rng

  def restore_saved_tree(self, step: int, sharding: jax.sharding.Sharding) -> Any:
    """`state` as the nested dicts it was saved as, every leaf placed with `sharding`: for readers
    that want some part of any trainer's state (e.g. a policy's parameters) without its classes."""
    bad = verify_manifest(self.directory / str(step))
    if bad:
      raise CheckpointError(step, self.directory, "files differ from its manifest: " + ", ".join(bad[:5]))
    tree = ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory / str(step) / "state")).tree
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree,
                            is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()
    self._write_manifests()

  def close(self) -> None:
    self.wait()
    self._manager.close()

