"""The simulated-feedback reward experiment in --smoke mode: policy -> store -> reward model."""

import json
from pathlib import Path

import pytest

from rlhf_jax import logs, runs
from rlhf_jax.feedback.store import FeedbackStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.network
def test_smoke_labels_into_the_store_and_trains_a_reward_model(tmp_path, cache_dir):
  # The workdir holds the store of a collection that was killed after one judgement: it is kept
  # aside, and the collection starts over (training on it would silently use one pair).
  with FeedbackStore(tmp_path / "feedback.db") as partial:
    a, b = partial.add_samples([{"prompt": "The", "response": r, "model": "m"} for r in (" good", " bad")])
    partial.compare(a, b, "a", labeler="vader(beta=10,tie=0,seed=0)")
  runs.run_experiment(ROOT / "experiments" / "reward_simulated.py", smoke=True, workdir=tmp_path,
                      overrides=["policy.samples_per_prompt=3"])
  with FeedbackStore(tmp_path / "feedback.db") as store:
    comparisons = store.judgements(kind="comparison")
    assert len(comparisons) > 48 * 2  # 48 prompts, up to 3 pairs each (identical samples are not compared)
    per_prompt = {}
    for c in comparisons:
      per_prompt.setdefault(store.sample(c.sample_a).prompt_id, set()).update({c.sample_a, c.sample_b})
    assert max(len(s) for s in per_prompt.values()) == 3
    assert {c.labeler for c in comparisons} == {"vader(beta=10,tie=0,seed=0)"}
    exported = store.export_preferences()
  with FeedbackStore(tmp_path / "feedback.interrupted-0.db") as kept:
    assert len(kept.judgements(kind="comparison")) == 1
  assert json.loads((tmp_path / "feedback_complete.json").read_text()) == {"comparisons": len(comparisons)}
  lines = (tmp_path / "preferences.jsonl").read_text().splitlines()
  assert [json.loads(line)["chosen"] for line in lines] == [r["chosen"] for r in exported]
  split = json.loads((tmp_path / "data.json").read_text())
  assert split["train_pairs"] + split["test_pairs"] == len(exported) and split["test_pairs"] > 0
  assert len(logs.read_metrics(tmp_path, "train")) == 20
  evaluations = logs.read_metrics(tmp_path, "eval")
  assert [r["step"] for r in evaluations] == [0, 20]
  # Seeded numbers of this smoke run: 15 held-out pairs, where the reward model before and after 20
  # steps gets 8 and 10 of the labeler's own labels right, within one pair for another CPU's
  # rounding (after a change to the smoke config, the labeler, the model or its training, update
  # them, with the reason).
  assert [r["pairs"] for r in evaluations] == [split["test_pairs"]] * 2 == [15.0] * 2
  assert [15 * r["accuracy_vs_labels"] for r in evaluations] == pytest.approx([8, 10], abs=1.01)
  assert [r["accuracy_vs_noiseless"] for r in evaluations] == pytest.approx([0.5, 0.5], abs=0.15)
