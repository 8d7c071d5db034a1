"""Train a reward model on real human ratings: Amazon fine-food reviews (great vs other).

  rlhf-jax run experiments/pretrain_tiny.py --workdir workdirs/lm          # a pretrained trunk
  rlhf-jax run experiments/reward_fine_foods.py --set reward.init_from=workdirs/lm
  rlhf-jax run experiments/reward_fine_foods.py --smoke                  # < 1 min, random init
  rlhf-jax run experiments/reward_fine_foods.py --set reward.kind=preference --set reward.init_from=...

The 4,000 training reviews (10 products) carry real star ratings binarized to great/other
(Debian `r-cran-modeldata`, see shared/DATA.md). `reward.kind=rating` trains the scalar head as
the logit of "great"; `reward.kind=preference` trains Bradley-Terry on same-product great-vs-other
pairs. Either way the model is evaluated on the 1,000 test reviews of 1,000 other products by ROC
AUC of its reward against the human label, next to the lexicon labelers VADER and TextBlob on the
same reviews. `reward.init_from` is the workdir of a language-model run whose trunk and tokenizer
the reward model starts from; empty means a tokenizer trained on the reviews and random weights.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

import jax
import numpy as np
from tqdm import tqdm

from rlhf_jax import sharding
from rlhf_jax.data import fine_foods, rows
from rlhf_jax.eval import reward_metrics
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import ModelConfig
from rlhf_jax.rewards import reward_model, scorers
from rlhf_jax.steps import common, reward


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  init_from: str = ""  # workdir of an LM run; "" = tokenizer trained on the reviews, random weights
  kind: Literal["rating", "preference"] = "rating"
  seq_len: int = 128  # reviews are cut to their first seq_len tokens
  batch_size: int = 32
  eval_batch_size: int = 64
  baselines: tuple[str, ...] = ("vader", "textblob")  # lexicon labelers scored on the same test set
  lora: lora.LoraConfig = lora.LoraConfig()  # rank > 0 (with init_from): train LoRA adapters and the head only


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  reward: RewardConfig = RewardConfig()
  model: ModelConfig = ModelConfig()  # used only without reward.init_from
  optim: common.OptimConfig = common.OptimConfig()
  loop: LoopConfig = LoopConfig()
  mesh: sharding.MeshConfig = sharding.MeshConfig()


def get_config(smoke: bool = False) -> Config:
  config = Config(
      reward=RewardConfig(),
      model=ModelConfig(vocab_size=2048, max_len=128, d_model=128, n_layers=4, n_heads=4),
      optim=common.OptimConfig(learning_rate=3e-4, warmup_steps=50, weight_decay=0.1),
      loop=LoopConfig(steps=500, log_every=20, eval_every=100, checkpoint_every=250),
  )
  if smoke:
    config = dataclasses.replace(
        config,
        reward=dataclasses.replace(config.reward, seq_len=32, batch_size=16),
        model=ModelConfig(vocab_size=512, max_len=32, d_model=32, n_layers=1, n_heads=2),
        optim=dataclasses.replace(config.optim, learning_rate=1e-3, warmup_steps=5),
        loop=LoopConfig(steps=40, log_every=10, eval_every=0, checkpoint_every=20, progress=False),
    )
  return config


def _tokenize(tokenizer, texts: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  return rows.pad_rows(tokenizer.encode_batch(texts), seq_len, tokenizer.pad_id)


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  reward_cfg = config.reward
  mesh = sharding.make_mesh(config.mesh)
  for name, size in [("reward.batch_size", reward_cfg.batch_size),
                     ("reward.eval_batch_size", reward_cfg.eval_batch_size)]:
    sharding.check_batch_divisible(size, mesh, name)
  train_reviews, test_reviews = fine_foods.load("train"), fine_foods.load("test")

  key = jax.random.key(config.seed)
  start = reward_model.start_scalar_model(workdir, init_from=reward_cfg.init_from, fallback=config.model,
                                          texts=[r.text for r in train_reviews], mesh=mesh, optim=config.optim,
                                          key=jax.random.fold_in(key, 0), rules=config.mesh.rules,
                                          adapters=reward_cfg.lora)
  tokenizer, model, init_fn = start.tokenizer, start.model, start.init_fn
  if reward_cfg.seq_len > model.config.max_len:
    raise ValueError(f"reward.seq_len={reward_cfg.seq_len} exceeds the model's max_len={model.config.max_len}")

  if reward_cfg.kind == "rating":
    tokens, mask = _tokenize(tokenizer, [r.text for r in train_reviews], reward_cfg.seq_len)
    train_arrays = {"tokens": tokens, "mask": mask, "label": np.array([r.great for r in train_reviews], np.int32)}
  else:
    pairs = fine_foods.preference_pairs("train", seed=config.seed)
    chosen, chosen_mask = _tokenize(tokenizer, [p["chosen"] for p in pairs], reward_cfg.seq_len)
    rejected, rejected_mask = _tokenize(tokenizer, [p["rejected"] for p in pairs], reward_cfg.seq_len)
    train_arrays = {"chosen": chosen, "chosen_mask": chosen_mask, "rejected": rejected,
                    "rejected_mask": rejected_mask}
  dataset = rows.rows_dataset(train_arrays, reward_cfg.batch_size // jax.process_count(), seed=config.seed,
                              shard_index=jax.process_index(), shard_count=jax.process_count())

  test_tokens, test_mask = _tokenize(tokenizer, [r.text for r in test_reviews], reward_cfg.seq_len)
  test_labels = np.array([r.great for r in test_reviews], np.int32)
  score_fn = jax.jit(functools.partial(reward.rewards, model=model))
  baselines = {f"{name}_auc": reward_metrics.roc_auc(scorers.get_scorer(name).score([r.text for r in test_reviews]),
                                                     test_labels) for name in reward_cfg.baselines}

  def test_scores(params) -> np.ndarray:
    return reward_metrics.score_all(score_fn, params, test_tokens, test_mask, reward_cfg.eval_batch_size, mesh)

  def evaluate(state) -> dict[str, float]:
    scores = test_scores(state.params)
    # The rating model's P(great) = sigmoid(reward); calibration says whether to trust it as such.
    cal = reward_metrics.calibration(1 / (1 + np.exp(-scores.astype(np.float64))), test_labels)
    metrics = {"auc": reward_metrics.roc_auc(scores, test_labels),
               "accuracy": float(np.mean((scores > 0) == test_labels)),
               "ece": cal["ece"], "brier": cal["brier"],
               "reward_mean": float(scores.mean()), "reward_std": float(scores.std()), **baselines}
    tqdm.write(f"step {int(state.step)}: test ROC AUC {metrics['auc']:.3f} ("
               + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()) + ")")
    return metrics

  step_fn = common.jit_step(functools.partial(
      reward.train_step, model=model, tx=start.tx, kind=reward_cfg.kind, warmup_steps=config.optim.warmup_steps,
      total_steps=config.loop.steps, min_lr_ratio=config.optim.min_lr_ratio), mesh, start.state_shardings)
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=init_fn,
                    state_shardings=start.state_shardings, step_fn=step_fn, data_iterator=iter(dataset),
                    hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=reward_cfg.batch_size * reward_cfg.seq_len, evaluate=evaluate)
