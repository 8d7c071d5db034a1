"""The pipeline report (`rlhf_jax.eval.pipeline`) from hand-made stage workdirs: what the quickstart
writes after its stages (the real stages: test_quickstart.py)."""

import json
import math
from pathlib import Path

from rlhf_jax import logs
from rlhf_jax.eval import pipeline


def _workdir(path: Path, records: list[dict]) -> Path:
  path.mkdir(parents=True)
  (path / logs.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def _judge(win_rate: float, n: int) -> dict:
  return {"win_rate": win_rate, "ci_low": win_rate - 0.1, "ci_high": win_rate + 0.1, "n": n}


def _evaluation() -> dict:
  def run(kl):
    return {"kl": kl, "distinct_1": 0.5, "self_bleu": 0.2, "perplexity": 30.0,
            "scores": {"vader": {"mean": kl / 10, "values": [0.0, kl / 5]}, "rm:r": {"mean": -1.0, "values": [-1.0]}}}
  return {"runs": [run(0.0), run(2.0)],
          "head_to_head": [{"vader": _judge(0.25, 16), "people": _judge(math.nan, 0), "pairs_in_store": 16}]}


def test_the_report_reads_every_stage_back(tmp_path, saved_figures):
  lm = _workdir(tmp_path / "lm", [{"step": 10, "split": "eval", "perplexity": 80.0},
                                  {"step": 20, "split": "eval", "perplexity": 60.0}])
  reward = _workdir(tmp_path / "reward", [{"step": 5, "split": "eval", "accuracy_vs_noiseless": 0.7,
                                           "accuracy_vs_labels": 0.65, "label_agreement_with_noiseless": 0.9,
                                           "pairs": 40}])
  ppo_eval = {"kl": 0.0, "gold_score": 0.1, "proxy_score": 0.0, "response_length": 8, "eos_rate": 0.0}
  ppo = _workdir(tmp_path / "ppo", [
      {"step": 0, "split": "eval", **ppo_eval}, {"step": 1, "split": "train", "score": 0.1, "kl": 0.0},
      {"step": 2, "split": "train", "score": 0.3, "kl": 0.5},
      {"step": 2, "split": "eval", **ppo_eval, "kl": 0.6, "gold_score": 0.4, "proxy_score": 0.8}])
  (ppo / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in [
      {"step": 0, "prompt": "A", "completion": "a0"}, {"step": 0, "prompt": "B", "completion": "b0"},
      {"step": 2, "prompt": "A", "completion": "a2"}, {"step": 2, "prompt": "B", "completion": "b2"}]))
  result, text = pipeline.write_report(lm, reward, ppo, _evaluation(), tmp_path)
  assert result["lm"] == {"validation_perplexity": 60.0, "steps": 20}
  assert result["reward_model"]["heldout_accuracy_vs_noiseless_labeler"] == 0.7
  assert result["ppo"] == {"updates": 2, "gold_before": 0.1, "gold_after": 0.4, "proxy_before": 0.0, "proxy_after": 0.8,
                           "kl_after": 0.6, "response_length_after": 8, "eos_rate_after": 0.0}
  assert result["samples"] == [{"prompt": "A", "before": "a0", "after": "a2"}, {"prompt": "B", "before": "b0",
                                                                                  "after": "b2"}]
  assert result["eval"]["runs"][1]["scores"] == {"vader": 0.2, "rm:r": -1.0}  # means, not every value
  assert result["eval"]["head_to_head"][0]["people"]["win_rate"] is None  # JSON has no NaN
  assert json.loads((tmp_path / "report.json").read_text()) == result
  assert (tmp_path / "report.md").read_text() == text
  assert "| PPO, gold (VADER) score | 0.100 -> 0.400 |" in text and "- *A* | before: 'a0' | after: 'a2'" in text
  assert "| PPO | 0.200 | -1.000 | 2.00 | 0.500 | 0.200 | 30.0 |" in text
  assert "- vader: 0.250 (0.150 - 0.350), n = 16" in text and "people" not in text  # nobody judged yet
  # reward_kl.png: PPO's reward and KL over its updates, one panel each, from the records above.
  panels = {ax.get_title(): ax.lines for ax in saved_figures[tmp_path / "reward_kl.png"].axes}
  assert {title: [(list(line.get_xdata()), list(line.get_ydata()), line.get_label()) for line in lines]
          for title, lines in panels.items()} == {
      "train score": [([1, 2], [0.1, 0.3], "PPO")], "train kl": [([1, 2], [0.0, 0.5], "PPO")],
      "eval gold_score": [([0, 2], [0.1, 0.4], "PPO")], "eval kl": [([0, 2], [0.0, 0.6], "PPO")]}
