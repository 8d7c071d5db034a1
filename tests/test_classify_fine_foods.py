"""The seeds' classification loop in --smoke mode: predict, be corrected, fine-tune again, per round."""

import json
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax import cli
from rlhf_jax.data import fine_foods

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "classify_fine_foods.py"


def test_select_for_review():
  select = cli.load_experiment(EXPERIMENT).select_for_review
  logits = np.array([3.0, -0.1, 0.5, -2.0, 0.05])
  candidates = np.array([True, True, True, True, False])  # index 4 is already labeled
  np.testing.assert_array_equal(select(logits, candidates, 2, "uncertain", None), [1, 2])
  random = select(logits, candidates, 3, "random", np.random.default_rng(0))
  assert len(random) == 3 and set(random) <= {0, 1, 2, 3}
  assert len(select(logits, candidates, 10, "uncertain", None)) == 4
  with pytest.raises(ValueError, match="classify.select"):
    select(logits, candidates, 2, "confident", None)


@pytest.mark.network
def test_smoke_rounds_are_corrected_with_real_labels_and_resume(tmp_path, cache_dir):
  cli.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path)
  rounds = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
  assert [r["labeled"] for r in rounds] == [32, 64, 96]
  assert all(0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["test_auc"] <= 1.0 for r in rounds)
  truth = fine_foods.load("train")
  seen = set()
  for k in range(2):
    shown = [json.loads(line) for line in (tmp_path / f"round_{k}" / "corrections.jsonl").read_text().splitlines()]
    assert len(shown) == 32 and not seen & {c["index"] for c in shown}  # never shown twice
    seen |= {c["index"] for c in shown}
    assert all(c["label"] == truth[c["index"]].great and c["text"] == truth[c["index"]].text for c in shown)
    assert all(c["prediction"] == (c["logit"] > 0) for c in shown)
    assert rounds[k]["mistakes_found"] == sum(c["prediction"] != c["label"] for c in shown)
  # A rerun restores every finished round and reaches the same results.
  before = (tmp_path / "rounds.jsonl").read_text()
  cli.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path)
  assert (tmp_path / "rounds.jsonl").read_text() == before
