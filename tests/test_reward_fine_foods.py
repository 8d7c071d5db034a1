"""The fine-food reward-model experiment in --smoke mode (real human labels, downloaded once)."""

from pathlib import Path

import jax
import pytest

from rlhf_jax import logs, runs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "reward_fine_foods.py"


@pytest.mark.slow  # the experiment's default run (one smoke a family): the preference smoke below
@pytest.mark.network
def test_rating_smoke_reports_auc_next_to_the_lexicon_baselines(tmp_path, cache_dir):
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path)
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
  runs.run_experiment(ROOT / "experiments" / "pretrain_tiny.py", smoke=True, workdir=lm_dir,
                      overrides=["loop.steps=5", "loop.checkpoint_every=5"])
  rm_dir = tmp_path / "rm"
  # Under FSDP (4-way, x 2 data): the grafted reward model is created on its shards and stays there.
  state = runs.run_experiment(EXPERIMENT, smoke=True, workdir=rm_dir,
                              overrides=[f"reward.init_from={lm_dir}", "reward.kind=preference", "loop.steps=10",
                                        "loop.checkpoint_every=10", "mesh.fsdp=4"])
  kernel = state.params["h_0"]["mlp"]["c_fc"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  assert kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // 4
  assert (rm_dir / "tokenizer.model").read_bytes() == (lm_dir / "tokenizer.model").read_bytes()
  train = logs.read_metrics(rm_dir, "train")
  assert len(train) == 10 and all(r["loss"] > 0 for r in train)
  assert [r["step"] for r in logs.read_metrics(rm_dir, "eval")] == [0, 10]


@pytest.mark.network
def test_trained_reward_model_is_a_gold_scorer(tmp_path, cache_dir):
  """The RM of a run scores texts as the run measured it, normalizes, and labels pairs."""
  import numpy as np

  from rlhf_jax.data import fine_foods
  from rlhf_jax.eval import reward_metrics
  from rlhf_jax.feedback import labelers
  from rlhf_jax.rewards import scorers

  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=["loop.steps=10", "loop.checkpoint_every=10"])
  scorer = scorers.get_scorer(f"rm:{tmp_path}")
  assert scorer.name == f"rm:{tmp_path}@10"
  test = fine_foods.load("test")
  scores = scorer.score([r.text for r in test])
  assert scores.shape == (1000,) and scores.dtype == np.float32
  end = logs.read_metrics(tmp_path, "eval")[-1]
  assert reward_metrics.roc_auc(scores, [r.great for r in test]) == pytest.approx(end["auc"], abs=1e-3)
  assert scores.std() > 0
  normalized = scorer.normalize([r.text for r in test[:200]])
  reference = normalized.score([r.text for r in test[:200]])
  np.testing.assert_allclose([reference.mean(), reference.std()], [0.0, 1.0], atol=1e-3)
  labeler = labelers.SimulatedLabeler(scorer, beta=float("inf"))
  a, b = [test[0].text, ""], [test[1].text, test[2].text]
  expected = ["a" if x > y else "b" for x, y in zip(scorer.score(a), scorer.score(b))]
  assert labeler.compare(a, b) == expected
  assert labeler.name.startswith(f"rm:{tmp_path}@10(beta=inf")
