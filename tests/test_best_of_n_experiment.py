"""The best-of-n / rejection-sampling experiment in --smoke mode (the pieces: test_rl.py)."""

import json
import math
from pathlib import Path

import pytest

from rlhf_jax import logs, runs

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "best_of_n.py"


@pytest.mark.network
def test_best_of_n_then_rejection_sampling_fine_tuning(tmp_path, smoke_lm):
  result = runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=[f"policy.init_from={smoke_lm}"])
  assert json.loads((tmp_path / "results.json").read_text()) == result
  bon = result["best_of_n"]
  assert [r["n"] for r in bon] == [1, 2, 4]
  # Proxy = gold here: the expected best of n samples of one pool never falls as n grows.
  golds = [r["gold_score"] for r in bon]
  assert golds == sorted(golds)
  # KL: the closed form log n - (n - 1) / n; measured on the pool's rewards (ties lower it), never above it.
  assert [r["kl"] for r in bon] == pytest.approx([0.0, math.log(2) - 1 / 2, math.log(4) - 3 / 4])
  assert all(0.0 <= r["kl_plugin"] <= r["kl"] + 1e-9 for r in bon)
  evals = logs.read_metrics(tmp_path, "eval")  # the same numbers where `rlhf-jax report` reads them
  assert [(r["step"], r["gold_score"], r["kl"]) for r in evals] == [(r["n"], r["gold_score"], r["kl"]) for r in bon]
  # RSFT on the trainer: the best of rsft.n samples per prompt, an RL run's evaluations.
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["rl"]["algorithm"] == "rsft" and config["fine_tune"] is True
  train = logs.read_metrics(tmp_path / "rsft", "train")
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(r["best_score"] >= r["score"] - 1e-5 and math.isfinite(r["loss"]) for r in train)
  rsft_evals = logs.read_metrics(tmp_path / "rsft", "eval")
  assert [r["step"] for r in rsft_evals] == [0, 3, 6] and result["rsft"] == rsft_evals[-1]
  assert all(math.isfinite(result["rsft"][k]) for k in ("gold_score", "proxy_score", "kl", "response_length"))
  table = (tmp_path / "results.md").read_text()
  assert "| best-of-4 |" in table and "| RSFT, best of 8 |" in table
