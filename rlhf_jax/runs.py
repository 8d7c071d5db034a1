"""Run experiments: load an experiment file, resolve and check its config, run it in its workdir.

An experiment is a Python file with `get_config(smoke=False)` and `main(config, workdir)`.
`run_experiment` is what `rlhf-jax run` does, callable from Python: experiments that compose
others as stages (quickstart, sweeps of experiments) and tests use it; the CLI only parses
arguments and calls it. A composition runs a stage in-process with `run_unless_done` (skipped once
finished), or sweeps stages of runs, each its own process, with `run_stages`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

from rlhf_jax import config as config_lib
from rlhf_jax import sweep
from rlhf_jax.data import records

# A composition's change of a stage's config: the experiment's own config in, the edited one out.
Edit = Callable[[Any], Any]


def load_experiment(path: str | Path) -> ModuleType:
  """Imports an experiment file by path; it must define `get_config(smoke)` and `main(config, workdir)`."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"experiment file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"rlhf_jax_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
  spec.loader.exec_module(module)
  for name in ("get_config", "main"):
    if not callable(getattr(module, name, None)):
      raise config_lib.ConfigError(f"experiment file {str(path)!r} must define {name}()")
  return module


def resolve_config(module: ModuleType, smoke: bool, overrides: list[str]):
  return config_lib.apply_overrides(module.get_config(smoke=smoke), overrides)


def check_resumable(workdir: Path, config) -> None:
  """A workdir that holds checkpoints is resumed, so its run must have been started with `config`.

  Restoring a checkpoint into a different config would fail deep inside Orbax (shapes) or, worse,
  silently continue a different experiment (schedules, data); this names the differing keys.
  """
  saved = workdir / "config.json"
  checkpoints = workdir / "checkpoints"
  if not (saved.exists() and checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    return
  diffs = config_lib.differences(json.loads(saved.read_text()), config_lib.to_dict(config))
  if diffs:
    raise config_lib.ConfigError(
        f"workdir {str(workdir)!r} holds checkpoints of a run with a different config ("
        + "; ".join(diffs) + "): rerun with the same settings to resume, or choose a new --workdir")


def check_paths(config) -> None:
  """Settings that name something on disk name something that is there, checked before a run
  writes anything: an `init_from` workdir (an LM or reward-model run, with its config.json), a
  reward model `rm:DIR`, a feedback store `store:PATH`, a corpus or prompt file (`file:PATH`, also
  inside a "+"-joined corpus spec, and a task's `path`). Raises ConfigError naming the key."""
  for key, value in config_lib.flatten(config_lib.to_dict(config)).items():
    if not isinstance(value, str) or not value:
      continue
    name = key.rsplit(".", 1)[-1]
    missing = None
    if name == "init_from" and not value.startswith("hf:"):
      if not (Path(value) / "config.json").is_file():
        missing = f"{value}/config.json not found: expected the workdir of a finished or running run"
    elif value.startswith("rm:") and not Path(value[3:]).is_dir():
      missing = f"{value[3:]} is not a directory: expected a reward model's workdir"
    elif value.startswith("store:") and not Path(value[6:]).is_file():
      missing = f"{value[6:]} not found: expected a feedback store (feedback.db)"
    elif name == "path" and key.startswith("task.") and records.is_file(value) and not Path(value).is_file():
      missing = f"{value} not found: expected a prompt file"
    else:
      files = [part[5:] for part in value.split("+") if part.startswith("file:")]
      absent = [f for f in files if not Path(f).is_file()]
      if absent:
        missing = f"{absent[0]} not found: expected a text file"
    if missing:
      raise config_lib.ConfigError(f"{key}: {missing}")


def prepare_run(path: str | Path, *, smoke: bool = False, workdir: str | Path | None = None,
                overrides: Sequence[str] = (), edit: Edit | None = None) -> tuple[ModuleType, Any, Path]:
  """Loads the experiment, resolves and checks its config, and saves it in the workdir.

  `edit` (a composition's typed change of the stage's config, after `overrides`) is recorded in
  run.json as the `--set` overrides it amounts to. Everything that can be wrong with the command
  line fails here, before any work starts.
  """
  module = load_experiment(path)
  config = resolve_config(module, smoke, list(overrides))
  if edit is not None:
    edited = edit(config)
    overrides = [*overrides, *config_lib.overrides(config, edited)]
    config = edited
  if workdir is None:
    workdir = Path("workdirs") / (Path(path).stem + ("_smoke" if smoke else ""))
  workdir = Path(workdir)
  check_resumable(workdir, config)
  check_paths(config)  # before config.json and run.json: a mistyped path leaves no half-started run
  workdir.mkdir(parents=True, exist_ok=True)
  import jax  # here, not at the top: `rlhf-jax label` and friends start without JAX
  if jax.process_index() == 0:  # one writer in a multi-host run
    config_lib.save(config, workdir / "config.json")
    (workdir / sweep.DONE_FILE).unlink(missing_ok=True)
    sweep.write_run_info(workdir, ["rlhf-jax", "run", str(path), *(["--smoke"] if smoke else []),
                                   "--workdir", str(workdir), *[x for o in overrides for x in ("--set", o)]])
  return module, config, workdir


def finish_run(workdir: Path) -> int:
  """`done.json` unless a signal stopped the run; the process's exit status (128 + signal if stopped)."""
  import jax

  from rlhf_jax import loop
  signum = loop.received_signal()
  if signum is not None:
    return 128 + signum
  if jax.process_index() == 0:
    sweep.write_done(workdir)
  return 0


def run_experiment(path: str | Path, *, smoke: bool = False, workdir: str | Path | None = None,
                   overrides: Sequence[str] = (), edit: Edit | None = None):
  """What `rlhf-jax run` does: `prepare_run`, the experiment's `main`, then `finish_run`."""
  module, config, workdir = prepare_run(path, smoke=smoke, workdir=workdir, overrides=overrides, edit=edit)
  print(f"workdir: {workdir.absolute()}", flush=True)
  result = module.main(config, workdir)
  finish_run(workdir)
  return result


def run_unless_done(path: str | Path, workdir: str | Path, *, smoke: bool = False,
                    overrides: Sequence[str] = (), edit: Edit | None = None) -> None:
  """`run_experiment` in `workdir` unless a finished run is there (done.json): a stage that a rerun
  of the composition skips once done and resumes (from its checkpoints) otherwise. A finished run
  whose saved config differs from this call's is an error naming the keys: skipping it would
  silently keep the old stage's results under the new settings."""
  if sweep.status(workdir) != "done":
    run_experiment(path, smoke=smoke, workdir=workdir, overrides=overrides, edit=edit)
    return
  config = resolve_config(load_experiment(path), smoke, list(overrides))
  config = edit(config) if edit is not None else config
  diffs = config_lib.differences(json.loads((Path(workdir) / "config.json").read_text()), config_lib.to_dict(config))
  if diffs:
    raise config_lib.ConfigError(
        f"workdir {str(workdir)!r} holds a finished run with a different config (" + "; ".join(diffs)
        + "): rerun with the same settings, or choose a new workdir")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One experiment of a composition, swept: each of `runs` in `<root>/<run name>`, with the `base`
  overrides before the run's own."""
  experiment: Path
  root: Path
  runs: tuple[sweep.Run, ...]
  base: tuple[str, ...] = ()
  label: str = ""  # what an interruption or failure is reported as ("": the experiment's file name)

  @property
  def name(self) -> str:
    return self.label or Path(self.experiment).name


def run_stages(stages: Sequence[Stage], *, smoke: bool = False, keep_going: bool = False) -> str | None:
  """Runs the unfinished runs of every stage in order, each its own `rlhf-jax run` process
  (`sweep.run_all`: finished runs are skipped, started ones resume).

  Every run's config is resolved before the first starts, so a bad override fails before any work.
  Returns None when every run is done, or the name of the stage a signal stopped (the caller
  returns; `rlhf-jax run` then exits 128 + signal and a rerun resumes). Failed runs raise: at once
  when later stages need the earlier ones, or (`keep_going`, independent stages) after the rest ran.
  """
  for stage in stages:
    sweep.check_configs(load_experiment(stage.experiment), stage.runs, stage.base, smoke)
  failed = []
  for stage in stages:
    outcomes = sweep.run_all(stage.experiment, stage.root, stage.runs, base=stage.base, smoke=smoke)
    if "interrupted" in outcomes.values():
      return stage.name
    failed += [f"{stage.name}/{run}: {o}" for run, o in outcomes.items() if not o.startswith(("done", "skipped"))]
    if failed and not keep_going:
      break
  if failed:
    raise RuntimeError("runs failed (rerun the same command to retry them): " + "; ".join(failed))
  return None
