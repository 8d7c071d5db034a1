"""`rlhf-jax sweep` (grid, one workdir per run, skip finished, resume failed) and `rlhf-jax report`
(mean and 95% interval over seeds, plots), on a tiny experiment that trains nothing."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from scipy import stats

from rlhf_jax import config as config_lib
from rlhf_jax import report, sweep

# An experiment whose "training" logs metric = 10 * lr + seed at steps 1 and 2, counts its starts,
# and fails when asked to (to test that a sweep carries on and a rerun retries).
EXPERIMENT = '''
import dataclasses
import threading
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

def get_config(smoke=False):
  return Config()

def sweep():
  return [{"optim.lr": lr, "seed": s} for lr in (0.1, 0.2) for s in (0, 1)]

def main(config, workdir):
  with open(Path(workdir) / "starts", "a") as f:
    f.write("x")
  if config.fail and not (Path(workdir).parent / "fixed").exists():
    raise RuntimeError("asked to fail")
  if config.wait:
    stop = threading.Event()
    with loop.stop_on_signals(stop):
      (Path(workdir) / "waiting").write_text("")
      while not stop.wait(0.05):
        pass
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


def test_parse_grid_and_run_names():
  points = sweep.parse_grid(["optim.lr=1e-3,3e-3", "seed=0,1,2"])
  assert len(points) == 6 and points[1] == {"optim.lr": "1e-3", "seed": "1"}
  assert sweep.run_name({"reward.scorer": "rm:runs/a", "seed": 0}) == "reward.scorer=rm_runs_a,seed=0"
  assert sweep.run_name({"condition.modes": ("plain", "token"), "x": True}) == "condition.modes=plain,token,x=true"
  for bad in (["seed"], ["seed="], ["=1"], ["seed=1", "seed=2"]):
    with pytest.raises(config_lib.ConfigError, match="--grid"):
      sweep.parse_grid(bad)
  with pytest.raises(config_lib.ConfigError, match="repeated"):
    sweep.plan([{"seed": 0}, {"seed": 0}])


def test_sweep_runs_each_point_once_and_reports_mean_and_interval(experiment, tmp_path):
  root = tmp_path / "sweep"
  bad = cli("sweep", experiment, "--root", root, "--grid", "optim.lrr=0.1", cwd=tmp_path)
  assert bad.returncode == 2 and "optim.lrr" in bad.stderr and "optim.lr" in bad.stderr
  assert not root.exists()  # a bad key stops the sweep before any run starts

  printed = cli("sweep", experiment, "--root", root, "--print", cwd=tmp_path)  # the experiment's sweep()
  commands = printed.stdout.strip().splitlines()
  assert len(commands) == 4 and all(" run " in c and "--workdir" in c for c in commands)
  assert str(root / "optim.lr=0.2,seed=1") in commands[-1]

  first = cli("sweep", experiment, "--root", root, cwd=tmp_path)
  assert first.returncode == 0, first.stdout + first.stderr
  runs = sorted(p.name for p in root.iterdir())
  assert runs == ["optim.lr=0.1,seed=0", "optim.lr=0.1,seed=1", "optim.lr=0.2,seed=0", "optim.lr=0.2,seed=1"]
  for name in runs:
    info = json.loads((root / name / "run.json").read_text())
    assert "commit" in info and info["command"][:2] == ["rlhf-jax", "run"]
    assert (root / name / "done.json").is_file()
    saved = json.loads((root / name / "config.json").read_text())
    assert f"optim.lr={saved['optim']['lr']},seed={saved['seed']}" == name
  again = cli("sweep", experiment, "--root", root, cwd=tmp_path)
  assert again.returncode == 0 and again.stdout.count("done, skipped") == 4
  assert all((root / n / "starts").read_text() == "x" for n in runs)  # nothing ran twice
  assert cli("sweep", experiment, "--root", root, "--print", cwd=tmp_path).stdout == ""

  # The report: groups by lr, mean and Student-t 95% interval over the two seeds.
  result = report.write_report([root], tmp_path / "report")
  assert set(result["summary"]) == {"optim.lr=0.1", "optim.lr=0.2"}
  cell = result["summary"]["optim.lr=0.2"]["metric"]
  assert cell["n"] == 2 and cell["mean"] == pytest.approx(2.5)  # final step: 10 * 0.2 + seed, seeds 0 and 1
  assert cell["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * math.sqrt(0.5) / math.sqrt(2))
  table = (tmp_path / "report" / "report.md").read_text()
  assert "| optim.lr=0.1 | 2 |" in table and "1.5 ± " in table
  assert (tmp_path / "report" / "curves.png").stat().st_size > 1000
  assert "frontier.png" not in result["files"]  # by default only where kl and gold_score exist
  frontier = cli("report", root, "--out", tmp_path / "r2", "--frontier", "kl,metric", cwd=tmp_path)
  assert frontier.returncode == 0, frontier.stderr
  assert (tmp_path / "r2" / "frontier.png").stat().st_size > 1000
  missing = cli("report", root, "--metrics", "gold", cwd=tmp_path)
  assert missing.returncode == 2 and "gold" in missing.stderr and "metric" in missing.stderr


def test_a_failed_run_does_not_stop_the_sweep_and_is_retried(experiment, tmp_path):
  root = tmp_path / "sweep"
  out = cli("sweep", experiment, "--root", root, "--grid", "fail=false,true", "--grid", "seed=0,1", cwd=tmp_path)
  assert out.returncode == 1 and "2 of 4 runs done" in out.stdout and "fail=true,seed=0" in out.stdout
  assert (root / "fail=true,seed=1" / "starts").read_text() == "x"  # the sweep went on after the failure
  assert not (root / "fail=true,seed=0" / "done.json").exists()
  (root / "fixed").write_text("")
  retry = cli("sweep", experiment, "--root", root, "--grid", "fail=false,true", "--grid", "seed=0,1", cwd=tmp_path)
  assert retry.returncode == 0 and "4 of 4 runs done" in retry.stdout
  assert (root / "fail=true,seed=0" / "starts").read_text() == "xx"
  assert (root / "fail=false,seed=0" / "starts").read_text() == "x"


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
