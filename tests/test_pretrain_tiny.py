"""The pretraining experiment end to end in --smoke mode: artifacts, learning, and resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlhf_jax import cli
from rlhf_jax import config as config_lib
from rlhf_jax import logs, runs, sharding, trained

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "pretrain_tiny.py"
SHORT = ["loop.steps=40", "loop.checkpoint_every=10", "loop.log_every=5", "sample.max_new_tokens=8"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir):
  """The smoke run with SHORT's settings, uninterrupted: the artifacts test reads it, and the
  interrupted run must end exactly where it does."""
  workdir = tmp_path_factory.mktemp("straight")
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=workdir, overrides=SHORT)
  return workdir


def test_smoke_run_trains_and_writes_artifacts(straight):
  for name in ("config.json", "tokenizer.model", "metrics.jsonl", "samples.jsonl"):
    assert (straight / name).exists(), name
  assert any((straight / "tb").iterdir())
  train = logs.read_metrics(straight, "train")
  assert [r["step"] for r in train] == list(range(1, 41))
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  start, end = logs.read_metrics(straight, "eval")
  assert (start["step"], end["step"]) == (0, 40)
  vocab = 512
  assert start["perplexity"] > 0.8 * vocab  # a fresh model is close to a uniform guess ...
  assert end["perplexity"] < 0.6 * vocab  # ... and training moves it well away
  samples = (straight / "samples.jsonl").read_text().splitlines()
  assert len(samples) == 10  # 5 prompts, before and after training

  # Later stages start from this workdir: the trained parameters and tokenizer load back.
  start = trained.load(straight, sharding.make_mesh())
  assert start.step == 40 and start.tokenizer.vocab_size == start.model.vocab_size == vocab
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(start.params), final_state(straight, 40)["params"])


def test_sigterm_saves_and_rerun_resumes_bitwise(tmp_path, cache_dir, straight):
  env = {**os.environ, "RLHF_JAX_CACHE": cache_dir}  # same 8 host devices as this process
  command = [sys.executable, "-m", "rlhf_jax", "run", str(EXPERIMENT), "--smoke", "--workdir",
             str(tmp_path / "interrupted")] + [f"--set={s}" for s in SHORT]
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  first_checkpoint = tmp_path / "interrupted" / "checkpoints" / "10"
  deadline = time.time() + 120
  while not first_checkpoint.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  # Unfinished: exit status 128 + SIGTERM, so a scheduler or a sweep knows to run it again.
  assert proc.returncode == 128 + signal.SIGTERM, out
  assert "received SIGTERM" in out and "stopped at step" in out, out
  assert (tmp_path / "interrupted" / "run.json").is_file()
  assert not (tmp_path / "interrupted" / "done.json").exists()
  stopped_at = max(r["step"] for r in logs.read_metrics(tmp_path / "interrupted", "train"))
  assert 10 <= stopped_at < 40, out

  resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"resuming from the checkpoint at step {stopped_at}" in resumed.stdout
  assert (tmp_path / "interrupted" / "done.json").is_file()

  # The same run without interruption, with the same overrides.
  a = logs.read_metrics(straight)
  b = logs.read_metrics(tmp_path / "interrupted")
  for split in ("train", "eval"):
    rows_a = [r for r in a if r["split"] == split]
    rows_b = [r for r in b if r["split"] == split]
    assert rows_a == rows_b, split  # every loss, gradient and parameter norm, bitwise
  assert len([r for r in b if r["split"] == "train"]) == 40
  jax.tree.map(np.testing.assert_array_equal, final_state(straight), final_state(tmp_path / "interrupted"))


def final_state(workdir, step=40):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(Path(workdir) / "checkpoints" / str(step) / "state")


def test_unknown_override_is_an_error_before_anything_starts(tmp_path, capsys):
  code = cli.main(["run", str(EXPERIMENT), "--smoke", "--workdir", str(tmp_path / "w"), "--set", "loop.stepz=3"])
  assert code == 2
  assert "did you mean 'loop.steps'" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_resuming_with_a_different_config_is_an_error(tmp_path, capsys):
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  config_lib.save(runs.load_experiment(EXPERIMENT).get_config(smoke=True), tmp_path / "config.json")
  before = (tmp_path / "config.json").read_text()
  code = cli.main(["run", str(EXPERIMENT), "--smoke", "--workdir", str(tmp_path), "--set", "loop.steps=99"])
  assert code == 2
  assert "loop.steps: 30 -> 99" in capsys.readouterr().err
  assert (tmp_path / "config.json").read_text() == before  # the saved config is left alone


def test_unknown_corpus_is_an_error_before_anything_starts(tmp_path, capsys):
  code = cli.main(["run", str(EXPERIMENT), "--smoke", "--workdir", str(tmp_path / "w"), "--set", "data.corpus=browm"])
  assert code == 2
  assert "data.corpus: unknown corpus 'browm'; did you mean 'brown'?" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_loading_a_workdir_that_is_not_an_lm_run_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    trained.load(tmp_path, sharding.make_mesh())
