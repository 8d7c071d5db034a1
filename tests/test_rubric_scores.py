"""Rubric judgements in the feedback store: one score per criterion, stored together, undone
together, exported per criterion as ratings; a version-1 store gains the table and loses nothing."""

import sqlite3

import numpy as np
import pytest

from rlhf_jax.feedback.store import FeedbackError, FeedbackStore, LeaseHeldError, Scores

SCALES = {"accuracy": 5, "fluency": 5, "satisfaction": 5}


def _store(tmp_path, clock=None):
  store = FeedbackStore(tmp_path / "f.db", **({"clock": clock} if clock else {}))
  ids = store.add_samples([{"prompt": "Question: What kind of thing is a dog?\nAnswer:", "response": r, "model": "m"}
                           for r in (" canine.", " a cat.")])
  return store, ids


def test_a_rubric_judgement_is_stored_undone_and_exported_together(tmp_path):
  store, (good, bad) = _store(tmp_path)
  store.score(good, {"accuracy": 5, "fluency": 4, "satisfaction": 5}, scales=SCALES, labeler="ann")
  judgement = store.score(bad, {"accuracy": 1, "fluency": 4, "satisfaction": 2}, scales=SCALES, labeler="ann")
  with pytest.raises(FeedbackError, match="already scored sample .* on 'accuracy'"):
    store.score(bad, {"accuracy": 2}, scales=SCALES, labeler="ann")
  exported = store.export_scores()
  assert [(r["response"], r["scores"]) for r in exported] == [
      (" canine.", {"accuracy": 5, "fluency": 4, "satisfaction": 5}),
      (" a cat.", {"accuracy": 1, "fluency": 4, "satisfaction": 2})]
  assert store.export_dataset("rating", criterion="accuracy") == [
      {"prompt": exported[0]["prompt"], "completion": " canine.", "rating": 5},
      {"prompt": exported[0]["prompt"], "completion": " a cat.", "rating": 1}]
  undone = store.undo_last("ann")
  assert isinstance(undone, Scores) and undone.id == judgement and undone.values["satisfaction"] == 2
  assert [r["response"] for r in store.export_scores()] == [" canine."]  # all three criteria went
  store.score(bad, {"accuracy": 2, "fluency": 3, "satisfaction": 2}, scales=SCALES, labeler="ann")  # again, after undo
  assert len(store.export_scores()) == 2


def test_bad_scores_and_held_samples_store_nothing(tmp_path):
  now = [1000.0]
  store, (good, _) = _store(tmp_path, clock=lambda: now[0])
  for values, message in [({"accuracy": 6}, r"values\['accuracy'\]: expected an int in 1..5"),
                          ({"honesty": 3}, "no scale for criterion 'honesty'"), ({}, "at least one criterion")]:
    with pytest.raises(FeedbackError, match=message):
      store.score(good, values, scales=SCALES, labeler="ann")
  task = store.next_sample_to_rate("bob")
  with pytest.raises(LeaseHeldError):
    store.score(task.sample.id, {"accuracy": 3}, scales=SCALES, labeler="ann")
  assert store.export_scores() == []


def test_a_version_1_store_is_upgraded_in_place_keeping_every_judgement(tmp_path):
  store, (good, bad) = _store(tmp_path)
  store.compare(good, bad, "a", labeler="ann")
  store.rate(good, 4, scale=5, labeler="ann")
  store.close()
  with sqlite3.connect(tmp_path / "f.db") as conn:  # what version 1 wrote: no scores table
    conn.execute("DROP TABLE scores")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
  with FeedbackStore(tmp_path / "f.db") as store:
    assert len(store.export_preferences()) == 1 and len(store.export_ratings()) == 1
    store.score(good, {"accuracy": 5}, scales=SCALES, labeler="ann")
    assert store.export_scores()[0]["scores"] == {"accuracy": 5}
  with sqlite3.connect(tmp_path / "f.db") as conn:
    assert dict(conn.execute("SELECT key, value FROM meta"))["schema_version"] == "2"


def test_simulated_experts_score_each_criterion_from_its_signal():
  import numpy as np

  from rlhf_jax.feedback import rubric
  gold = [["canine", "domestic animal"]] * 4
  answers = [" canine.", " a canine but also many other things that go on and on about it.", " cat.", ""]
  logp = np.array([-1.0, -1.0, -6.0, -3.5])  # nats per token under the fluency LM
  exact = rubric.SimulatedExpert(fluency_logp=lambda p, a: logp, noise=0.0)
  scores = exact.score(["q"] * 4, answers, gold)
  assert scores["accuracy"].tolist() == [5, 2, 2, 1]  # the long answer is not "canine" up to its first comma
  assert scores["fluency"].tolist() == [5, 5, 1, 3]
  # satisfaction = 0.6 accuracy + 0.25 fluency + 0.15 brevity (5 up to 4 words, 1 from 20 on)
  brevity = np.array([5, 1 + 4 * (20 - 14) / 16, 5, 5])  # 14 words
  expected = np.rint(0.6 * np.array([5, 2, 2, 1]) + 0.25 * np.array([5, 5, 1, 3]) + 0.15 * brevity)
  assert scores["satisfaction"].tolist() == expected.astype(int).tolist()
  harsh = rubric.SimulatedExpert(fluency_logp=lambda p, a: logp, noise=0.0, bias={"fluency": -1.0})
  assert harsh.score(["q"] * 4, answers, gold)["fluency"].tolist() == [4, 4, 1, 2]
  noisy = [rubric.SimulatedExpert(fluency_logp=lambda p, a: logp, noise=1.0, seed=s).score(["q"] * 4, answers, gold)
           for s in (0, 0, 1)]
  assert noisy[0]["fluency"].tolist() == noisy[1]["fluency"].tolist()  # the seed fixes the draws
  assert any(noisy[0][c].tolist() != noisy[2][c].tolist() for c in noisy[0])
  assert all(((1 <= v) & (v <= 5)).all() for n in noisy for v in n.values())
  assert rubric.Rubric.parse("accuracy:5, fluency:3,satisfaction").scales == {
      "accuracy": 5, "fluency": 3, "satisfaction": 5}
  with pytest.raises(ValueError, match="distinct criteria"):
    rubric.Rubric.parse("accuracy,accuracy")


def test_the_terminal_scores_each_answer_on_the_rubric_with_undo(tmp_path, capsys, monkeypatch):
  import io

  from rlhf_jax import cli
  store, _ = _store(tmp_path)
  store.close()
  # A short line and a 9 are asked again; `u` undoes nothing yet; then two answers are scored.
  monkeypatch.setattr("sys.stdin", io.StringIO("5 4\n5 4 9\nu\n5 4 5\n1 2 1\n"))
  assert cli.main(["label", "--terminal", "--store", str(tmp_path / "f.db"), "--labeler", "ann",
                   "--rubric", "default"]) == 0
  out = capsys.readouterr().out
  assert "please answer 3 numbers" in out and "accuracy (1-5): Is the answer right?" in out
  assert "2 judgements saved" in out and "no answers left to score" in out
  with FeedbackStore(tmp_path / "f.db") as store:
    assert sorted(r["scores"]["accuracy"] for r in store.export_scores()) == [1, 5]
  assert cli.main(["label", "--terminal", "--store", str(tmp_path / "f.db"), "--labeler", "x", "--rubric", "a,a"]) == 2


def test_rubric_scores_export_as_records_and_as_one_criterions_ratings(tmp_path):
  from rlhf_jax import cli
  from rlhf_jax.data import records
  store, (good, bad) = _store(tmp_path)
  store.score(good, {"accuracy": 5, "fluency": 4, "satisfaction": 5}, scales=SCALES, labeler="ann")
  store.close()
  db = str(tmp_path / "f.db")
  assert cli.main(["feedback", "export", "scores", "--store", db, "--out", str(tmp_path / "s.jsonl")]) == 0
  (record,) = [__import__("json").loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
  assert record["scores"] == {"accuracy": 5, "fluency": 4, "satisfaction": 5} and record["labeler"] == "ann"
  assert cli.main(["feedback", "export", "scores", "--store", db, "--out", str(tmp_path / "f.csv"),
                   "--criterion", "fluency"]) == 0
  assert records.load(tmp_path / "f.csv").rows == [{"prompt": record["prompt"], "completion": " canine.", "rating": 4.0}]
  assert cli.main(["feedback", "export", "scores", "--store", db, "--out", str(tmp_path / "x.csv"), "--trl"]) == 2


def test_collect_scores_stores_each_round_whole_and_resumes_as_if_never_interrupted(tmp_path):
  """Simulated experts score every distinct non-empty answer in the round that sampled it; a
  collection killed in round 2 and resumed stores exactly what an unbroken one stores."""
  import jax

  from rlhf_jax.feedback import collect, rubric

  questions = [f"Question: What is another word for w{i}?\nAnswer:" for i in range(10)]
  gold = [[f"s{i}"] for i in range(10)]
  calls = []

  def sample_texts(prompts, key, fail_at=None):
    calls.append(len(calls))
    if fail_at is not None and len(calls) == fail_at:
      raise KeyboardInterrupt
    k = int(jax.random.randint(key, (), 0, 3))  # 0: empty, 1: the right answer, 2: a wrong one
    return [["", f" s{questions.index(q)}.", " no."][(k + n) % 3] for n, q in enumerate(prompts)]

  # Noise of a whole scale point: a resumed collection that drew other noise would store other scores.
  experts = [rubric.SimulatedExpert(fluency_logp=lambda p, a: [-2.0] * len(a), noise=1.0, seed=s, name=f"e{s}")
             for s in (1, 2)]
  kwargs = dict(samples_per_prompt=3, batch_size=4, model="m", key=jax.random.key(0))

  def values(store):
    return [(r["prompt"], r["response"], r["labeler"], r["scores"]) for r in store.export_scores()]

  with FeedbackStore(tmp_path / "whole.db") as store:
    n = collect.collect_scores(store, sample_texts, questions, gold, experts, **kwargs)
    whole = values(store)
  assert n == len(whole) and {w[2] for w in whole} == {"e1", "e2"}
  assert all(w[1].strip() for w in whole)  # empty answers are not stored
  right = [w[3]["accuracy"] for w in whole if w[1] != " no."]
  wrong = [w[3]["accuracy"] for w in whole if w[1] == " no."]
  assert np.mean(right) > np.mean(wrong) + 2  # the signals are 5 and 2
  per_answer = {(w[0], w[1]) for w in whole}
  assert len(whole) == 2 * len(per_answer)  # each distinct answer once per expert

  calls.clear()
  with FeedbackStore(tmp_path / "resumed.db") as store:
    with pytest.raises(KeyboardInterrupt):  # dies in round 2 (the 5th sampling call)
      collect.collect_scores(store, lambda p, k: sample_texts(p, k, fail_at=5), questions, gold, experts, **kwargs)
    assert store.collection_progress("scores")[0] == 1 and len(values(store)) < n
    collect.collect_scores(store, sample_texts, questions, gold, experts, **kwargs)
    assert values(store) == whole
