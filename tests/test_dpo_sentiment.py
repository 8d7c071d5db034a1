"""dpo_sentiment in --smoke mode: online rounds labeled into the store, then offline from that store
and from the fine-food reviews' human preferences."""

import json
from pathlib import Path

import pytest

from rlhf_jax import cli, logs
from rlhf_jax.feedback.store import FeedbackStore

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "dpo_sentiment.py"


@pytest.mark.network
def test_online_then_offline_dpo(smoke_lm, tmp_path):
  online = tmp_path / "online"
  results = cli.run_experiment(EXPERIMENT, smoke=True, workdir=online, overrides=[f"policy.init_from={smoke_lm}"])
  assert [r["round"] for r in results] == [-1, 0, 1]
  assert all(r["pairs"] >= 16 for r in results[1:])
  with FeedbackStore(online / "feedback.db") as store:
    prefs = store.export_preferences()
  assert {r["chosen_model"] for r in prefs} == {"dpo-round-0", "dpo-round-1"}
  for k in range(2):
    train = logs.read_metrics(online / f"round_{k}", "train")
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(name in train[0] for name in ("reward_chosen", "reward_rejected", "reward_accuracy", "logp_chosen",
                                            "logp_rejected", "reward_margin"))
  # Each round's evaluation is in the run's metrics.jsonl too, where `rlhf-jax report` reads it.
  evals = logs.read_metrics(online, "eval")
  assert [r["step"] for r in evals] == [0, 3, 6]
  assert [r["gold_score"] for r in evals] == [r["gold_score"] for r in results]
  # A rerun resumes every round and reuses the store's judgements: same results, no new pairs.
  before = (online / "rounds.jsonl").read_text()
  cli.run_experiment(EXPERIMENT, smoke=True, workdir=online, overrides=[f"policy.init_from={smoke_lm}"])
  assert (online / "rounds.jsonl").read_text() == before
  assert logs.read_metrics(online, "eval") == evals  # rewritten, not appended
  with FeedbackStore(online / "feedback.db") as store:
    assert len(store.export_preferences()) == len(prefs)

  # A run stopped after round 0 and resumed (here: one round, then two) labels round 1 as the
  # unbroken run did, though it reuses round 0's judgements instead of labelling them again.
  resumed = tmp_path / "resumed"
  cli.run_experiment(EXPERIMENT, smoke=True, workdir=resumed,
                     overrides=[f"policy.init_from={smoke_lm}", "online.rounds=1"])
  cli.run_experiment(EXPERIMENT, smoke=True, workdir=resumed, overrides=[f"policy.init_from={smoke_lm}"])
  def judged(records):
    return [{k: v for k, v in r.items() if k != "created"} for r in records]
  with FeedbackStore(resumed / "feedback.db") as store:
    assert judged(store.export_preferences()) == judged(prefs)
  assert (resumed / "rounds.jsonl").read_text() == before

  offline = cli.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "offline",
                               overrides=[f"policy.init_from={smoke_lm}", f"data.source=store:{online / 'feedback.db'}",
                                          "dpo.kind=ipo"])
  assert [r["round"] for r in offline] == [-1, 0] and offline[1]["pairs"] == len(prefs)
  people = cli.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "fine_foods",
                              overrides=[f"policy.init_from={smoke_lm}", "data.source=fine_foods"])
  assert [r["round"] for r in people] == [-1, 0] and people[1]["pairs"] == 1400  # the real human pairs
  with pytest.raises(FileNotFoundError, match="feedback store"):
    cli.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "bad",
                       overrides=[f"policy.init_from={smoke_lm}", f"data.source=store:{tmp_path / 'nope.db'}"])
  assert json.loads((online / "rounds.jsonl").read_text().splitlines()[0])["round"] == -1
