"""dpo_sentiment in --smoke mode: online DPO on the RL trainer (default run); offline from a feedback
store and from the fine-food reviews' human preferences (slow). Both trainers learn a task with a
known answer in test_rl.py, where online DPO also resumes exactly."""

import json
import math
from pathlib import Path

import pytest

from rlhf_jax import logs, runs
from rlhf_jax.config import ConfigError
from rlhf_jax.feedback.store import FeedbackStore

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "dpo_sentiment.py"
EVAL = {"gold_score", "proxy_score", "kl", "response_length", "eos_rate"}  # the RL trainer's evaluation


def count_e(texts):
  """A reward the smoke LM's gibberish varies under (VADER scores nearly all of it 0: every pair a tie)."""
  return [float(t.count("e")) for t in texts]


def _finite_evals(workdir: Path) -> list[dict]:
  evals = logs.read_metrics(workdir, "eval")
  for r in evals:
    assert EVAL <= set(r) and all(math.isfinite(r[name]) for name in EVAL), r
  return evals


@pytest.mark.network
def test_online_dpo_smoke_ranks_fresh_pairs_and_evaluates(smoke_lm, tmp_path):
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path,
                      overrides=[f"policy.init_from={smoke_lm}", f"task.reward=py:{__name__}:count_e"])
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["rl"]["algorithm"] == "online_dpo" and config["dpo"]["beta"] == 0.1
  train = logs.read_metrics(tmp_path, "train")
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  # Pairs ranked by the reward, ties (equal counts) masked out; the DPO metrics of those pairs.
  # Each step's fraction of its 8 pairs (rl.batch_size=16 responses) that are no tie: a count of 8.
  assert all((8 * r["pair_fraction"]).is_integer() and 0 <= r["pair_fraction"] <= 1 for r in train)
  assert all(math.isfinite(r["loss"]) for r in train)
  assert any(r["pair_fraction"] > 0 and r["grad_norm"] > 0 for r in train)
  assert {"reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected", "score", "kl"} <= set(train[0])
  assert [r["step"] for r in _finite_evals(tmp_path)] == [0, 3, 6]
  assert (tmp_path / "reward_norm.json").is_file() and (tmp_path / "done.json").is_file()


def test_data_source_errors_name_the_setting_or_the_file(tmp_path):
  with pytest.raises((ConfigError, ValueError),
                     match="data.source: expected 'online', 'feedback', 'store:PATH' or 'fine_foods'"):
    runs.resolve_config(runs.load_experiment(EXPERIMENT), True, ["data.source=people"])
  # A missing store fails before anything is written (no config.json, no policy, no prompts).
  with pytest.raises(ConfigError, match=r"data.source: .*nope.db not found: expected a feedback store"):
    runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "run",
                        overrides=[f"data.source=store:{tmp_path / 'nope.db'}"])
  assert not (tmp_path / "run").exists()


def _store(path: Path, pairs: int) -> Path:
  """A feedback store where a labeler preferred a cheerful response to a gloomy one, `pairs` times."""
  with FeedbackStore(path) as store:
    ids = store.add_samples([{"prompt": f"Meal number {i} was", "response": text, "model": model}
                             for i in range(pairs) for text, model in (("good and great, we loved it", "a"),
                                                                       ("bad and awful, we hated it", "b"))])
    store.compare_many([(a, b, "a") for a, b in zip(ids[::2], ids[1::2])], labeler="test")
  return path


@pytest.mark.slow
@pytest.mark.network
def test_offline_dpo_from_a_store_and_from_fine_food_reviews(smoke_lm, tmp_path):
  store = _store(tmp_path / "feedback.db", pairs=24)
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "store",
                      overrides=[f"policy.init_from={smoke_lm}", f"data.source=store:{store}", "dpo.kind=ipo"])
  train = logs.read_metrics(tmp_path / "store", "train")
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert train[-1]["reward_margin"] > train[0]["reward_margin"] and train[-1]["reward_accuracy"] == 1.0
  assert [r["step"] for r in _finite_evals(tmp_path / "store")] == [0, 3, 6]
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "people",
                      overrides=[f"policy.init_from={smoke_lm}", "data.source=fine_foods", "loop.steps=2"])
  assert [r["step"] for r in logs.read_metrics(tmp_path / "people", "train")] == [1, 2]
  assert [r["step"] for r in _finite_evals(tmp_path / "people")] == [0, 2]
  with pytest.raises(ValueError, match=r"3 preference pairs, fewer than the 8 a step trains on"):
    runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "few", overrides=[
        f"policy.init_from={smoke_lm}", f"data.source=store:{_store(tmp_path / 'few.db', pairs=3)}"])


@pytest.mark.network
def test_online_dpo_in_feedback_rounds_labels_into_the_store_trains_each_round_and_resumes(smoke_lm, tmp_path):
  overrides = [f"policy.init_from={smoke_lm}", "data.source=feedback", f"labeler.scorer=py:{__name__}:count_e",
               "labeler.beta=inf", "labeler.tie_margin=0.5", "loop.steps=2", "loop.eval_every=2"]
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=overrides)
  labeler = f"py:{__name__}:count_e(beta=inf,tie=0.5,seed=0)"
  with FeedbackStore(tmp_path / "feedback.db") as store:
    prefs = store.export_preferences()
    assert {p["labeler"] for p in prefs} == {labeler}
    assert all(p["chosen"].count("e") > p["rejected"].count("e") for p in prefs)  # the noiseless labeler's taste
    judged = len(store.judgements())
  for r in (0, 1):
    mine = [p for p in prefs if p["chosen_model"].startswith(f"round_{r}@")]
    assert json.loads((tmp_path / f"round_{r}" / "round.json").read_text()) == {"pairs": len(mine)} and mine
    assert [e["step"] for e in _finite_evals(tmp_path / f"round_{r}")] == [0, 2]
  # Round 0 starts at the reference: its samples' log-probs are the reference's, KL exactly 0. Round 1
  # starts at round 0's policy (two small updates away): no longer exactly 0.
  assert _finite_evals(tmp_path / "round_0")[0]["kl"] == 0.0
  assert _finite_evals(tmp_path / "round_1")[0]["kl"] != 0.0
  before = {r: logs.read_metrics(tmp_path / f"round_{r}") for r in (0, 1)}
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=overrides)  # finished: nothing to do
  assert {r: logs.read_metrics(tmp_path / f"round_{r}") for r in (0, 1)} == before
  with FeedbackStore(tmp_path / "feedback.db") as store:
    assert len(store.judgements()) == judged
  # Stopped after round 1's last checkpoint: the rerun starts from round 0's saved policy, finds
  # round 1's pairs in the store, and ends where the unbroken run did.
  (tmp_path / "round_1" / "round.json").unlink()
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=overrides)
  assert {r: logs.read_metrics(tmp_path / f"round_{r}") for r in (0, 1)} == before
  with FeedbackStore(tmp_path / "feedback.db") as store:
    assert len(store.judgements()) == judged
  with pytest.raises(ValueError, match="rounds.prompts_per_round=100000 exceeds the task's"):
    runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "too_many",
                        overrides=overrides + ["rounds.prompts_per_round=100000", "rounds.sample_batch_size=100000"])


@pytest.mark.network
def test_feedback_rounds_wait_for_people_on_the_labeling_queue(smoke_lm, tmp_path):
  import threading
  stop = threading.Event()

  def person():  # judges every pair the queue offers: the first sample is better
    with FeedbackStore(tmp_path / "feedback.db") as store:
      while not stop.is_set():
        task = store.next_pair("alice")
        if task is None:
          stop.wait(0.2)
          continue
        store.compare(task.a.id, task.b.id, "a", labeler="alice")

  (tmp_path / "feedback.db").parent.mkdir(parents=True, exist_ok=True)
  FeedbackStore(tmp_path / "feedback.db").close()  # the page's store exists before the run fills it
  thread = threading.Thread(target=person, daemon=True)
  thread.start()
  try:
    runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=[
        f"policy.init_from={smoke_lm}", "data.source=feedback", "labeler.scorer=", "rounds.rounds=1",
        "loop.steps=1", "loop.eval_every=1"])
  finally:
    stop.set()
    thread.join()
  with FeedbackStore(tmp_path / "feedback.db") as store:
    prefs = store.export_preferences()
  assert prefs and {p["labeler"] for p in prefs} == {"alice"}
  assert json.loads((tmp_path / "round_0" / "round.json").read_text()) == {"pairs": len(prefs)}
