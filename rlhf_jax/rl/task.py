"""What an RL problem is, apart from how it is solved: prompts, response length, reward, judges.

A `Task` holds train and held-out prompts (texts and their left-padded token arrays), the number
of tokens to sample, the reward the policy is optimized against (on tokens, `rlhf_jax.rewards`)
and the gold judge that evaluation reports (a `scorers.Scorer` of response texts: the taste a
learned reward only approximates). Builders:

- `sentiment_task`: WordNet openings continued by the policy (Ziegler et al. 2019's sentiment
  task, on packaged data), the reward any named reward, the gold a lexicon;
- `prompt_file_task`: a user's prompts, from any dataset `data.records` reads (a prompt-only file,
  or the prompts of a preference or completion dataset), and any reward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rlhf_jax import rewards as rewards_lib
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.data import records
from rlhf_jax.errors import UserError
from rlhf_jax.rewards import scorers


@dataclasses.dataclass(frozen=True)
class Prompts:
  texts: tuple[str, ...]
  tokens_NxP: np.ndarray  # int32, left-padded
  mask_NxP: np.ndarray

  @classmethod
  def encode(cls, tokenizer, texts, length: int) -> "Prompts":
    tokens, mask = prompts_lib.encode_prompts(tokenizer, list(texts), length)
    return cls(texts=tuple(texts), tokens_NxP=tokens, mask_NxP=mask)

  def __len__(self) -> int:
    return len(self.texts)


@dataclasses.dataclass(frozen=True)
class Task:
  train: Prompts
  test: Prompts
  max_new_tokens: int
  reward: Any  # rewards.Reward
  gold: Any = None  # scorers.Scorer of response texts, reported as gold_score; None: no gold
  gold_name: str = "gold"

  @property
  def prompt_len(self) -> int:
    return self.train.tokens_NxP.shape[1]


@dataclasses.dataclass(frozen=True)
class SentimentConfig:
  num_prompts: int = 4096
  prompt_words: int = 4
  prompt_len: int = 8  # tokens; prompts are left-padded or cut to this
  max_new_tokens: int = 24
  test_fraction: float = 0.05  # prompts held out for evaluation (by a hash of the text)
  eval_prompts: int = 128
  reward: str = "vader"  # a lexicon, rm:WORKDIR or py:MODULE:FUNCTION (`rewards.from_spec`)
  reward_with_prompt: bool = False  # the reward reads prompt + response (reward models trained on both)
  gold: str = "vader"  # the labeler whose taste evaluation reports
  # "score": optimize `reward` itself. "consistency" / "correlation": the reward signal of
  # `rewards.signals` (`rewards.SignalReward`) between `reward` as the prediction and
  # `signal_human` (any reward spec; a simulated person, reading the response alone) as the human
  # score of the same samples.
  reward_signal: str = "score"
  signal_human: str = "vader"
  signal_tolerance: float = 0.0  # consistency: |h - s| within it counts 0

  def __post_init__(self):
    for name in ("num_prompts", "prompt_len", "max_new_tokens", "eval_prompts"):
      if getattr(self, name) < 1:
        raise ValueError(f"task.{name} must be >= 1, got {getattr(self, name)}")
    if self.reward_signal not in ("score",) + rewards_lib.SIGNALS:
      raise ValueError(f"task.reward_signal must be one of {('score',) + rewards_lib.SIGNALS}, "
                       f"got {self.reward_signal!r}")

  def smoke(self) -> "SentimentConfig":
    """Fewer prompts and shorter continuations: an experiment's `--smoke` mode."""
    return dataclasses.replace(self, num_prompts=256, max_new_tokens=8, test_fraction=0.1, eval_prompts=16)


def _gold(name: str, reward) -> Any:
  # The same scorer object when the gold is the reward itself: one lexicon loaded, not two.
  scorer = getattr(reward, "scorer", None)
  return scorer if scorer is not None and scorer.name == name else scorers.get_scorer(name)


def sentiment_task(config: SentimentConfig, *, tokenizer, mesh, seed: int) -> Task:
  """WordNet openings (split by a hash of the text), continued for `max_new_tokens` tokens."""
  train, test = prompts_lib.split_prompts(prompts_lib.wordnet_openings(config.num_prompts, config.prompt_words, seed),
                                          config.test_fraction)
  spec = lambda name, with_prompt: rewards_lib.from_spec(  # noqa: E731
      name, tokenizer=tokenizer, mesh=mesh, with_prompt=with_prompt, max_len=config.prompt_len + config.max_new_tokens)
  reward = spec(config.reward, config.reward_with_prompt)
  if config.reward_signal != "score":  # the human reads the response alone, as the gold judge does
    reward = rewards_lib.SignalReward(predicted=reward, human=spec(config.signal_human, False),
                                      kind=config.reward_signal, tolerance=config.signal_tolerance)
  return Task(train=Prompts.encode(tokenizer, train, config.prompt_len),
              test=Prompts.encode(tokenizer, test[:config.eval_prompts], config.prompt_len),
              max_new_tokens=config.max_new_tokens, reward=reward, gold=_gold(config.gold, reward),
              gold_name=config.gold)


@dataclasses.dataclass(frozen=True)
class PromptFileConfig:
  """A user's prompts: any dataset `data.records` reads that has a prompt column (prompt rows, or
  the prompts of preference, completion or rating rows; a .txt file holds a prompt a line)."""
  path: str = ""  # .jsonl / .parquet / .csv / .txt, tfds:NAME[/CONFIG][:SPLIT], hf:ORG/NAME[/CONFIG][:SPLIT]
  format: str = ""  # a `records.KINDS`; "" infers it from the columns
  fields: tuple[str, ...] = ()  # "prompt=question": our column = the file's
  max_rows: int = 0
  prompt_len: int = 8  # tokens; prompts are left-padded or cut (keeping their end) to this
  max_new_tokens: int = 24
  test_fraction: float = 0.1  # prompts held out for evaluation (by a hash of the text)
  eval_prompts: int = 0  # evaluate on at most this many held-out prompts (0: all)
  # The reward, when the experiment does not pass one: a lexicon, rm:WORKDIR or py:MODULE:FUNCTION
  # (`rewards.from_spec`), reading the response (and its prompt with reward_with_prompt).
  reward: str = "vader"
  reward_with_prompt: bool = False
  gold: str = ""  # a scorer of responses that evaluation also reports (gold_score); "" none

  def __post_init__(self):
    records.DataConfig(path=self.path, format=self.format, fields=self.fields, test_fraction=self.test_fraction,
                       max_rows=self.max_rows)  # the same checks
    for name in ("prompt_len", "max_new_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"task.{name} must be >= 1, got {getattr(self, name)}")


def prompt_file_task(config: PromptFileConfig, *, tokenizer, mesh=None, reward=None,
                     dataset: records.Dataset | None = None) -> Task:
  """The prompts of `config.path` (or of `dataset`, already loaded) split by a hash of their
  text, and `reward` (default: the reward `config.reward` names)."""
  if dataset is None:
    dataset = records.load(config.path, kind=config.format, fields=config.fields, max_rows=config.max_rows)
  texts = records.prompts(dataset, tokenizer)
  train, test = prompts_lib.split_prompts(texts, config.test_fraction)
  if not train or not test:
    raise UserError(f"{dataset.source}: {len(train)} train and {len(test)} held-out prompts after the split "
                    f"(task.test_fraction={config.test_fraction}): need at least one of each")
  if reward is None:
    reward = rewards_lib.from_spec(config.reward, tokenizer=tokenizer, mesh=mesh, with_prompt=config.reward_with_prompt,
                                   max_len=config.prompt_len + config.max_new_tokens)
  test = test[:config.eval_prompts] if config.eval_prompts else test
  return Task(train=Prompts.encode(tokenizer, train, config.prompt_len),
              test=Prompts.encode(tokenizer, test, config.prompt_len), max_new_tokens=config.max_new_tokens,
              reward=reward, gold=_gold(config.gold, reward) if config.gold else None,
              gold_name=config.gold or "gold")
