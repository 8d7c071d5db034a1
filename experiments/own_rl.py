"""Your own RL run: prompts from a file, a reward written in Python, any algorithm of the trainer.

  rlhf-jax run experiments/own_rl.py --set policy.init_from=workdirs/lm --set task.path=my_prompts.jsonl \
      --set rl.algorithm=grpo                                  # PPO by default; any rl.algorithm
  rlhf-jax run experiments/own_rl.py --smoke                   # pretrains a tiny LM first; < 1 min on CPU
"""

import dataclasses
import functools
from pathlib import Path

from rlhf_jax import rewards, rl, runs, sharding

HERE = Path(__file__).parent  # the example prompts and the tiny LM pretrained when policy.init_from is empty


def reward(texts: list[str]) -> list[float]:
  """Yours goes here (texts -> scores, higher is better): this one counts cheerful words."""
  cheerful = {"good", "great", "love", "happy", "best", "beautiful", "wonderful", "nice", "fine", "glad"}
  return [float(sum(w.strip(".,;:!?").lower() in cheerful for w in t.split())) for t in texts]


@dataclasses.dataclass(frozen=True)
class Config(rl.Config):
  # Your prompts: a prompt per line, or JSONL with a "prompt" field (e.g. TRL's prompt-only files).
  task: rl.PromptFileConfig = rl.PromptFileConfig(path=str(HERE / "data" / "prompts.txt"), test_fraction=0.25)


def get_config(smoke: bool = False) -> Config:
  config = Config(rl=rl.RLConfig(eval_batch_size=16))
  return rl.smoke(config) if smoke else config


def main(config: Config, workdir: Path):
  mesh = sharding.make_mesh(config.mesh)
  policy = rl.start_policy(config.policy, workdir, mesh, pretrain=functools.partial(
      runs.run_experiment, HERE / "pretrain_tiny.py", smoke=config.policy.pretrain_smoke))
  on_tokens = rewards.from_texts(reward, policy.tokenizer)  # the Python function, called on decoded samples
  task = rl.prompt_file_task(config.task, tokenizer=policy.tokenizer, reward=on_tokens)
  return rl.train(config, task, policy, workdir, mesh)
