"""The best-of-n / rejection-sampling experiment in --smoke mode."""

import json
from pathlib import Path

import pytest

from rlhf_jax import cli, logs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.network
def test_best_of_n_smoke(tmp_path, smoke_lm):
  result = cli.run_experiment(ROOT / "experiments" / "best_of_n.py", smoke=True, workdir=tmp_path,
                              overrides=[f"policy.init_from={smoke_lm}"])
  assert json.loads((tmp_path / "results.json").read_text()) == result
  bon = [r for r in result["rows"] if r["method"].startswith("best-of-")]
  assert [r["n"] for r in bon] == [1, 2, 4]
  # Proxy = gold here: the expected best of n samples of one pool never falls as n grows.
  golds = [r["gold"] for r in bon]
  assert golds == sorted(golds)
  assert all(0.0 <= r["kl_plugin"] <= r["kl_bound"] + 1e-9 for r in bon)
  assert bon[0]["kl_bound"] == 0.0
  evals = logs.read_metrics(tmp_path, "eval")  # the same numbers where `rlhf-jax report` reads them
  assert [(r["step"], r["gold_score"], r["kl"]) for r in evals] == [(r["n"], r["gold"], r["kl_bound"]) for r in bon]
  rsft = result["rows"][-1]
  assert rsft["method"].startswith("rejection-sampling FT") and "kl" in rsft
  assert [r["step"] for r in logs.read_metrics(tmp_path / "rsft", "train")] == [1, 2, 3, 4]
