"""ilql_sentiment (offline ILQL on the policy's own scored samples, through the trainer's evaluation) in --smoke mode."""

from pathlib import Path

import numpy as np
import pytest

from rlhf_jax import logs, runs

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "ilql_sentiment.py"


@pytest.mark.network
def test_ilql_smoke_samples_its_data_once_trains_and_evaluates(smoke_lm, tmp_path):
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path,
                      overrides=[f"policy.init_from={smoke_lm}", "ilql.num_samples=32"])
  train = logs.read_metrics(tmp_path, "train")
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r[name]) for r in train for name in ("loss", "lm_loss", "q_loss", "v_loss", "cql_loss"))
  evals = logs.read_metrics(tmp_path, "eval")
  assert [r["step"] for r in evals] == [0, 3, 6]
  assert all(name in evals[-1] for name in ("gold_score", "proxy_score", "kl", "eos_rate"))
  with np.load(tmp_path / "offline.npz") as data:
    assert data["response"].shape[0] == 32 and np.isfinite(data["reward"]).all()
  assert (tmp_path / "done.json").is_file()
