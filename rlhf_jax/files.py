"""Files on disk: the cache folder, download commands, and the one atomic writer of the project.

`cache_dir()` is where corpora, TFDS data and token arrays live; `run_download` runs a package
manager command (npm, apt-get, pip) and names it and what to do instead when it fails.

Writing so that a reader never sees half a file:
A crash, a full disk or a signal while writing leaves the old file (or none), never a torn one:
the bytes go to a temporary file next to the target, which one `os.replace` then puts in place
(atomic on POSIX within a filesystem). Configs, run records, checkpoint manifests, metrics,
reports, caches and exported models are all written this way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator, Sequence


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
  """Writes `data` to `path` all at once (module docstring); a failure leaves no temporary file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
  """`atomic_write_bytes` of UTF-8 text."""
  atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
  """Yields a temp dir next to `final` that is renamed to `final` only if the block succeeds.

  Readers test for `final`, which appears in one `os.replace`, so a crash or an exception inside
  the block leaves nothing that could be taken for a finished directory. When another process
  won the race and `final` already exists, its copy is kept and ours is dropped.
  """
  final = Path(final)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    yield tmp
    try:
      os.replace(tmp, final)
    except OSError:
      if not final.is_dir():
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def cache_dir() -> Path:
  """`$RLHF_JAX_CACHE`, or `~/.cache/rlhf_jax`: where corpora, TFDS data and token arrays live."""
  return Path(os.environ.get("RLHF_JAX_CACHE") or Path.home() / ".cache" / "rlhf_jax")


def run_download(command: Sequence[str], cwd: Path, what: str, hint: str) -> str:
  """Runs a download command; failures name the command, its stderr, and what to try instead."""
  result = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    stderr = result.stderr.strip()[-1000:]
    raise RuntimeError(
        f"{' '.join(command)} failed (exit {result.returncode}) while fetching {what}: {stderr}\n"
        f"{hint}"
    )
  return result.stdout
