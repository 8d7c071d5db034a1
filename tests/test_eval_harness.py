"""Evaluation pieces on inputs checked by hand: diversity, win rates with bootstrap intervals, the
head-to-head flow through the feedback store. (Loading a run's model: test_trained.py.)"""

from pathlib import Path

import numpy as np
import pytest

from rlhf_jax.eval import diversity, harness, head_to_head
from rlhf_jax.feedback import labelers
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.rewards import scorers


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
  # The mean of 4 draws of (1, 1, 0, 0.5) is <= 0.125 with probability 5/256 (2.0%) and <= 0.25 with
  # 19/256 (7.4%); it is 1 with 16/256 (6.25%): the 2.5% and 97.5% quantiles are 0.25 and 1.
  assert (w["ci_low"], w["ci_high"]) == (0.25, 1.0)
  assert head_to_head.win_rate([1, 1, 0, 0.5], seed=0) == w
  big = head_to_head.win_rate([1] * 300 + [0] * 100, seed=0)
  # Many judgements: the normal interval 0.75 -/+ 1.96 sqrt(0.75 x 0.25 / 400) = 0.75 -/+ 0.0424.
  assert big["win_rate"] == 0.75 and (big["ci_low"], big["ci_high"]) == (pytest.approx(0.7076, abs=2e-3),
                                                                         pytest.approx(0.7924, abs=2e-3))
  assert np.isnan(head_to_head.win_rate([])["win_rate"])
  with pytest.raises(ValueError, match="outcomes"):
    head_to_head.win_rate([2])


def test_scorer_judges_higher_score_wins():
  scorer = scorers.FunctionScorer(lambda texts: [len(t) for t in texts], name="length")
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
    labeler = labelers.SimulatedLabeler(scorers.get_scorer("vader"), beta=float("inf"), seed=0)
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


def test_plot_draws_each_runs_scores_and_mean_score_against_kl(tmp_path, saved_figures):
  def run(name, kl, vader, afinn):
    return {"run": f"runs/{name}", "step": 4, "kl": kl, "scores": {"vader": {"mean": np.mean(vader), "values": vader},
                                                                   "afinn": {"mean": np.mean(afinn), "values": afinn}}}
  report = {"runs": [run("lm", 0.0, [-1.0, 0.05, 0.05, 1.0], [0, 1, 2, 3]),
                     run("ppo", 2.5, [0.55, 0.55, 0.95, 0.95], [3, 3, 3, 3])]}
  harness.plot(report, tmp_path / "eval.png")
  vader, afinn, frontier = saved_figures[tmp_path / "eval.png"].axes
  assert vader.get_legend_handles_labels()[1] == ["lm@4", "ppo@4"]

  def counts(ax):  # per run, the samples in each non-empty bin
    return [{i: bar.get_height() for i, bar in enumerate(bars) if bar.get_height()} for bars in ax.containers]
  # 20 bins shared by both runs, between the smallest and the largest score: width 0.1 for vader
  # (-1 to 1), 0.15 for afinn (0 to 3); the largest score falls in the last bin.
  assert counts(vader) == [{0: 1, 10: 2, 19: 1}, {15: 2, 19: 2}]
  assert counts(afinn) == [{0: 1, 6: 1, 13: 1, 19: 1}, {19: 4}]
  assert vader.containers[0][0].get_x() == -1.0 and vader.containers[0][0].get_width() == pytest.approx(0.1)
  # The first scorer's mean against the KL, one point per run.
  np.testing.assert_allclose([c.get_offsets()[0] for c in frontier.collections], [[0.0, 0.025], [2.5, 0.75]])
  assert [len(c.get_offsets()) for c in frontier.collections] == [1, 1]


def test_prompt_sets_are_versioned_and_files_read(tmp_path):
  prompts = harness.load_prompts("wordnet-openings-v1")
  assert len(prompts) > 128 and prompts == harness.load_prompts("wordnet-openings-v1")
  (tmp_path / "p.txt").write_text("first\n\n second \n")
  assert harness.load_prompts(f"file:{tmp_path / 'p.txt'}") == ["first", " second "]  # lines as they are
  # Any prompt dataset: here the distinct prompts of preference rows, conversations rendered.
  from rlhf_jax.data import records
  from rlhf_jax.tokenizers import HFTokenizer
  chat = [{"role": "user", "content": "Sky?"}]
  records.write([{"prompt": chat, "chosen": [{"role": "assistant", "content": "Blue."}],
                  "rejected": [{"role": "assistant", "content": "Red."}]}] * 2, tmp_path / "prefs.jsonl")
  tok = HFTokenizer(Path(__file__).parent / "data" / "tiny_hf" / "qwen2")
  assert harness.load_prompts(str(tmp_path / "prefs.jsonl"), tok) == [
      tok.apply_chat_template(chat, add_generation_prompt=True)]
  with pytest.raises(ValueError, match="wordnet-openings-v1"):
    harness.load_prompts("wordnet")
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    harness.load_prompts(f"file:{tmp_path / 'nope.txt'}")
