"""Critic-free policy gradients (REINFORCE, RLOO, GRPO, ReMax) on the sentiment task.

  rlhf-jax run experiments/sentiment_pg.py --set policy.init_from=workdirs/lm                 # RLOO, K = 4
  rlhf-jax run experiments/sentiment_pg.py --set policy.init_from=workdirs/lm --set rl.algorithm=grpo \
      --set pg.kl_in_loss=true
  rlhf-jax run experiments/sentiment_pg.py --smoke                                           # < 1 min on CPU

The task, reference, reward normalization, gold labeler and evaluation are sentiment_ppo's (both
are `rlhf_jax.rl` on `rl.sentiment_task`), so the two trace comparable gold-reward/KL points;
`rl.batch_size` responses per iteration are `pg.group_size` samples of each of
batch_size / group_size prompts. ReMax also decodes each prompt greedily for its baseline. No
value model is trained.
"""

import dataclasses
import functools
from pathlib import Path

from rlhf_jax import rl, runs

PRETRAIN = Path(__file__).with_name("pretrain_tiny.py")  # the policy when policy.init_from is empty


@dataclasses.dataclass(frozen=True)
class Config(rl.Config):
  task: rl.SentimentConfig = rl.SentimentConfig()


def get_config(smoke: bool = False) -> Config:
  config = Config(rl=rl.RLConfig(algorithm="rloo"))
  return dataclasses.replace(rl.smoke(config), task=config.task.smoke()) if smoke else config


def main(config: Config, workdir: Path):
  mesh, policy, task = rl.start_sentiment(config, workdir, pretrain=functools.partial(
      runs.run_experiment, PRETRAIN, smoke=config.policy.pretrain_smoke))
  return rl.train(config, task, policy, workdir, mesh)
