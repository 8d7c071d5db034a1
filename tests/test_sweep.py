"""`rlhf-jax sweep` (grid, one workdir per run, skip finished, resume failed; the local, Ray and
Slurm/submitit engines) on a tiny experiment that trains nothing, and that `rlhf-jax report` reads
its runs (the report itself: test_report.py)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_jax import cli as cli_lib
from rlhf_jax import config as config_lib
from rlhf_jax import report, sweep

# An experiment whose "training" logs metric = 10 * lr + seed at steps 1 and 2, counts its starts,
# fails when asked to (to test that a sweep carries on and a rerun retries), and can wait for
# `together` runs of its sweep to have started (which only runs started at once get past).
EXPERIMENT = '''
import dataclasses
import os
import threading
import time
from pathlib import Path
from rlhf_jax import logs, loop

@dataclasses.dataclass(frozen=True)
class Optim:
  lr: float = 0.1

@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  optim: Optim = Optim()
  fail: bool = False
  wait: bool = False  # wait for a signal, as a long training run would
  together: int = 0

def get_config(smoke=False):
  return Config()

def sweep():
  return [{"optim.lr": lr, "seed": s} for lr in (0.1, 0.2) for s in (0, 1)]

def main(config, workdir):
  with open(Path(workdir) / "starts", "a") as f:
    f.write("x")
  (Path(workdir) / "arrived").write_text("")
  deadline = time.time() + 60
  while len(list(Path(workdir).parent.glob("*/arrived"))) < config.together:
    if time.time() > deadline:
      raise RuntimeError(f"the other runs never started while this one ran ({config.together} wanted)")
    time.sleep(0.05)
  if config.fail and not (Path(workdir).parent / "fixed").exists():
    raise RuntimeError("asked to fail")
  if config.wait:
    stop = threading.Event()
    with loop.stop_on_signals(stop):
      (Path(workdir) / "waiting").write_text(str(os.getppid()))  # who started it (a submitit job: its wrapper)
      while not stop.wait(0.05):
        pass
    (Path(workdir) / "stopped").write_text("")  # the signal ended the wait: the run saves and exits
    return
  writer = logs.MetricWriter(workdir, tensorboard=False)
  for step in (1, 2):
    writer.write(step, {"metric": 10 * config.optim.lr * step / 2 + config.seed, "kl": step * config.optim.lr},
                 split="eval")
  writer.close()
'''


@pytest.fixture
def experiment(tmp_path):
  path = tmp_path / "toy.py"
  path.write_text(EXPERIMENT)
  return path


def cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", "rlhf_jax", *map(str, args)], capture_output=True, text=True,
                        cwd=cwd, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.fixture
def in_process(capfd, monkeypatch, tmp_path):
  """`cli` without starting a Python for the command itself (the runs of a sweep are still processes
  of their own): each interpreter start costs seconds of the test run."""
  monkeypatch.chdir(tmp_path)

  def run(*args, cwd):
    assert cwd == tmp_path
    capfd.readouterr()
    code = cli_lib.main([str(a) for a in args])
    out = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)
  return run


def test_parse_grid_and_run_names():
  points = sweep.parse_grid(["optim.lr=1e-3,3e-3", "seed=0,1,2"])
  assert len(points) == 6 and points[1] == {"optim.lr": "1e-3", "seed": "1"}
  assert sweep.run_name({"reward.scorer": "rm:runs/a", "seed": 0}) == "reward.scorer=rm_runs_a,seed=0"
  assert sweep.run_name({"condition.modes": ("plain", "token"), "x": True}) == "condition.modes=plain,token,x=true"
  # A run named by its caller: the overrides are written as `plan` writes them.
  named = sweep.Run.of("gold", {"x": True, "m": ("a", "b"), "beta": math.inf})
  assert named == sweep.Run("gold", ("x=true", "m=a,b", "beta=inf"))
  for bad in (["seed"], ["seed="], ["=1"], ["seed=1", "seed=2"]):
    with pytest.raises(config_lib.ConfigError, match="--grid"):
      sweep.parse_grid(bad)
  with pytest.raises(config_lib.ConfigError, match="repeated"):
    sweep.plan([{"seed": 0}, {"seed": 0}])


def test_sweep_runs_each_point_once_and_the_report_reads_its_runs(experiment, tmp_path, in_process):
  root = tmp_path / "sweep"
  bad = in_process("sweep", experiment, "--root", root, "--grid", "optim.lrr=0.1", cwd=tmp_path)
  assert bad.returncode == 2 and "optim.lrr" in bad.stderr and "optim.lr" in bad.stderr
  assert not root.exists()  # a bad key stops the sweep before any run starts

  printed = in_process("sweep", experiment, "--root", root, "--print", cwd=tmp_path)  # the experiment's sweep()
  commands = printed.stdout.strip().splitlines()
  assert len(commands) == 4 and all(" run " in c and "--workdir" in c for c in commands)
  assert str(root / "optim.lr=0.2,seed=1") in commands[-1]

  first = cli("sweep", experiment, "--root", root, cwd=tmp_path)  # the real command, once
  assert first.returncode == 0, first.stdout + first.stderr
  runs = sorted(p.name for p in root.iterdir())
  assert runs == ["optim.lr=0.1,seed=0", "optim.lr=0.1,seed=1", "optim.lr=0.2,seed=0", "optim.lr=0.2,seed=1"]
  for name in runs:
    info = json.loads((root / name / "run.json").read_text())
    assert "commit" in info and info["command"][:2] == ["rlhf-jax", "run"]
    assert (root / name / "done.json").is_file()
    saved = json.loads((root / name / "config.json").read_text())
    assert f"optim.lr={saved['optim']['lr']},seed={saved['seed']}" == name
  again = in_process("sweep", experiment, "--root", root, cwd=tmp_path)
  assert again.returncode == 0 and again.stdout.count("done, skipped") == 4
  assert all((root / n / "starts").read_text() == "x" for n in runs)  # nothing ran twice
  assert in_process("sweep", experiment, "--root", root, "--print", cwd=tmp_path).stdout == ""

  # What the sweep leaves is what `rlhf-jax report` reads: one setting per lr, its seeds the runs
  # (the report's own numbers, tables and plots: test_report.py).
  summary = report.summarize(report.group_runs(report.find_runs([root])))
  assert set(summary) == {"optim.lr=0.1", "optim.lr=0.2"}
  cell = summary["optim.lr=0.2"]["metric"]
  assert cell["n"] == 2 and cell["mean"] == pytest.approx(2.5)  # final step: 10 * 0.2 + seed, seeds 0 and 1


def test_a_failed_run_does_not_stop_the_sweep_and_is_retried(experiment, tmp_path, in_process):
  root = tmp_path / "sweep"
  grid = ["--grid", "fail=true,false"]  # the failing run first: the sweep must go on to the next
  out = in_process("sweep", experiment, "--root", root, *grid, cwd=tmp_path)
  assert out.returncode == 1 and "1 of 2 runs done" in out.stdout and "fail=true" in out.stdout
  assert (root / "fail=false" / "starts").read_text() == "x"  # the sweep went on after the failure
  assert not (root / "fail=true" / "done.json").exists()
  (root / "fixed").write_text("")
  retry = in_process("sweep", experiment, "--root", root, *grid, cwd=tmp_path)
  assert retry.returncode == 0 and "2 of 2 runs done" in retry.stdout
  assert (root / "fail=true" / "starts").read_text() == "xx"
  assert (root / "fail=false" / "starts").read_text() == "x"  # finished: not run again


def test_sigterm_reaches_the_running_run_and_stops_the_sweep(experiment, tmp_path):
  root = tmp_path / "sweep"
  sweep_process = subprocess.Popen(
      [sys.executable, "-m", "rlhf_jax", "sweep", str(experiment), "--root", str(root), "--grid", "wait=true",
       "--grid", "seed=0,1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  waiting = root / "wait=true,seed=0" / "waiting"
  deadline = time.time() + 120
  while not waiting.exists() and sweep_process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  sweep_process.send_signal(signal.SIGTERM)
  out, _ = sweep_process.communicate(timeout=60)
  assert sweep_process.returncode == 1, out
  assert "received SIGTERM" in out and "sweep stopped by SIGTERM during wait=true,seed=0" in out, out
  assert sweep.status(root / "wait=true,seed=0") == "started"  # unfinished: a rerun resumes it
  assert not (root / "wait=true,seed=1").exists()  # the sweep did not go on


# A composition experiment (like reward_kl_frontier): it runs the toy experiment's runs with
# sweep.run_all and stops when they were interrupted.
PARENT = '''
import dataclasses
from pathlib import Path
from rlhf_jax import sweep

@dataclasses.dataclass(frozen=True)
class Config:
  child: str = ""

def get_config(smoke=False):
  return Config()

def main(config, workdir):
  outcomes = sweep.run_all(config.child, Path(workdir) / "runs", sweep.plan([{"wait": True, "seed": 0}]))
  if "interrupted" in outcomes.values():
    return
  raise AssertionError("the child run was not interrupted")
'''


def test_a_composition_experiment_stopped_by_a_signal_exits_unfinished(experiment, tmp_path):
  parent = tmp_path / "parent.py"
  parent.write_text(PARENT)
  workdir = tmp_path / "parent_run"
  process = subprocess.Popen([sys.executable, "-m", "rlhf_jax", "run", str(parent), "--workdir", str(workdir),
                              "--set", f"child={experiment}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  waiting = workdir / "runs" / "wait=true,seed=0" / "waiting"
  deadline = time.time() + 120
  while not waiting.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=60)
  assert process.returncode == 128 + signal.SIGTERM, out  # like the run it was waiting for
  assert sweep.status(workdir) == "started" and sweep.status(waiting.parent) == "started"  # both resume


# --- engines: Ray and Slurm (submitit) ---------------------------------------------------------


def wait_for(paths, process=None, timeout=120):
  deadline = time.time() + timeout
  while not all(p.exists() for p in paths) and (process is None or process.poll() is None):
    assert time.time() < deadline, f"{paths} did not all appear in {timeout} s"
    time.sleep(0.05)


@pytest.fixture(scope="module")
def ray_address():
  """One local Ray cluster (2 CPUs) for the module: sweeps in this process use its connection, and
  the `rlhf-jax sweep` processes under test connect to it by address."""
  import ray

  handler = signal.getsignal(signal.SIGTERM)  # ray.init makes SIGTERM exit this (pytest) process
  context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  yield context.address_info["address"]
  ray.shutdown()
  signal.signal(signal.SIGTERM, handler)


def test_engine_flags_are_checked_before_any_work(experiment, tmp_path, capsys):
  def error(*flags):
    assert cli_lib.main(["sweep", str(experiment), "--root", str(tmp_path / "s"), *flags]) == 2
    return capsys.readouterr().err

  assert "--ray-address is for --engine ray" in error("--ray-address", "auto")
  assert "--max-parallel is for --engine ray or slurm" in error("--max-parallel", "2")
  assert "--slurm-partition is for --engine slurm, not --engine ray" in error("--engine", "ray",
                                                                             "--slurm-partition", "a")
  assert "needs --slurm-time" in error("--engine", "slurm")
  assert "--slurm-time: expected minutes" in error("--engine", "slurm", "--slurm-time", "4h")
  assert "--slurm-param: expected" in error("--engine", "slurm", "--slurm-time", "60", "--slurm-param", "qos")
  assert "--max-parallel: expected a positive number" in error("--engine", "ray", "--max-parallel", "0")
  assert "--ray-gpus-per-run: expected 0 or more" in error("--engine", "ray", "--ray-gpus-per-run", "-1")
  assert "--ray-num-cpus sizes a new local cluster" in error("--engine", "ray", "--ray-address", "x",
                                                            "--ray-num-cpus", "2")
  assert "takes no --engine" in error("--engine", "ray", "--print")
  with pytest.raises(config_lib.ConfigError, match="--ray-address 127.0.0.1:1: no Ray cluster answers"):
    sweep._check_reachable("127.0.0.1:1")  # fast, where Ray would retry for minutes
  assert not (tmp_path / "s").exists()
  args = cli_lib.build_parser().parse_args(
      ["sweep", "x.py", "--engine", "slurm", "--slurm-time", "1-02:30", "--slurm-partition", "gpu", "--max-parallel",
       "3", "--slurm-setup", "module load cuda", "--slurm-param", "qos=high", "--slurm-param=--constraint=a100"])
  assert sweep.engine_options(args.engine, cli_lib._engine_flags(args)) == sweep.SlurmOptions(
      time_min=1590, partition="gpu", max_parallel=3, setup=("module load cuda",),
      extra=(("qos", "high"), ("constraint", "a100")))
  assert [sweep.slurm_minutes(t) for t in ("90", "90:30", "4:00:00", "1-12", "1-00:00:01")] == [90, 91, 240, 2160, 1441]


def test_a_missing_engine_package_names_its_pip_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
  with pytest.raises(config_lib.ConfigError, match=r'--engine slurm needs .*pip install -e "\.\[slurm\]"'):
    sweep.require_engine("slurm")


def test_ray_runs_two_at_once_skips_finished_and_retries_failed(experiment, tmp_path, ray_address):
  root, lines = tmp_path / "sweep", []
  runs = sweep.plan(sweep.parse_grid(["fail=false,true"]))

  def sweep_once():  # in this process: on the module's cluster (a cluster of its own takes seconds to start)
    return sweep.run_ray(experiment, root, runs, base=["together=2"], echo=lines.append)

  # Each run waits until both have started (together=2): both getting past that means they ran at once.
  assert sweep_once() == {"fail=false": "done", "fail=true": "failed (exit 1)"}, lines
  assert "[2/2] fail=true: failed (exit 1)" in lines
  info = json.loads((root / "fail=false" / "run.json").read_text())  # the same command as the local engine's
  assert info["command"] == ["rlhf-jax", "run", str(experiment), "--workdir", str(root / "fail=false"),
                             "--set", "together=2", "--set", "fail=false"]
  (root / "fixed").write_text("")
  assert sweep_once() == {"fail=false": "skipped (done)", "fail=true": "done"}, lines
  assert (root / "fail=false" / "starts").read_text() == "x" and (root / "fail=true" / "starts").read_text() == "xx"
  assert [Path(r.path).name for r in report.find_runs([root])] == ["fail=false", "fail=true"]


# Slow: under a loaded 2-core CI machine this failed once (timing of the runs' own signal handling);
# it passes on an idle machine. Run with -m slow.
@pytest.mark.slow
def test_sigterm_cancels_the_ray_tasks_and_their_runs_save(experiment, tmp_path, ray_address):
  root = tmp_path / "sweep"
  process = subprocess.Popen(
      [sys.executable, "-m", "rlhf_jax", "sweep", str(experiment), "--root", str(root), "--engine", "ray",
       "--ray-address", ray_address, "--max-parallel", "2", "--grid", "wait=true", "--grid", "seed=0,1,2"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  workdirs = [root / "wait=true,seed=0", root / "wait=true,seed=1"]
  try:
    wait_for([w / "waiting" for w in workdirs], process)
  finally:
    process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=60)
  assert process.returncode == 1 and "sweep stopped by SIGTERM during" in out, out
  assert "0 of 3 runs done" in out and "[3/3]" not in out  # --max-parallel 2: the third never started
  for workdir in workdirs:  # each run got SIGTERM and ended by itself (not killed), unfinished: a rerun resumes
    assert (workdir / "stopped").exists() and sweep.status(workdir) == "started"


def test_submitit_local_executor_runs_the_grid(experiment, tmp_path):
  root, lines = tmp_path / "sweep", []
  runs = sweep.plan(sweep.parse_grid(["fail=false,true"]))
  outcomes = sweep.run_slurm(experiment, root, runs, options=sweep.SlurmOptions(time_min=10), cluster="local",
                             poll_s=0.1, echo=lines.append)
  assert outcomes == {"fail=false": "done", "fail=true": "failed (exit 1)"}
  failed = next(line for line in lines if "fail=true: failed" in line)
  log = Path(failed.split("log: ")[1])
  assert log.parent == root / sweep.SUBMITIT_DIR and "asked to fail" in log.read_text()
  info = json.loads((root / "fail=false" / "run.json").read_text())
  assert info["command"] == ["rlhf-jax", "run", str(experiment), "--workdir", str(root / "fail=false"), "--set",
                             "fail=false"]
  # What a rerun submits: the failed run only (the rule every engine shares, rerun for real above).
  assert sweep.unfinished(root, runs, echo=lines.append) == [(1, runs[1])]
  assert [Path(r.path).name for r in report.find_runs([root])] == ["fail=false"]  # .submitit/ holds no run


# A stand-in for a long run (a Python process starts in a fraction of `rlhf-jax run`'s time): it
# counts its starts, says who started it, and on SIGTERM records it and exits 128 + 15.
LONG_RUN = '''
import os, signal, sys, time
from pathlib import Path
here = Path(sys.argv[1])
with open(here / "starts", "a") as f:
  f.write("x")
def stop(signum, frame):
  (here / "stopped").write_text(signal.Signals(signum).name)
  sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
(here / "waiting").write_text(f"{os.getpid()} {os.getppid()}")
while True:
  time.sleep(0.05)
'''


# Slow: on a loaded 2-core machine the requeued stand-in job once never finished (killed after 216 s);
# it passes on an idle machine. Run with -m slow.
@pytest.mark.slow
def test_a_submitit_job_near_its_time_limit_stops_its_run_and_is_requeued(tmp_path):
  executor = sweep.slurm_executor(tmp_path / "sweep", sweep.SlurmOptions(time_min=10), name="t", cluster="local")
  job = executor.submit(sweep.SubmititRun([sys.executable, "-c", LONG_RUN, str(tmp_path)]))
  try:
    wait_for([tmp_path / "waiting"])
    run, wrapper = map(int, (tmp_path / "waiting").read_text().split())
    (tmp_path / "waiting").unlink()
    # Near the time limit Slurm sends submitit's USR2 to every process of the job: the run ignores it,
    # and the job stops the run with SIGTERM, waits for it, and requeues itself, which starts it again.
    os.kill(run, signal.SIGUSR2)
    os.kill(wrapper, signal.SIGUSR2)
    wait_for([tmp_path / "waiting"])
    assert (tmp_path / "stopped").read_text() == "SIGTERM" and (tmp_path / "starts").read_text() == "xx"
    assert "Requeued job" in job.stdout()
    (tmp_path / "stopped").unlink()
  finally:
    job.cancel()  # SIGINT to the job: its run gets SIGTERM
  assert job.result() == 128 + signal.SIGTERM and (tmp_path / "stopped").read_text() == "SIGTERM"


def test_the_sbatch_script_of_a_slurm_array(experiment, tmp_path, monkeypatch):
  # Stand-ins for Slurm's commands: submitit checks that srun exists and reads the job id from sbatch.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, body in (("srun", "exit 1"), ("sbatch", "echo Submitted batch job 4242")):
    (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / name).chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  root = tmp_path / "sweep"
  options = sweep.SlurmOptions(time_min=sweep.slurm_minutes("1-02:30:00"), partition="gpu", account="proj",
                               gpus_per_node=2, cpus_per_task=16, max_parallel=2, setup=("module load cuda",),
                               extra=(("qos", "high"),))
  runs = sweep.plan(sweep.parse_grid(["seed=0,1,2"]))
  jobs = sweep.submit_array(sweep.slurm_executor(root, options, name="beta"), experiment, root, runs,
                            base=["optim.lr=0.2"])
  assert [job.job_id for job in jobs] == ["4242_0", "4242_1", "4242_2"]
  script = jobs[0].paths.submission_file.read_text()
  folder = root / sweep.SUBMITIT_DIR
  for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --time=1590",
               "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=16", "#SBATCH --qos=high",
               "#SBATCH --job-name=beta", "#SBATCH --signal=USR2@90", f"#SBATCH --output={folder}/%A_%a_0_log.out",
               "module load cuda"):
    assert line in script.splitlines(), f"{line!r} not in:\n{script}"
  assert script.index("module load cuda") < script.index("srun") and f"-m submitit.core._submit {folder}" in script
  # Array task i runs grid point i's `rlhf-jax run` command, in this directory.
  for job, run in zip(jobs, runs):
    function = job.submission().function
    assert function.argv == tuple(sweep.command(experiment, root, run, base=["optim.lr=0.2"]))
    assert function.cwd == os.getcwd()
