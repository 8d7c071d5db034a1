"""Metrics to a JSONL file and TensorBoard event files.

One JSON object per line (`{"step": 100, "split": "train", "loss": 3.2, ...}`) is the format the
report and plotting tools read; TensorBoard (through tensorboardX, no TensorFlow) is for watching a
run live.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from rlhf_jax import files

METRICS_FILE = "metrics.jsonl"


def _plain(value) -> float | int | str:
  if isinstance(value, (str, int)):
    return value
  value = float(np.asarray(value))
  return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf


def json_ready(value):
  """`value` with every NaN float replaced by None: JSON has no NaN (e.g. the interval of one run)."""
  if isinstance(value, dict):
    return {k: json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(v) for v in value]
  return None if isinstance(value, float) and math.isnan(value) else value


class MetricWriter:
  """Appends metrics to `workdir/metrics.jsonl` and to TensorBoard under `workdir/tb`."""

  def __init__(self, workdir: str | Path, *, tensorboard: bool = True, enabled: bool = True):
    """`enabled=False` (every process but the first of a multi-host run) writes nothing."""
    self.workdir = Path(workdir)
    self._file = self._tb = None
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._file = open(self.workdir / METRICS_FILE, "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(self.workdir / "tb"))

  def write(self, step: int, metrics: Mapping[str, object], split: str = "train") -> None:
    if self._file is None:
      return
    record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for name, value in record.items():
        if name not in ("step", "split") and isinstance(value, (int, float)):
          self._tb.add_scalar(f"{split}/{name}", value, step)

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


class StackedMetricWriter:
  """The metrics of N vmapped runs, one stream each: a value with a leading axis of N goes row i
  to `workdirs[i]`, a scalar (tokens/s of the whole program) to every run."""

  def __init__(self, workdirs, *, tensorboard: bool = True, enabled: bool = True):
    self.writers = [MetricWriter(w, tensorboard=tensorboard, enabled=enabled) for w in workdirs]

  def write(self, step: int, metrics: Mapping[str, object], split: str = "train") -> None:
    n = len(self.writers)
    for i, writer in enumerate(self.writers):
      writer.write(step, {k: _row(k, v, i, n) for k, v in metrics.items()}, split)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


def _row(name: str, value, i: int, n: int):
  array = np.asarray(value)
  if array.ndim == 0:
    return value
  if array.shape[0] != n:
    raise ValueError(f"metric {name!r}: expected a leading axis of {n} runs, got shape {array.shape}")
  return array[i]


def _read_records(path: Path) -> tuple[list[str], list[dict], bool]:
  """The lines and records of a metrics file, and whether it ends on a whole line. A last line cut
  short (no newline: the process died mid-write, e.g. at a power loss) is dropped with a warning;
  any other line that is not a JSON record with a step is an error naming the file and line."""
  text = path.read_text()
  lines = text.splitlines()
  lines_out, records = [], []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("expected a JSON object with an integer 'step'")
    except ValueError as e:
      if number == len(lines) and not text.endswith("\n"):
        warnings.warn(f"{path}:{number}: dropped a torn last line (a write the process did not finish)")
        break
      raise ValueError(f"{path}:{number}: not a metrics record ({e})") from None
    lines_out.append(line)
    records.append(record)
  return lines_out, records, not text or text.endswith("\n")


def read_metrics(workdir: str | Path, split: str | None = None) -> list[dict]:
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  _, records, _ = _read_records(path)
  return [r for r in records if split is None or r.get("split") == split]


def truncate_metrics(workdir: str | Path, last_step: int, *, drop_eval_at: int | None = None) -> None:
  """Drops records after `last_step` (and a torn last line): a resumed run logs those steps again,
  exactly once, on a line of its own. `drop_eval_at`: also the evaluation recorded at that step,
  which the resumed run records again (a run resumed at its last step evaluates it again).

  Written to a temporary file and renamed, so a crash here cannot lose the earlier records.
  """
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return
  lines, records, whole = _read_records(path)
  keep = [line for line, r in zip(lines, records)
          if r["step"] <= last_step and not (r["step"] == drop_eval_at and r.get("split") == "eval")]
  if len(keep) != len(lines) or not whole:
    files.atomic_write_text(path, "".join(line + "\n" for line in keep))


def write_samples(path: str | Path, step: int, prompts: list[str], completions: list[str]) -> None:
  """Appends one JSON line per sample to `path` (a run's samples.jsonl): `{"step", "prompt", "completion"}`."""
  with open(path, "a") as f:
    for prompt, completion in zip(prompts, completions):
      f.write(json.dumps({"step": step, "prompt": prompt, "completion": completion}) + "\n")
