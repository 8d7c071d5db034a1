"""The conditional-pretraining experiment end to end in --smoke mode: every mode trains at matched
steps on the same tokenizer, and the comparison table covers each conditioning a mode supports."""

import json
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax import logs, report, runs, sharding, trained
from rlhf_jax.rewards import scorers

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "conditional_pretraining.py"
VADER = scorers.get_scorer("vader")  # the experiment's default labeler (condition.scorer)


def test_smoke_run_compares_all_modes(tmp_path, cache_dir):
  results = runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path)
  assert json.loads((tmp_path / "results.json").read_text()) == results
  modes = results["modes"]
  assert list(modes) == ["plain", "filter", "token", "embedding", "contrastive"]
  # Matched compute: the same number of steps for every mode; filtering drops the bad sentences.
  for mode in modes:
    assert [r["step"] for r in logs.read_metrics(tmp_path / mode, "train")][-1] == 6
  assert modes["filter"]["train_tokens"] < modes["plain"]["train_tokens"] < modes["token"]["train_tokens"]
  assert 0.05 < results["bad_fraction_train"] < 0.5
  for mode, r in modes.items():
    conditioned = mode in ("token", "embedding", "contrastive")
    assert ("undesirable_good" in r) == conditioned and ("perplexity_flipped" in r) == conditioned
    assert r["perplexity"] > 1.0
    samples = [json.loads(s) for s in (tmp_path / mode / "samples_none.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and not any("<|" in s["text"] for s in samples)
    # The rates are those of the samples written: their VADER scores, below the -0.05 threshold.
    scores = [s["score"] for s in samples]
    np.testing.assert_allclose(scores, VADER.score([s["text"] for s in samples]), atol=1e-6)
    assert r["undesirable_none"] == np.mean(np.array(scores) < -0.05)
    assert r["score_none"] == pytest.approx(np.mean(scores))
  assert "contrastive" in logs.read_metrics(tmp_path / "contrastive", "train")[0]
  # Each method's directory is a loadable run; the embedding model keeps its preference table.
  run = trained.load(tmp_path / "embedding", sharding.make_mesh())
  assert run.model.n_preferences == 3 and run.params["wpref"]["embedding"].shape[0] == 3
  table = (tmp_path / "results.md").read_text()
  assert all(f"| {mode} |" in table for mode in modes)
  # `rlhf-jax report` reads the methods as five settings with their sample rates.
  summary = report.write_report([tmp_path], tmp_path / "report", metrics=["undesirable_none", "perplexity"])["summary"]
  assert set(summary) == {f"condition.modes={m}" for m in modes}
  assert summary["condition.modes=filter"]["undesirable_none"]["mean"] == modes["filter"]["undesirable_none"]
