"""Two processes on localhost (CPU collectives through gloo) train the pretraining experiment and
match a single process over the same 4 devices step for step; a broken two-process run resumes
from its multi-host checkpoint (slow: five more seconds of JAX start-up per process add up on CI)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax import logs, runs

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "pretrain_tiny.py"
ARGS = ["--smoke", "--set", "loop.steps=4", "--set", "loop.checkpoint_every=2", "--set", "loop.log_every=1",
        "--set", "sample.max_new_tokens=4"]


def _env(devices: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(workdir: Path, processes: int) -> None:
  command = [sys.executable, "-m", "rlhf_jax", "run", str(EXPERIMENT), "--workdir", str(workdir), *ARGS]
  port = _free_port()
  procs = [subprocess.Popen(command + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                                       "--process-id", str(i)], env=_env(4 // processes),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(processes)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


@pytest.fixture(scope="module")
def multi(tmp_path_factory, cache_dir):
  workdir = tmp_path_factory.mktemp("multi")
  _run(workdir, 2)
  return workdir


@pytest.mark.slow  # three JAX start-ups and compiles; the default run stays under 10 minutes
def test_two_processes_match_one(multi, tmp_path):
  # The single-process reference runs here, on 4 of this process's 8 devices.
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path,
                      overrides=[a for a in ARGS[1:] if a != "--set"] + ["mesh.data=4"])
  single, two = logs.read_metrics(tmp_path, "train"), logs.read_metrics(multi, "train")
  assert [r["step"] for r in two] == [1, 2, 3, 4]  # one writer: no duplicated records
  assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in single], abs=1e-5)
  assert logs.read_metrics(multi, "eval")[-1]["loss"] == pytest.approx(
      logs.read_metrics(tmp_path, "eval")[-1]["loss"], abs=1e-5)


@pytest.mark.slow
def test_two_processes_resume_from_a_multihost_checkpoint(multi):
  final = logs.read_metrics(multi, "eval")[-1]
  shutil.rmtree(multi / "checkpoints" / "4")  # both processes restart from step 2
  _run(multi, 2)
  assert [r["step"] for r in logs.read_metrics(multi, "train")] == [1, 2, 3, 4]
  assert logs.read_metrics(multi, "eval")[-1]["loss"] == pytest.approx(final["loss"], abs=1e-5)
