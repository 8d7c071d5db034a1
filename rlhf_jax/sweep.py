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

Engines (`--engine`) decide where the runs' commands run, not what they are: `local` (the default)
runs them one after another in this process's machine; `ray` runs each as a Ray task on a local
or existing cluster, several at once; `slurm` submits them as one Slurm job array through
submitit. Every engine runs the same `rlhf-jax run` command line and skips or retries runs by the
same rule (`done.json`), so workdirs and `rlhf-jax report` do not depend on the engine.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rlhf_jax import config as config_lib
from rlhf_jax import files

RUN_FILE = "run.json"
DONE_FILE = "done.json"
ENGINES = ("local", "ray", "slurm")
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # engine -> (module, pip extra)
SUBMITIT_DIR = ".submitit"  # under the sweep's root: the Slurm engine's job files and logs
MAX_REQUEUES = 20  # Slurm engine: time limits a run may reach (and be requeued after) before it counts as failed


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: tuple[str, ...]  # KEY=VALUE, the grid point's (the base overrides come first in `command`)

  @classmethod
  def of(cls, name: str, point: Mapping[str, Any]) -> Run:
    """The run of `point` ({key: value}) in the folder `name` (`plan` names each after its point)."""
    return cls(name, tuple(f"{k}={_text(v)}" for k, v in point.items()))


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
  runs = [Run.of(run_name(p), p) for p in points]
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
    outcomes[run.name] = outcome(workdir, code)
    if outcomes[run.name] != "done":
      echo(f"[{i + 1}/{len(runs)}] {run.name}: {outcomes[run.name]}")
  return outcomes


def outcome(workdir: str | Path, code: int | None, why: str = "") -> str:
  """The verdict on one finished attempt, the same for every engine: "done" when the process exited
  0 and left done.json, else "failed (exit N)" or, without an exit code, "failed (why)"."""
  if code == 0 and status(workdir) == "done":
    return "done"
  return f"failed (exit {code})" if code is not None else f"failed ({why})"


def unfinished(root: str | Path, runs: Sequence[Run], echo: Callable[[str], None] = print,
               outcomes: dict[str, str] | None = None) -> list[tuple[int, Run]]:
  """The runs an engine starts, with their places in the grid: those without done.json (failed and
  interrupted runs included: they resume from their checkpoints). Finished ones go to `outcomes`."""
  todo = []
  for i, run in enumerate(runs):
    if status(Path(root) / run.name) == "done":
      echo(f"[{i + 1}/{len(runs)}] {run.name}: done, skipped")
      if outcomes is not None:
        outcomes[run.name] = "skipped (done)"
    else:
      todo.append((i, run))
  return todo


def require_engine(engine: str):
  """The engine's package (ray, submitit), or a ConfigError saying how to install it; None for local."""
  if engine not in ENGINES:
    raise config_lib.ConfigError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
  if engine == "local":
    return None
  module, extra = EXTRAS[engine]
  try:
    return importlib.import_module(module)
  except ImportError:
    raise config_lib.ConfigError(f"--engine {engine} needs the {module!r} package, which is not installed: "
                                 f'pip install -e ".[{extra}]"') from None


def run_command(argv: Sequence[str], cwd: str | None = None) -> int:
  """Runs one run's command to its end and returns its exit status (a Ray task's body).

  Ray cancels a task by raising KeyboardInterrupt between Python bytecodes, which never happens
  inside a blocking wait; so this waits in short slices, and on the interrupt sends the run
  SIGTERM (it saves a checkpoint) and waits for it, so the exit status still comes back.
  """
  process = subprocess.Popen(list(argv), cwd=cwd)
  try:
    while True:
      try:
        return process.wait(timeout=0.25)
      except subprocess.TimeoutExpired:
        pass
  except KeyboardInterrupt:
    process.terminate()
    return process.wait()


class _StopSignals:
  """Within the block, SIGTERM and SIGINT are recorded in `received` instead of killing the sweep
  (which then stops its runs so that they save, and returns)."""

  def __init__(self):
    self.received: list[int] = []

  def __enter__(self):
    self._previous = {}
    if threading.current_thread() is threading.main_thread():  # elsewhere signals never reach Python code
      self._previous = {sig: signal.signal(sig, lambda signum, frame: self.received.append(signum))
                        for sig in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def sleep(self, seconds: float) -> None:
    """Sleeps up to `seconds`, returning early once a signal was received."""
    deadline = time.monotonic() + seconds
    while not self.received and time.monotonic() < deadline:
      time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _stopped(received: Sequence[int], names: Sequence[str], echo: Callable[[str], None]) -> None:
  from rlhf_jax import loop  # here: `rlhf-jax sweep` starts without JAX

  loop.note_signal(received[0])  # a composition experiment then exits unfinished, like its runs
  echo(f"sweep stopped by {signal.Signals(received[0]).name} during {', '.join(names) or 'no run'}; "
       "rerun the same command to resume")


@dataclasses.dataclass(frozen=True)
class RayOptions:
  address: str | None = None  # None: a new local cluster (or the one RAY_ADDRESS names)
  num_cpus: int | None = None  # the new local cluster's CPUs (None: all of this machine's)
  cpus_per_run: float = 1.0
  gpus_per_run: float = 0.0
  max_parallel: int | None = None  # runs in flight at once (None: as many as the resources allow)

  def __post_init__(self):
    # Ray's own error for this comes late (at connect time) and names no flag.
    if self.num_cpus is not None and (self.address or os.environ.get("RAY_ADDRESS")):
      raise config_lib.ConfigError("--ray-num-cpus sizes a new local cluster; an existing cluster "
                                   "(--ray-address or RAY_ADDRESS) brings its own CPUs")


def run_ray(experiment: str | Path, root: str | Path, runs: Sequence[Run], *, base: Sequence[str] = (),
            smoke: bool = False, options: RayOptions = RayOptions(),
            echo: Callable[[str], None] = print) -> dict[str, str]:
  """Runs the unfinished runs as Ray tasks, several at once; returns each run's outcome.

  Each task runs the run's `rlhf-jax run` command in this directory, so the cluster's machines must
  share this filesystem and Python environment. A failed run is reported and the others go on.
  Ctrl-C or SIGTERM cancels the tasks: each sends its run SIGTERM (the run saves a checkpoint) and
  the sweep waits for them before it returns. Uses the Ray connection of this process if there
  is one; otherwise connects (or starts a local cluster) and shuts down at the end.
  """
  outcomes: dict[str, str] = {}
  todo = unfinished(root, runs, echo, outcomes)
  if not todo:
    return outcomes
  ray = require_engine("ray")
  connected_here = not ray.is_initialized()
  if connected_here:
    _check_reachable(options.address)
    try:
      ray.init(address=options.address, num_cpus=options.num_cpus, include_dashboard=False)
    except (ConnectionError, ValueError) as e:
      raise config_lib.ConfigError(f"--ray-address {options.address or os.environ.get('RAY_ADDRESS')}: "
                                   f"{_first_line(e)}") from None
  task = ray.remote(run_command).options(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run)
  cwd = os.getcwd()
  waiting, in_flight = list(todo), {}
  try:
    with _StopSignals() as stop:
      while (waiting or in_flight) and not stop.received:
        while waiting and (options.max_parallel is None or len(in_flight) < options.max_parallel):
          i, run = waiting.pop(0)
          echo(f"[{i + 1}/{len(runs)}] {run.name}: "
               f"{'resuming' if status(Path(root) / run.name) == 'started' else 'starting'} (ray)")
          in_flight[task.remote(command(experiment, root, run, base=base, smoke=smoke), cwd)] = (i, run)
        # A timeout, so that a signal is acted on within a second.
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
        for ref in ready:
          i, run = in_flight.pop(ref)
          outcomes[run.name] = _ray_outcome(ray, ref, Path(root) / run.name)
          echo(f"[{i + 1}/{len(runs)}] {run.name}: {outcomes[run.name]}")
    if stop.received:  # outside the block: a second Ctrl-C stops the waiting below
      for ref in in_flight:
        ray.cancel(ref)
      for ref, (i, run) in in_flight.items():
        result = _ray_outcome(ray, ref, Path(root) / run.name)  # waits for the run to save and exit
        outcomes[run.name] = "done" if result == "done" else "interrupted"
      _stopped(stop.received, [run.name for _, run in in_flight.values()], echo)
  finally:
    if connected_here:
      ray.shutdown()
  return outcomes


def _check_reachable(address: str | None) -> None:
  """Fails fast on a HOST:PORT nobody listens on (Ray itself retries it for minutes)."""
  host, colon, port = (address or "").rpartition(":")
  if not colon or not port.isdigit() or "://" in address:
    return  # none (a new local cluster), "auto", or a ray:// client address: Ray's to resolve
  try:
    socket.create_connection((host, int(port)), timeout=10).close()
  except OSError as e:
    raise config_lib.ConfigError(f"--ray-address {address}: no Ray cluster answers there ({e})") from None


def _ray_outcome(ray, ref, workdir: Path) -> str:
  try:
    return outcome(workdir, ray.get(ref))
  except ray.exceptions.TaskCancelledError:
    return "cancelled before it started"
  except ray.exceptions.RayError as e:  # the task could not run the command, or its worker died
    return outcome(workdir, None, f"ray: {_first_line(e)}")


def slurm_minutes(text: str) -> int:
  """A Slurm time limit ("90", "90:30", "4:00:00", "1-12", "1-12:30", "2-00:30:00") in whole minutes,
  seconds rounded up (submitit wants minutes: it times the preemption signal from them)."""
  days, dash, rest = text.strip().partition("-")
  if not dash:
    days, rest = "0", days
  parts = rest.split(":")
  if not (days.isdigit() and len(parts) <= 3 and all(p.isdigit() for p in parts)):
    raise config_lib.ConfigError(f"--slurm-time: expected minutes or Slurm's [D-]HH:MM:SS (e.g. 90, 4:00:00, "
                                 f"1-12:00:00), got {text!r}")
  numbers = [int(p) for p in parts]
  if dash:  # days-hours[:minutes[:seconds]]
    hours, minutes, seconds = (numbers + [0, 0])[:3]
  else:  # minutes[:seconds] or hours:minutes:seconds
    hours, minutes, seconds = numbers if len(numbers) == 3 else (0, *numbers, 0)[:3]
  total = -(-(((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds) // 60)
  if total < 1:
    raise config_lib.ConfigError(f"--slurm-time: must be at least one minute, got {text!r}")
  return total


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  time_min: int  # every run's time limit; a run that reaches it is stopped, saves and is requeued
  partition: str | None = None
  account: str | None = None
  gpus_per_node: int | None = None
  cpus_per_task: int | None = None
  max_parallel: int | None = None  # array tasks running at once (the `%N` of --array)
  setup: tuple[str, ...] = ()  # shell lines before the run (`module load ...`, `source .venv/bin/activate`)
  extra: tuple[tuple[str, str], ...] = ()  # any other #SBATCH option, e.g. (("qos", "high"),)


def slurm_parameters(options: SlurmOptions, name: str) -> dict[str, Any]:
  """submitit.AutoExecutor parameters: generic ones and `slurm_`-prefixed ones (which the local
  executor of the tests ignores)."""
  params = {"name": name, "timeout_min": options.time_min, "cpus_per_task": options.cpus_per_task,
            "gpus_per_node": options.gpus_per_node, "slurm_partition": options.partition,
            "slurm_account": options.account, "slurm_array_parallelism": options.max_parallel,
            "slurm_setup": list(options.setup) or None,
            "slurm_additional_parameters": dict(options.extra) or None}
  return {k: v for k, v in params.items() if v is not None}


def slurm_executor(root: str | Path, options: SlurmOptions, *, name: str, cluster: str = "slurm"):
  """A submitit executor whose job files and logs go to ROOT/.submitit/ (`cluster="local"`: the same
  jobs as local processes, for tests)."""
  submitit = require_engine("slurm")
  # A run that needs several time limits' worth resumes each time it is requeued; submitit's own
  # default (3) would end such a run early.
  executor = submitit.AutoExecutor(folder=Path(root) / SUBMITIT_DIR, cluster=cluster,
                                   slurm_max_num_timeout=MAX_REQUEUES, local_max_num_timeout=MAX_REQUEUES)
  executor.update_parameters(**slurm_parameters(options, name))
  return executor


class SubmititRun:
  """One run's command as a submitit job (pickled into ROOT/.submitit/, unpickled on the node).

  SIGTERM or SIGINT to this process (scancel, a local executor's cancel) reach the run as SIGTERM,
  so it saves and exits. Before the time limit submitit sends every process of the job USR2 (its
  preemption signal): the run ignores it, since it would kill a Python process, and `checkpoint`
  (which submitit calls) stops the run with SIGTERM, waits for it to save, and returns this same
  job for submitit to requeue; requeued, the run resumes from its checkpoint.
  """

  def __init__(self, argv: Sequence[str], cwd: str | None = None):
    self.argv = tuple(argv)
    self.cwd = cwd
    self._process: subprocess.Popen | None = None

  def __getstate__(self):  # the process handle stays behind when submitit pickles the job to requeue it
    return {"argv": self.argv, "cwd": self.cwd}

  def __setstate__(self, state):
    self.__dict__.update(state, _process=None)

  def __call__(self) -> int:
    # submitit's preemption signal, as it reads it (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise).
    preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
    previous = signal.signal(preempt, signal.SIG_IGN)  # an ignored signal stays ignored across exec
    try:
      self._process = subprocess.Popen(self.argv, cwd=self.cwd)
    finally:
      signal.signal(preempt, previous)
    process = self._process

    def forward(signum, frame):
      del signum, frame
      process.send_signal(signal.SIGTERM)

    handlers = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      return process.wait()
    finally:
      for sig, handler in handlers.items():
        signal.signal(sig, handler)

  def checkpoint(self):
    import submitit

    process = self._process
    if process is None or process.returncode is not None:
      return None  # nothing running: nothing to resume
    process.send_signal(signal.SIGTERM)
    try:
      os.waitpid(process.pid, 0)  # not process.wait(): the wait this signal interrupted holds its lock
    except ChildProcessError:
      pass
    return submitit.helpers.DelayedSubmission(self)


def submit_array(executor, experiment: str | Path, root: str | Path, runs: Sequence[Run], *,
                 base: Sequence[str] = (), smoke: bool = False) -> list:
  """Submits the runs' commands as one job array (one job for one run); returns submitit's jobs."""
  cwd = os.getcwd()  # Slurm starts jobs where sbatch ran; the local executor too; said here for both
  return executor.submit_array([SubmititRun(command(experiment, root, run, base=base, smoke=smoke), cwd)
                                for run in runs])


def run_slurm(experiment: str | Path, root: str | Path, runs: Sequence[Run], *, base: Sequence[str] = (),
              smoke: bool = False, options: SlurmOptions, cluster: str = "slurm", poll_s: float = 10.0,
              echo: Callable[[str], None] = print) -> dict[str, str]:
  """Submits the unfinished runs as one Slurm job array and waits for it; returns each run's outcome.

  The jobs' files and logs go to ROOT/.submitit/. Ctrl-C or SIGTERM cancels the jobs (Slurm sends
  the runs SIGTERM: they save) and waits for them to end. If this process dies instead, the jobs
  carry on: wait for them (squeue) before rerunning the sweep, or two jobs would share a workdir.
  """
  outcomes: dict[str, str] = {}
  todo = unfinished(root, runs, echo, outcomes)
  if not todo:
    return outcomes
  submitit = require_engine("slurm")
  executor = slurm_executor(root, options, name=Path(root).resolve().name, cluster=cluster)
  try:
    jobs = submit_array(executor, experiment, root, [run for _, run in todo], base=base, smoke=smoke)
  except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
    raise config_lib.ConfigError(f"sbatch did not take the job array: {_first_line(e)}") from None
  ids = sorted({job.job_id.split("_")[0] for job in jobs})  # one array id on Slurm
  echo(f"submitted {len(jobs)} runs as {cluster} job{'s' * (len(ids) > 1)} {', '.join(ids)}; "
       f"logs in {Path(root) / SUBMITIT_DIR}")
  pending = {job.job_id: (job, i, run) for job, (i, run) in zip(jobs, todo)}
  with _StopSignals() as stop:
    while pending and not stop.received:
      for job_id, (job, i, run) in list(pending.items()):
        if job.done():
          del pending[job_id]
          outcomes[run.name] = _submitit_outcome(job, Path(root) / run.name)
          log = "" if outcomes[run.name] == "done" else f"; log: {job.paths.stderr}"
          echo(f"[{i + 1}/{len(runs)}] {run.name}: {outcomes[run.name]}{log}")
      if pending:
        stop.sleep(poll_s)
  if stop.received:  # outside the block: a second Ctrl-C stops the waiting below
    for job, _, _ in pending.values():
      job.cancel(check=False)  # scancel: Slurm sends the runs SIGTERM, then SIGKILL after its KillWait
    while not all(job.done() for job, _, _ in pending.values()):
      time.sleep(min(poll_s, 1.0))
    for job, _, run in pending.values():
      outcomes[run.name] = "done" if _submitit_outcome(job, Path(root) / run.name) == "done" else "interrupted"
    _stopped(stop.received, [run.name for _, _, run in pending.values()], echo)
  return outcomes


def _submitit_outcome(job, workdir: Path) -> str:
  try:
    return outcome(workdir, job.result())
  except Exception as e:  # submitit's errors: the job failed, was killed or left no result
    return outcome(workdir, None, f"{type(e).__name__}: {_first_line(e)}")


def _first_line(error: BaseException) -> str:
  lines = [line for line in str(error).splitlines() if line.strip()]
  return lines[0].strip() if lines else type(error).__name__


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
  files.atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def engine_options(engine: str, given: Mapping[str, Any], *,
                   print_only: bool = False) -> RayOptions | SlurmOptions | None:
  """RayOptions / SlurmOptions (None for local) from the sweep flags `given` (by flag name, e.g.
  {"--max-parallel": 4}); a flag of another engine, or a value out of range, is a ConfigError."""
  if print_only and engine != "local":
    raise config_lib.ConfigError("--print writes the runs' commands instead of running them: it takes no --engine")
  for flag in given:
    wanted = ("ray", "slurm") if flag == "--max-parallel" else (flag.split("-")[2],)
    if engine not in wanted:
      raise config_lib.ConfigError(f"{flag} is for --engine {' or '.join(wanted)}, not --engine {engine}")
  for flag in ("--max-parallel", "--ray-num-cpus", "--ray-cpus-per-run", "--ray-gpus-per-run",
               "--slurm-gpus-per-node", "--slurm-cpus-per-task"):
    if flag in given and (given[flag] < 0 if "gpus" in flag else given[flag] <= 0):  # Ray takes CPU fractions
      raise config_lib.ConfigError(f"{flag}: expected {'0 or more' if 'gpus' in flag else 'a positive number'}, "
                                   f"got {given[flag]}")
  if engine == "ray":
    return RayOptions(address=given.get("--ray-address"), num_cpus=given.get("--ray-num-cpus"),
                      cpus_per_run=given.get("--ray-cpus-per-run") or 1.0,
                      gpus_per_run=given.get("--ray-gpus-per-run") or 0, max_parallel=given.get("--max-parallel"))
  if engine == "slurm":
    if not given.get("--slurm-time"):
      raise config_lib.ConfigError("--engine slurm needs --slurm-time, every run's time limit (e.g. 4:00:00); "
                                   "a run that reaches it saves, and its job is requeued")
    extra = []
    for item in given.get("--slurm-param", ()):
      key, sep, value = item.partition("=")
      if not sep or not key.strip():
        raise config_lib.ConfigError(f"--slurm-param: expected an sbatch option as KEY=VALUE (e.g. qos=high), "
                                     f"got {item!r}")
      extra.append((key.strip().lstrip("-"), value))
    return SlurmOptions(time_min=slurm_minutes(given["--slurm-time"]), partition=given.get("--slurm-partition"),
                        account=given.get("--slurm-account"), gpus_per_node=given.get("--slurm-gpus-per-node"),
                        cpus_per_task=given.get("--slurm-cpus-per-task"), max_parallel=given.get("--max-parallel"),
                        setup=tuple(given.get("--slurm-setup", ())), extra=tuple(extra))
  return None
