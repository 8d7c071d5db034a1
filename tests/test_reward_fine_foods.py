"""The fine-food reward-model experiment in --smoke mode (real human labels, downloaded once)."""

from pathlib import Path

import pytest

from rlhf_jax import cli, logs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "reward_fine_foods.py"


@pytest.mark.network
def test_rating_smoke_reports_auc_next_to_the_lexicon_baselines(tmp_path, cache_dir):
  cli.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path)
  start, end = logs.read_metrics(tmp_path, "eval")
  assert (start["step"], end["step"]) == (0, 40)
  # The baselines are the published lexicons on the 1,000 held-out reviews (see DATA.md).
  assert end["vader_auc"] == pytest.approx(0.737, abs=0.005)
  assert end["textblob_auc"] == pytest.approx(0.733, abs=0.005)
  assert 0.0 <= end["auc"] <= 1.0 and 0.0 <= end["accuracy"] <= 1.0
  train = logs.read_metrics(tmp_path, "train")
  assert len(train) == 40 and all(0.0 <= r["accuracy"] <= 1.0 for r in train)
  assert (tmp_path / "tokenizer.model").exists()


@pytest.mark.network
def test_preference_smoke_starts_from_a_pretrained_lm(tmp_path, cache_dir):
  lm_dir = tmp_path / "lm"
  cli.run_experiment(ROOT / "experiments" / "pretrain_tiny.py", smoke=True, workdir=lm_dir,
                     overrides=["loop.steps=5", "loop.checkpoint_every=5"])
  rm_dir = tmp_path / "rm"
  cli.run_experiment(EXPERIMENT, smoke=True, workdir=rm_dir,
                     overrides=[f"reward.init_from={lm_dir}", "reward.kind=preference", "loop.steps=10",
                                "loop.checkpoint_every=10"])
  assert (rm_dir / "tokenizer.model").read_bytes() == (lm_dir / "tokenizer.model").read_bytes()
  train = logs.read_metrics(rm_dir, "train")
  assert len(train) == 10 and all(r["loss"] > 0 for r in train)
  assert [r["step"] for r in logs.read_metrics(rm_dir, "eval")] == [0, 10]
