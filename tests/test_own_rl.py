"""experiments/own_rl.py: a user's prompt file and Python reward on the trainer, in --smoke mode."""

import json
from pathlib import Path

import pytest

from rlhf_jax import logs, runs

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "own_rl.py"


@pytest.mark.network
def test_own_rl_trains_on_a_jsonl_prompt_file_with_a_python_reward(smoke_lm, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"Prompt number {i} was"}) + "\n" for i in range(80)))
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path / "run", overrides=[
      f"policy.init_from={smoke_lm}", f"task.path={prompts}", "rl.algorithm=grpo", "loop.steps=2",
      "loop.eval_every=0"])
  train = logs.read_metrics(tmp_path / "run", "train")
  assert [r["step"] for r in train] == [1, 2] and all("score_raw" in r for r in train)
  evals = logs.read_metrics(tmp_path / "run", "eval")
  assert [r["step"] for r in evals] == [0, 2] and "reward_raw" in evals[-1] and "gold_score" not in evals[-1]
  assert (tmp_path / "run" / "done.json").is_file()


def test_prompt_files_are_read_or_rejected_naming_the_row(tmp_path):
  from rlhf_jax.data import records
  from rlhf_jax.errors import UserError
  text = tmp_path / "p.txt"
  text.write_text("first prompt\n\nsecond prompt\n")
  assert records.prompts(records.load(text), tokenizer=None) == ["first prompt", "second prompt"]
  bad = tmp_path / "p.jsonl"
  bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
  with pytest.raises(UserError, match=r"p.jsonl: row 1: no field 'prompt'"):
    records.load(bad)
  with pytest.raises(FileNotFoundError, match="no such file"):
    records.load(tmp_path / "missing.txt")
