"""Question answering from experts' rubric scores (experiments/qa_experts.py and its pieces): the
judging of answers by hand, and the whole pipeline in --smoke mode from a Hugging Face folder."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax import logs, runs
from rlhf_jax.data import records
from rlhf_jax.feedback.rubric import SimulatedExpert
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.rewards import scorers
from rlhf_jax.rl import qa

ROOT = Path(__file__).resolve().parents[1]


def test_best_of_n_takes_each_questions_highest_reward_and_its_kl_bound():
  pool = qa.Pool(texts=[["a", "b", "c"], ["d", "e", "f"]], reward_PxN=np.array([[0.1, 0.9, 0.5], [2.0, 2.0, -1.0]]),
                 kl_PxN=np.ones((2, 3)), length_PxN=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
  best = pool.best_by_reward()
  assert best.texts == [["b"], ["d"]]  # a tie goes to the first
  np.testing.assert_array_equal(best.reward_PxN[:, 0], [0.9, 2.0])
  np.testing.assert_array_equal(best.length_PxN[:, 0], [2.0, 4.0])
  np.testing.assert_allclose(best.kl_PxN, math.log(3) - 2 / 3)
  assert pool.first().texts == [["a"], ["d"]]


def test_judge_reports_accuracy_and_each_criterions_noiseless_score_by_hand():
  expert = SimulatedExpert(fluency_logp=lambda p, a: np.array([-1.0, -6.0]), noise=3.0, bias={"accuracy": 2.0})
  pool = qa.Pool(texts=[[" A canine."], [" a cat"]], reward_PxN=np.array([[1.0], [3.0]]), kl_PxN=np.array([[0.5], [1.5]]),
                 length_PxN=np.array([[3.0], [2.0]]))
  out = qa.judge(["Question: What kind of thing is a dog?\nAnswer:"] * 2, pool, [["canine", "domestic animal"]] * 2,
                 expert)
  # Right (5) and wrong (2); fluency -1 nats -> 5, -6 -> 1; satisfaction 0.6 acc + 0.25 flu + 0.15 brevity (5: short).
  # Noise and bias are the expert's, not the signal's: judging reads the signal.
  assert out == pytest.approx({"accuracy": 0.5, "accuracy_score": 3.5, "fluency_score": 3.0,
                               "satisfaction_score": (0.6 * 5 + 0.25 * 5 + 0.75 + 0.6 * 2 + 0.25 * 1 + 0.75) / 2,
                               "reward": 2.0, "kl": 1.0, "length": 2.5})
  table = qa.summary([{"sft": out}, {"sft": {**out, "accuracy": 0.7}}])
  assert table["sft"]["accuracy"] == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1)))
  assert "| sft | 0.600 ± 0.141 | 3.50 ± 0.00 |" in qa.markdown(table, runs=2)


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, cache_dir):
  workdir = tmp_path_factory.mktemp("qa")
  result = runs.run_experiment(ROOT / "experiments" / "qa_experts.py", smoke=True, workdir=workdir,
                               overrides=[f"init_from={ROOT / 'tests' / 'data' / 'tiny_hf' / 'qwen2'}"])
  return workdir, result


@pytest.mark.network
def test_qa_experts_smoke_scores_trains_every_method_and_judges_them_on_held_out_questions(qa_run):
  workdir, result = qa_run
  assert list(result) == ["sft", "best-of-2", "ppo", "grpo", "ilql"]
  assert json.loads((workdir / "qa_eval.json").read_text()) == result
  report = (workdir / "report.md").read_text()
  assert "| best-of-2 |" in report
  # The reward model's held-out agreement with the experts, per criterion, is in the report.
  agreement = qa.agreement(logs.read_metrics(workdir / "reward", "eval")[-1])
  assert set(agreement) == {"accuracy", "fluency", "satisfaction"}
  assert f"| fluency | {agreement['fluency']['correlation']:.2f} | {agreement['fluency']['accuracy']:.2f} |" in report
  # The experts scored every stored answer, each on every criterion; the ratings are their weighted means.
  with FeedbackStore(workdir / "scores" / "feedback.db") as store:
    judgements = store.export_scores()
  assert {j["labeler"] for j in judgements} == {"expert0", "expert1"}
  assert all(set(j["scores"]) == {"accuracy", "fluency", "satisfaction"} for j in judgements)
  answers = {(j["prompt"], j["response"]) for j in judgements}
  assert len(judgements) == 2 * len(answers)
  ratings = records.load(str(workdir / "scores" / "ratings.jsonl"), kind="rating").rows
  assert len(ratings) == len(answers)
  row = ratings[0]
  mine = [j["scores"] for j in judgements if (j["prompt"], j["response"]) == (row["prompt"], row["completion"])]
  weights = {"accuracy": 0.5, "fluency": 0.2, "satisfaction": 0.3}
  assert row["rating"] == pytest.approx(sum(w * np.mean([s[c] for s in mine]) for c, w in weights.items()))
  # The reward model combines its criterion heads with those weights.
  rubric = json.loads((workdir / "reward" / "rubric.json").read_text())
  assert dict(zip(rubric["criteria"], rubric["weights"])) == pytest.approx(weights)
  # Best-of-n is the reward model's pick: at least the first sample's reward, KL the bound.
  assert result["best-of-2"]["reward"] > result["sft"]["reward"]
  assert result["best-of-2"]["kl"] == pytest.approx(math.log(2) - 0.5)
  assert result["sft"]["kl"] == 0.0 and result["ppo"]["kl"] != 0.0
  # The RL stages were judged along the way by the QA gold (accuracy on their held-out prompts).
  for stage in ("ppo", "grpo", "ilql"):
    evals = logs.read_metrics(workdir / stage, "eval")
    assert evals and all(0.0 <= e["gold_score"] <= 1.0 for e in evals), stage


@pytest.mark.network
def test_the_qa_gold_reads_the_question_to_judge_the_answer(cache_dir):
  gold = scorers.get_scorer("wordnet-qa")
  question = records.load("wordnet-qa-v1:test", max_rows=1).rows[0]
  right, wrong = f" {question['answers'][0]}.", " zzzz."
  assert scorers.score_as_judge(gold, [question["prompt"]] * 2, [right, wrong]).tolist() == [1.0, 0.0]
  with pytest.raises(ValueError, match="not a wordnet-qa-v1 question"):
    gold.score(["What is this?" + right])
