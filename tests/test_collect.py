"""Feedback collection: rounds of sampling and labeling stored whole, resumed exactly, or left for people."""

import jax
import numpy as np
import pytest

from rlhf_jax.feedback import collect, labelers
from rlhf_jax.feedback.store import FeedbackError, FeedbackStore
from rlhf_jax.rewards import scorers

WORDS = ["good", "bad", "fine", "great", "awful", "ok"]
PROMPTS = [f"prompt {i}" for i in range(7)]


def fake_policy(prompts, key):
  """One response per prompt, a function of the key and the prompt (so rounds are reproducible)."""
  seed = int(jax.random.randint(key, (), 0, 2**30))
  rng = np.random.default_rng(seed)
  return [" " + WORDS[rng.integers(len(WORDS))] if i % 5 else "" for i, _ in enumerate(prompts)]  # some empty


def labeler():
  score = scorers.FunctionScorer(lambda texts: [len(t) for t in texts], name="py:len")
  return labelers.SimulatedLabeler(score, beta=1.0, seed=0)


def collect_into(store, sample=fake_policy, who=None):
  return collect.collect_comparisons(store, sample, PROMPTS, who or labeler(), samples_per_prompt=3, batch_size=3,
                                     model="policy@0", key=jax.random.key(0), source="test")


def test_comparable_pairs_are_every_two_distinct_nonempty_responses_of_a_prompt():
  responses_KxB = [[" a", " x", ""], [" b", " x", " y"], [" a", " z", " w"]]
  # prompt 0: " a" twice is one response; prompt 1: " x" twice; prompt 2: "" is no response
  assert collect.comparable_pairs(responses_KxB) == [(0, 0, 1), (1, 0, 2), (2, 1, 2)]


def test_a_collection_stores_every_round_with_its_verdicts(tmp_path):
  with FeedbackStore(tmp_path / "f.db") as store:
    n = collect_into(store)
    comparisons = store.judgements(kind="comparison")
    assert n == len(comparisons) > 0
    assert store.collection_progress("comparisons") == (3, n, n)  # 7 prompts in rounds of 3
    assert {c.labeler for c in comparisons} == {labeler().name}
    for c in comparisons:  # each verdict compares two different samples of one prompt
      a, b = store.sample(c.sample_a), store.sample(c.sample_b)
      assert a.prompt_id == b.prompt_id and a.text != b.text and a.text.strip() and b.text.strip()


def test_an_interrupted_collection_resumes_to_what_an_unbroken_one_stores(tmp_path):
  with FeedbackStore(tmp_path / "unbroken.db") as store:
    collect_into(store)
    unbroken = [(r["prompt"], r["chosen"], r["rejected"]) for r in store.export_preferences()]
  calls = []

  def dies_in_round_two(prompts, key):
    calls.append(1)
    if len(calls) > 4:  # rounds have 3 samples each: the second sample of round 2
      raise KeyboardInterrupt
    return fake_policy(prompts, key)

  with FeedbackStore(tmp_path / "resumed.db") as store:
    with pytest.raises(KeyboardInterrupt):
      collect_into(store, dies_in_round_two)
    assert store.collection_progress("comparisons")[0] == 1  # round 1 whole, nothing of round 2
    prompts_stored = {r["prompt"] for r in store.export_preferences()}
    assert prompts_stored <= set(PROMPTS[:3])
    collect_into(store)
    resumed = [(r["prompt"], r["chosen"], r["rejected"]) for r in store.export_preferences()]
  assert resumed == unbroken


def test_a_round_is_stored_whole_or_not_at_all(tmp_path):
  class Broken:
    name = "broken"

    def skip_comparisons(self, n):
      pass

    def compare(self, a, b):
      return ["a"] * (len(a) - 1) + ["maybe"]  # the last verdict is not an outcome

  with FeedbackStore(tmp_path / "f.db") as store:
    with pytest.raises(FeedbackError, match="outcome of comparison"):
      collect_into(store, who=Broken())
    assert store.collection_progress("comparisons") == (0, 0, 0)
    assert store.export_preferences() == [] and store.judgements() == [] and store.next_pair("alice") is None


def test_without_a_labeler_pairs_wait_for_people(tmp_path):
  with FeedbackStore(tmp_path / "f.db") as store:
    n = collect.store_round(store, ["p", "q"], [[" one", " same"], [" two", " same"]], ["a@1", "b@1"])
    assert n == 1 and store.judgements() == []  # q's responses are identical: no choice
    task = store.next_pair("alice")
    assert {task.a.text, task.b.text} == {" one", " two"}


def test_waiting_for_people_returns_once_enough_verdicts_are_in_and_times_out_otherwise(tmp_path):
  now = [0.0]
  with FeedbackStore(tmp_path / "f.db") as store:
    collect.store_round(store, ["p"], [[" one"], [" two"]], ["a@1", "b@1"])
    task = store.next_pair("alice")

    def person_answers_after_a_while(seconds):
      now[0] += seconds
      if now[0] >= 4 and not store.judgements():
        store.compare(task.a.id, task.b.id, "a", labeler="alice")

    assert collect.wait_for_comparisons(store, 1, timeout_s=60, clock=lambda: now[0],
                                        sleep=person_answers_after_a_while) == 1
    assert now[0] == 4.0  # polled every 2 s
    with pytest.raises(TimeoutError, match="1 of the 2 comparisons awaited after 10 s"):
      collect.wait_for_comparisons(store, 2, timeout_s=10, clock=lambda: now[0], sleep=person_answers_after_a_while)
