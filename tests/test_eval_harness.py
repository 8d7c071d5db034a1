"""Evaluation pieces on inputs checked by hand: diversity, win rates with bootstrap intervals, the
head-to-head flow through the feedback store, and loading any run's policy (with clear errors)."""

import json
import shutil

import numpy as np
import pytest

from rlhf_jax import pretrained, sharding
from rlhf_jax.eval import diversity, harness, head_to_head
from rlhf_jax.feedback import labelers
from rlhf_jax.feedback.store import FeedbackStore


def test_distinct_n_by_hand():
  texts = ["a b c", "a b d", ""]
  assert diversity.distinct_n(texts, 1) == pytest.approx(4 / 6)  # a b c a b d: 4 distinct of 6
  assert diversity.distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab bc ab bd
  assert diversity.distinct_n(texts, 3) == pytest.approx(1.0)  # abc abd
  assert diversity.distinct_n(["a"], 2) == 0.0
  with pytest.raises(ValueError, match="n must be"):
    diversity.distinct_n(texts, 0)


def test_self_bleu_is_one_for_copies_and_small_for_unrelated_texts():
  same = ["the cat sat on the mat today"] * 4
  assert diversity.self_bleu(same) == pytest.approx(1.0)
  unrelated = ["alpha beta gamma delta", "one two three four", "red green blue cyan", "x y z w"]
  assert diversity.self_bleu(unrelated) < 0.05
  assert np.isnan(diversity.self_bleu(["only one"]))
  many = [f"w{i} w{i + 1} w{i + 2} w{i + 3}" for i in range(300)]  # subsampled, seeded
  assert diversity.self_bleu(many, seed=1) == diversity.self_bleu(many, seed=1)


def test_win_rate_counts_ties_half_with_a_seeded_bootstrap_interval():
  w = head_to_head.win_rate([1, 1, 0, 0.5], seed=0)
  assert (w["win_rate"], w["n"], w["wins"], w["losses"], w["ties"]) == (0.625, 4, 2, 1, 1)
  assert w["ci_low"] <= 0.625 <= w["ci_high"] and w["ci_high"] - w["ci_low"] > 0.2
  assert head_to_head.win_rate([1, 1, 0, 0.5], seed=0) == w
  big = head_to_head.win_rate([1] * 300 + [0] * 100, seed=0)
  assert big["win_rate"] == 0.75 and big["ci_high"] - big["ci_low"] < 0.1  # ~ 2 x 1.96 x sqrt(.75 .25 / 400)
  assert np.isnan(head_to_head.win_rate([])["win_rate"])
  with pytest.raises(ValueError, match="outcomes"):
    head_to_head.win_rate([2])


def test_scorer_judges_higher_score_wins():
  scorer = labelers.FunctionScorer(lambda texts: [len(t) for t in texts], name="length")
  np.testing.assert_array_equal(head_to_head.scorer_outcomes(scorer, ["aaa", "a", "bb"], ["a", "aaa", "cc"]),
                                [1.0, 0.0, 0.5])


def test_head_to_head_through_the_store_with_a_simulated_labeler(tmp_path):
  """Pairs go into the store, a labeler judges them from the queue in random left/right order
  (as the page shows them), and the win rate read back is the labeler's verdicts."""
  prompts = [f"prompt {i}" for i in range(30)]
  good = [f"good great wonderful {i}" for i in range(30)]
  bad = [f"terrible awful bad {i}" for i in range(30)]
  good[3] = bad[3]  # identical responses are not a choice: left out
  with FeedbackStore(tmp_path / "h2h.db") as store:
    n = head_to_head.push_pairs(store, prompts, good, bad, model_a="runs/a@10", model_b="runs/b@10")
    assert n == 29
    labeler = labelers.SimulatedLabeler(labelers.get_scorer("vader"), beta=float("inf"), seed=0)
    rng = np.random.default_rng(0)
    judged = 0
    while (task := store.next_pair("sim")) is not None:
      a, b = (task.a, task.b) if rng.random() < 0.5 else (task.b, task.a)
      store.compare(a.id, b.id, labeler.compare([a.text], [b.text])[0], labeler="sim")
      judged += 1
    assert judged == 29
    outcomes = head_to_head.store_outcomes(store, model_a="runs/a@10", model_b="runs/b@10")
    assert head_to_head.win_rate(outcomes)["win_rate"] == 1.0 and len(outcomes) == 29
    reverse = head_to_head.store_outcomes(store, model_a="runs/b@10", model_b="runs/a@10")
    assert head_to_head.win_rate(reverse)["win_rate"] == 0.0
    assert len(head_to_head.store_outcomes(store, model_a="runs/a@10", model_b="runs/b@10", labeler="bob")) == 0
    with pytest.raises(ValueError, match="must differ"):
      head_to_head.push_pairs(store, prompts[:1], good[:1], bad[:1], model_a="x", model_b="x")


def test_prompt_sets_are_versioned_and_files_read(tmp_path):
  prompts = harness.load_prompts("wordnet-openings-v1")
  assert len(prompts) > 128 and prompts == harness.load_prompts("wordnet-openings-v1")
  (tmp_path / "p.txt").write_text("first\n\n second \n")
  assert harness.load_prompts(f"file:{tmp_path / 'p.txt'}") == ["first", "second"]
  with pytest.raises(ValueError, match="wordnet-openings-v1"):
    harness.load_prompts("wordnet")
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    harness.load_prompts(f"file:{tmp_path / 'nope.txt'}")


def test_load_trained_policy_errors_name_what_is_missing(smoke_lm, tmp_path):
  mesh = sharding.make_mesh()
  run = pretrained.load_trained_policy(smoke_lm, mesh)
  assert run.step == 5 and "wte" in run.params
  with pytest.raises(FileNotFoundError, match="config.json"):
    pretrained.load_trained_policy(tmp_path, mesh)
  (tmp_path / "config.json").write_text((smoke_lm / "config.json").read_text())
  (tmp_path / "tokenizer.model").write_bytes((smoke_lm / "tokenizer.model").read_bytes())
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    pretrained.load_trained_policy(tmp_path, mesh)
  # A model.json that does not fit the checkpoint: the error names the parameter and the file.
  shutil.copytree(smoke_lm / "checkpoints", tmp_path / "checkpoints")
  model = json.loads((smoke_lm / "config.json").read_text())["model"]
  (tmp_path / "model.json").write_text(json.dumps({**model, "d_model": 2 * model["d_model"]}))
  with pytest.raises(ValueError, match=r"parameter h_0/attn/c_attn/bias is \(192,\), expected \(384,\) .*model\.json"):
    pretrained.load_trained_policy(tmp_path, mesh)
