"""Sweeps over grids that change shapes, models or data: one workdir, one process per run.

  rlhf-jax sweep experiments/dpo_sentiment.py --root sweeps/beta --grid dpo.beta=0.1,0.5 --grid seed=0,1,2
  rlhf-jax sweep experiments/dpo_sentiment.py --root sweeps/beta --print      # commands for a cluster
  rlhf-jax report sweeps/beta                                                  # tables and plots

The grid is the product of the `--grid KEY=V1,V2,...` axes or, without any, the list of override
dicts that the experiment's `sweep()` returns (where values with commas, e.g. tuples, belong).
Every run gets `ROOT/<name>/` with the name made of its overrides (`dpo.beta=0.1,seed=0`) and is
started as `rlhf-jax run EXPERIMENT --workdir ROOT/<name> --set ...`, so a run launched by hand or
by a cluster scheduler is the same run. `rlhf-jax run` writes `run.json` (git commit, command,
start time) when a run starts and `done.json` when it finishes; a sweep skips finished runs and
resumes unfinished ones from their checkpoints (the runs' own automatic resume). Every run's
config is resolved before the first starts, so a bad key or value stops the sweep before any work.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rlhf_jax import config as config_lib

RUN_FILE = "run.json"
DONE_FILE = "done.json"


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: tuple[str, ...]  # KEY=VALUE, the grid point's (the base overrides come first in `command`)


def parse_grid(axes: Sequence[str]) -> list[dict[str, str]]:
  """["a=1,2", "b=x"] -> [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}] (the product, last axis fastest)."""
  keys, values = [], []
  for axis in axes:
    key, sep, text = axis.partition("=")
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not sep or not key.strip() or not items:
      raise config_lib.ConfigError(f"--grid: expected KEY=V1,V2,... (e.g. seed=0,1,2), got {axis!r}")
    if key.strip() in keys:
      raise config_lib.ConfigError(f"--grid: {key.strip()!r} is given twice")
    keys.append(key.strip())
    values.append(items)
  return [dict(zip(keys, point)) for point in itertools.product(*values)]


def _text(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return ",".join(map(_text, value))
  return str(value).lower() if isinstance(value, bool) else str(value)


def run_name(point: Mapping[str, Any]) -> str:
  """`key=value` pairs joined by commas, with path separators replaced: a directory name."""
  name = ",".join(f"{k}={_text(v)}" for k, v in point.items()) or "base"
  return name.replace(os.sep, "_").replace(":", "_")


def plan(points: Sequence[Mapping[str, Any]]) -> list[Run]:
  runs = [Run(run_name(p), tuple(f"{k}={_text(v)}" for k, v in p.items())) for p in points]
  names = [r.name for r in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise config_lib.ConfigError(f"the grid has repeated points: {duplicates}")
  return runs


def grid_points(module, axes: Sequence[str]) -> list[dict[str, Any]]:
  """The `--grid` product, or the experiment's own `sweep()` when no axis is given."""
  if axes:
    return parse_grid(axes)
  sweep_fn = getattr(module, "sweep", None)
  if not callable(sweep_fn):
    raise config_lib.ConfigError(f"no --grid given and {module.__file__} defines no sweep(): nothing to sweep")
  points = list(sweep_fn())
  if not points or not all(isinstance(p, Mapping) for p in points):
    raise config_lib.ConfigError(f"{module.__file__}: sweep() must return a non-empty list of "
                                 "{key: value} override dicts")
  return points


def command(experiment: str | Path, root: str | Path, run: Run, *, base: Sequence[str] = (),
            smoke: bool = False) -> list[str]:
  """The `rlhf-jax run` command line of `run` (with this Python, so it works inside a venv)."""
  sets = [x for override in (*base, *run.overrides) for x in ("--set", override)]
  return [sys.executable, "-m", "rlhf_jax", "run", str(experiment), "--workdir", str(Path(root) / run.name),
          *(["--smoke"] if smoke else []), *sets]


def status(workdir: str | Path) -> str:
  """"done" (finished), "started" (has a run.json: resumes from its checkpoints) or "new"."""
  workdir = Path(workdir)
  if (workdir / DONE_FILE).is_file():
    return "done"
  return "started" if (workdir / RUN_FILE).is_file() else "new"


def check_configs(module, runs: Sequence[Run], base: Sequence[str], smoke: bool) -> None:
  """Resolves every run's config (raises a ConfigError naming the run and the key)."""
  for run in runs:
    try:
      config_lib.apply_overrides(module.get_config(smoke=smoke), [*base, *run.overrides])
    except (config_lib.ConfigError, ValueError) as e:
      raise config_lib.ConfigError(f"run {run.name}: {e}") from None


def run_all(experiment: str | Path, root: str | Path, runs: Sequence[Run], *, base: Sequence[str] = (),
            smoke: bool = False, echo: Callable[[str], None] = print) -> dict[str, str]:
  """Runs the unfinished runs one after another; returns each run's outcome.

  A run whose process fails is reported and the sweep goes on to the next; Ctrl-C or SIGTERM is
  passed to the running run (which saves a checkpoint) and stops the sweep.
  """
  outcomes = {}
  for i, run in enumerate(runs):
    workdir = Path(root) / run.name
    if status(workdir) == "done":
      outcomes[run.name] = "skipped (done)"
      echo(f"[{i + 1}/{len(runs)}] {run.name}: done, skipped")
      continue
    echo(f"[{i + 1}/{len(runs)}] {run.name}: {'resuming' if status(workdir) == 'started' else 'starting'}")
    process = subprocess.Popen(command(experiment, root, run, base=base, smoke=smoke))
    received = []

    def forward(signum, frame, process=process):
      del frame
      received.append(signum)
      process.send_signal(signum)  # the run saves a checkpoint and exits; then the sweep stops

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      code = process.wait()
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
    if received:
      from rlhf_jax import loop  # here: `rlhf-jax sweep` starts without JAX

      loop.note_signal(received[0])  # `rlhf-jax run` of a composition experiment exits 128 + signal
      outcomes[run.name] = "interrupted"
      echo(f"sweep stopped by {signal.Signals(received[0]).name} during {run.name}; rerun the same command to resume")
      return outcomes
    outcomes[run.name] = "done" if code == 0 and status(workdir) == "done" else f"failed (exit {code})"
    if outcomes[run.name] != "done":
      echo(f"[{i + 1}/{len(runs)}] {run.name}: {outcomes[run.name]}")
  return outcomes


def write_run_info(workdir: Path, argv: Sequence[str]) -> None:
  """`run.json`: the commit (and whether the tree had changes), the command and the start time."""
  info = {"command": list(argv), "started": _now(), **git_commit(Path(__file__).resolve().parents[1])}
  _atomic_write(workdir / RUN_FILE, info)


def write_done(workdir: Path) -> None:
  _atomic_write(workdir / DONE_FILE, {"finished": _now()})


def git_commit(repo: Path) -> dict[str, Any]:
  """{"commit": sha, "dirty": bool} of the checkout at `repo`, or {"commit": None} outside git."""
  try:
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True, timeout=10).stdout.strip() != ""
  except (OSError, subprocess.SubprocessError):
    return {"commit": None}
  return {"commit": sha, "dirty": dirty}


def _now() -> str:
  import datetime
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _atomic_write(path: Path, data: dict) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(data, indent=2) + "\n")
  tmp.replace(path)
