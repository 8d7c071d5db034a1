"""Offline ILQL on the sentiment task: Q-learning on the starting policy's own scored samples.

  rlhf-jax run experiments/ilql_sentiment.py --set policy.init_from=workdirs/lm
  rlhf-jax run experiments/ilql_sentiment.py --set policy.init_from=workdirs/lm --set ilql.beta=8
  rlhf-jax run experiments/ilql_sentiment.py --smoke                                    # < 1 min on CPU

Same prompts (WordNet openings), reference (the starting LM), reward and gold (VADER) and
evaluation as `sentiment_ppo.py` and `dpo_sentiment.py`, so the three trace comparable gold-reward/KL
points. The data are fixed: `ilql.num_samples` continuations of the train prompts sampled once from
the starting policy and scored by the normalized reward (`<workdir>/offline.npz`); the policy is
the LM plus ILQL's Q and V heads, decoded with log pi_beta + beta (min(Q1, Q2) - V) at
`ilql.temperature` (`rl.train_offline_ilql`). `ilql.beta` sets how far decoding leaves the data's
policy; it changes no shape, so a sweep can vary it without recompiling the step. The settings
below are a starting point, not tuned: gamma 1 (one reward, at the end) and faster target heads
than ILQL's 0.005, for a few hundred updates rather than the paper's many thousands.
"""

import dataclasses
import functools
from pathlib import Path

from rlhf_jax import rl, runs
from rlhf_jax.loop import LoopConfig
from rlhf_jax.steps import common, ilql

PRETRAIN = Path(__file__).with_name("pretrain_tiny.py")  # the policy when policy.init_from is empty


@dataclasses.dataclass(frozen=True)
class Config(rl.Config):
  task: rl.SentimentConfig = rl.SentimentConfig()


def get_config(smoke: bool = False) -> Config:
  config = Config(rl=rl.RLConfig(batch_size=32), ilql=ilql.ILQLConfig(gamma=1.0, polyak=0.05, num_samples=4096),
                  optim=common.OptimConfig(learning_rate=1e-4, warmup_steps=10, weight_decay=0.0, min_lr_ratio=1.0),
                  loop=LoopConfig(steps=500, log_every=10, eval_every=100, checkpoint_every=100))
  return dataclasses.replace(rl.smoke(config), task=config.task.smoke()) if smoke else config


def main(config: Config, workdir: Path):
  mesh, policy, task = rl.start_sentiment(config, workdir, pretrain=functools.partial(
      runs.run_experiment, PRETRAIN, smoke=config.policy.pretrain_smoke))
  return rl.train_offline_ilql(config, task, policy, workdir, mesh)
