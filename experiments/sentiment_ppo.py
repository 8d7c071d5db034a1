"""PPO fine-tuning of a language model against a reward, judged by a gold labeler (Ziegler et al. 2019).

  rlhf-jax run experiments/sentiment_ppo.py --set policy.init_from=workdirs/lm                 # reward = VADER
  rlhf-jax run experiments/sentiment_ppo.py --set policy.init_from=workdirs/lm \
      --set task.reward=rm:workdirs/rm --set task.reward_with_prompt=true                      # a learned RM
  rlhf-jax run experiments/sentiment_ppo.py --set rl.algorithm=grpo --set pg.kl_in_loss=true   # any algorithm
  rlhf-jax run experiments/sentiment_ppo.py --smoke                                           # < 1 min on CPU

The policy continues WordNet openings ("The children were ..."); the reward is a lexicon
(`vader`, `textblob`, `afinn`), a trained reward model (`rm:WORKDIR`, e.g. from
`reward_simulated.py`, scored on the device) or `py:MODULE:FUNCTION`, normalised on the reference
policy's samples. Held-out prompts measure the gold labeler's score, the proxy reward, KL to the
reference, length and EOS rate (`rlhf_jax.rl`: task, trainer and evaluation).
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
  config = Config()
  return dataclasses.replace(rl.smoke(config), task=config.task.smoke()) if smoke else config


def main(config: Config, workdir: Path):
  mesh, policy, task = rl.start_sentiment(config, workdir, pretrain=functools.partial(
      runs.run_experiment, PRETRAIN, smoke=config.policy.pretrain_smoke))
  return rl.train(config, task, policy, workdir, mesh)
