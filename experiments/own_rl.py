"""Your own RL run: prompts from a file, a reward written in Python, any algorithm of the trainer.

  rlhf-jax run experiments/own_rl.py --set policy.init_from=workdirs/lm --set task.path=my_prompts.jsonl \
      --set rl.algorithm=grpo                                  # PPO by default; any rl.algorithm
  rlhf-jax run experiments/own_rl.py --smoke                   # pretrains a tiny LM first; < 1 min on CPU
"""

import dataclasses
import functools
from pathlib import Path

from rlhf_jax import rl, runs

HERE = Path(__file__).parent  # the example prompts and the tiny LM pretrained when policy.init_from is empty


def reward(texts: list[str]) -> list[float]:
  """Yours goes here (texts -> scores, higher is better): this one counts cheerful words."""
  cheerful = {"good", "great", "love", "happy", "best", "beautiful", "wonderful", "nice", "fine", "glad"}
  return [float(sum(w.strip(".,;:!?").lower() in cheerful for w in t.split())) for t in texts]


def get_config(smoke: bool = False) -> rl.PromptsConfig:
  # Your prompts: any prompt dataset (a prompt a line in .txt, TRL's prompt-only JSONL, ...).
  config = rl.prompts_config("ppo", path=str(HERE / "data" / "prompts.txt"), smoke_mode=smoke)
  config = dataclasses.replace(config, rl=dataclasses.replace(config.rl, eval_batch_size=16),
                               task=dataclasses.replace(config.task, prompt_len=8, test_fraction=0.25))
  return config


def main(config: rl.PromptsConfig, workdir: Path):
  return rl.train_on_prompts(config, workdir, reward_fn=reward, pretrain=functools.partial(
      runs.run_experiment, HERE / "pretrain_tiny.py", smoke=config.policy.pretrain_smoke))
