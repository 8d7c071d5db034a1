"""Rubric judgements in the feedback store: one score per criterion, stored together, undone
together, exported per criterion as ratings; a version-1 store gains the table and loses nothing."""

import sqlite3

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
