"""Train a reward model on your preference pairs or ratings, from a trained LM or a Hugging Face folder.

  rlhf-jax run experiments/reward_model.py --set init_from=runs/sft --set data.path=prefs.jsonl
  rlhf-jax run experiments/reward_model.py --set init_from=... --set data.path=ratings.parquet --set reward.rating_loss=regression
  rlhf-jax run experiments/reward_model.py --smoke --set init_from=tests/data/tiny_hf/qwen2 \
      --set data.path=experiments/data/reviews_preferences.jsonl                  # < 1 min on CPU

`data.path` holds preference rows (`prompt`, `chosen`, `rejected`: Bradley-Terry on the pair) or
rating rows (`prompt`, `completion`, `rating`: an ordered logit over the levels 1..
`reward.num_levels`, or squared error with `reward.rating_loss=regression`), plain or
conversational, in any of `data.records`' sources; or `store:FEEDBACK.db`, whose rubric
judgements train one head per criterion (an ordered logit each; `reward.weights` combine them
into the run's one reward, written to `rubric.json`), and evaluation reports each criterion's
held-out correlation with the scores and exact-level accuracy. The model is the LM's trunk with a new scalar
head (`reward.lora.rank`: LoRA adapters and the head train, the trunk stays frozen). A row is
prompt + response cut to `reward.seq_len` tokens. Rows whose prompt hashes into
`data.test_fraction` are held out: preference runs report the held-out pairwise accuracy (and
calibration), rating runs the correlation with the ratings and the accuracy on pairs of
different ratings. The run is a reward model that `rm:WORKDIR` names everywhere a reward is asked.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from rlhf_jax import losses, sharding, trained
from rlhf_jax.data import preferences, records, rows
from rlhf_jax.errors import UserError
from rlhf_jax.eval import reward_metrics
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models import lora
from rlhf_jax.rewards import reward_model
from rlhf_jax.steps import common, reward


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  seq_len: int = 256  # prompt + response tokens
  batch_size: int = 16  # pairs or rated rows a step
  eval_batch_size: int = 32
  rating_loss: Literal["ordinal", "regression"] = "ordinal"
  num_levels: int = 5  # ordinal: ratings are 1..num_levels
  # Rubric scores: "CRITERION=WEIGHT" of the one reward (criteria not named weigh 0; none: equal weights).
  weights: tuple[str, ...] = ()
  lora: lora.LoraConfig = lora.LoraConfig()  # rank > 0: train adapters and the head only

  def __post_init__(self):
    if self.rating_loss not in ("ordinal", "regression"):
      raise ValueError(f"reward.rating_loss must be 'ordinal' or 'regression', got {self.rating_loss!r}")


@dataclasses.dataclass(frozen=True)
class Config:
  init_from: str = ""  # the trunk and tokenizer: an LM run or a Hugging Face folder
  seed: int = 0
  data: records.DataConfig = records.DataConfig(test_fraction=0.1)
  reward: RewardConfig = RewardConfig()
  optim: common.OptimConfig = common.OptimConfig(learning_rate=1e-5, warmup_steps=20, weight_decay=0.0)
  loop: LoopConfig = LoopConfig(steps=500, log_every=10, eval_every=100, checkpoint_every=100)
  mesh: sharding.MeshConfig = sharding.MeshConfig()


def get_config(smoke: bool = False) -> Config:
  config = Config()
  if smoke:
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, test_fraction=0.2),
        reward=dataclasses.replace(config.reward, seq_len=64, batch_size=8, eval_batch_size=16),
        optim=dataclasses.replace(config.optim, learning_rate=1e-3, warmup_steps=2),
        loop=LoopConfig(steps=16, log_every=4, eval_every=8, checkpoint_every=8, progress=False))
  return config


def rating_arrays(rows_: list[dict], tokenizer, config: RewardConfig, source: str) -> dict[str, np.ndarray]:
  """Tokens of prompt + completion and each row's label: the level 0..N-1 (ordinal) or the rating."""
  tokens, mask = rows.pad_rows(tokenizer.encode_batch([r["prompt"] + r["completion"] for r in rows_]),
                               config.seq_len, tokenizer.pad_id)
  ratings = np.array([r["rating"] for r in rows_], np.float64)
  if config.rating_loss == "regression":
    return {"tokens": tokens, "mask": mask, "label": ratings.astype(np.float32)}
  levels = np.rint(ratings).astype(np.int64) - 1
  bad = np.flatnonzero((levels < 0) | (levels >= config.num_levels) | (np.abs(ratings - np.rint(ratings)) > 1e-6))
  if bad.size:
    raise UserError(f"{source}: rating {ratings[bad[0]]:g} is not an integer in 1..{config.num_levels} "
                    f"(reward.num_levels); use reward.rating_loss=regression for other scales")
  return {"tokens": tokens, "mask": mask, "label": levels.astype(np.int32)}


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  rc = config.reward
  if not config.init_from:
    raise UserError("init_from is empty: name the LM whose trunk the reward model starts from (a run or a Hugging "
                    "Face folder)")
  mesh = sharding.make_mesh(config.mesh)
  for name, size in (("reward.batch_size", rc.batch_size), ("reward.eval_batch_size", rc.eval_batch_size)):
    sharding.check_batch_divisible(size, mesh, name)
  if config.data.path.startswith("store:"):
    return _train_rubric(config, workdir, mesh)
  dataset = records.from_config(config.data)
  if dataset.kind not in ("preference", "rating"):
    raise UserError(f"{dataset.source}: a reward model trains on preference or rating rows, not {dataset.kind}")
  key = jax.random.key(config.seed)
  start = reward_model.start_scalar_model(workdir, init_from=config.init_from, fallback=None, texts=[], mesh=mesh,
                                          optim=config.optim, key=jax.random.fold_in(key, 0),
                                          rules=config.mesh.rules, adapters=rc.lora)
  if rc.seq_len > start.model.config.max_len:
    raise UserError(f"reward.seq_len={rc.seq_len} exceeds the model's max_len={start.model.config.max_len}")
  tok = start.tokenizer
  train, test = records.split(records.as_text(dataset, tok), config.data.test_fraction)
  if len(train) < rc.batch_size or not test:
    raise UserError(f"{dataset.source}: {len(train)} train and {len(test)} held-out rows; need at least "
                    f"reward.batch_size={rc.batch_size} to train and one to hold out (data.test_fraction)")
  tqdm.write(f"{dataset.kind} rows: {len(train)} train, {len(test)} held out")
  if dataset.kind == "preference":
    kind = "preference"
    train_arrays = preferences.reward_model_pairs(train, tok, rc.seq_len)
    test_arrays = preferences.reward_model_pairs(test, tok, rc.seq_len)
  else:
    kind = rc.rating_loss
    train_arrays = rating_arrays(train, tok, rc, dataset.source)
    test_arrays = rating_arrays(test, tok, rc, dataset.source)
  data = rows.rows_dataset(train_arrays, rc.batch_size // jax.process_count(), seed=config.seed,
                           shard_index=jax.process_index(), shard_count=jax.process_count())
  if kind == "preference":
    evaluate = _preference_evaluator(start.model, test_arrays, rc.eval_batch_size, mesh)
  else:
    evaluate = _rating_evaluator(start.model, test_arrays, [r["rating"] for r in test], rc.eval_batch_size, mesh)
  step_fn = common.jit_step(functools.partial(
      reward.train_step, model=start.model, tx=start.tx, kind=kind, num_levels=rc.num_levels,
      warmup_steps=config.optim.warmup_steps, total_steps=config.loop.steps, min_lr_ratio=config.optim.min_lr_ratio),
      mesh, start.state_shardings)
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=start.init_fn,
                    state_shardings=start.state_shardings, step_fn=step_fn, data_iterator=iter(data),
                    hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=rc.batch_size * rc.seq_len * (2 if kind == "preference" else 1),
                    evaluate=evaluate)


def _preference_evaluator(model, arrays, batch_size, mesh):
  pair_fn = jax.jit(functools.partial(reward.pair_rewards, model=model))
  batches = rows.eval_row_batches(arrays, batch_size)

  def evaluate(state) -> dict[str, float]:
    margin = reward_metrics.pair_margins(pair_fn, state.params, batches, mesh)
    metrics = reward_metrics.chosen_first_metrics(margin)
    metrics = {"accuracy": metrics["accuracy"], "ece": metrics["ece"], "margin": float(margin.mean())}
    tqdm.write(f"step {int(state.step)}: held-out pairwise accuracy {metrics['accuracy']:.3f}")
    return metrics
  return evaluate


def _rating_evaluator(model, arrays, ratings, batch_size, mesh):
  score_fn = jax.jit(functools.partial(reward.rewards, model=model))
  ratings = np.asarray(ratings, np.float64)
  i, j = np.triu_indices(len(ratings), k=1)
  differ = ratings[i] != ratings[j]

  def evaluate(state) -> dict[str, float]:
    scores = reward_metrics.score_all(score_fn, state.params, arrays["tokens"], arrays["mask"], batch_size, mesh)
    scores = np.asarray(scores, np.float64)
    correlation = float(np.corrcoef(scores, ratings)[0, 1]) if scores.std() > 0 and ratings.std() > 0 else 0.0
    agree = (scores[i] - scores[j]) * (ratings[i] - ratings[j]) > 0
    metrics = {"correlation": correlation,
               "pair_accuracy": float(agree[differ].mean()) if differ.any() else float("nan")}
    tqdm.write(f"step {int(state.step)}: held-out correlation with the ratings {correlation:.3f}, "
               f"accuracy on pairs of different ratings {metrics['pair_accuracy']:.3f}")
    return metrics
  return evaluate


def _rubric_rows(path: str) -> tuple[list[dict], list[str], int]:
  """The store's live rubric judgements as rows, the criteria in order of first use, and their scale."""
  with FeedbackStore(path, create=False) as store:
    judged = store.export_scores()
  if not judged:
    raise UserError(f"store:{path}: no rubric judgements (score answers with `rlhf-jax label --rubric`)")
  criteria = list(dict.fromkeys(c for r in judged for c in r["scores"]))
  scales = {r["scales"][c] for r in judged for c in r["scores"]}
  if len(scales) != 1:
    raise UserError(f"store:{path}: the criteria use different scales {sorted(scales)}; one ordered logit needs one")
  return [{"prompt": r["prompt"], "completion": r["response"], "scores": r["scores"]} for r in judged], criteria, \
      scales.pop()


def _weights(spec: tuple[str, ...], criteria: list[str]) -> list[float]:
  if not spec:
    return [1.0 / len(criteria)] * len(criteria)
  given = {}
  for item in spec:
    name, _, value = item.partition("=")
    if name not in criteria:
      raise UserError(f"reward.weights: {name!r} is not a criterion of the judgements ({', '.join(criteria)})")
    given[name] = float(value)
  return [given.get(c, 0.0) for c in criteria]


def _train_rubric(config: Config, workdir: Path, mesh):
  rc = config.reward
  rows_, criteria, scale = _rubric_rows(config.data.path[len("store:"):])
  key = jax.random.key(config.seed)
  start = reward_model.start_scalar_model(workdir, init_from=config.init_from, fallback=None, texts=[], mesh=mesh,
                                          optim=config.optim, key=jax.random.fold_in(key, 0),
                                          rules=config.mesh.rules, adapters=rc.lora, heads=len(criteria))
  trained.save_rubric(workdir, criteria, _weights(rc.weights, criteria))
  train, test = records.split(rows_, config.data.test_fraction)
  if len(train) < rc.batch_size or not test:
    raise UserError(f"{config.data.path}: {len(train)} train and {len(test)} held-out judgements; need at least "
                    f"reward.batch_size={rc.batch_size} to train and one to hold out (data.test_fraction)")
  tqdm.write(f"rubric judgements on {', '.join(criteria)} (1..{scale}): {len(train)} train, {len(test)} held out")

  def arrays(part):
    tokens, mask = rows.pad_rows(start.tokenizer.encode_batch([r["prompt"] + r["completion"] for r in part]),
                                 rc.seq_len, start.tokenizer.pad_id)
    labels = np.array([[r["scores"].get(c, 1) - 1 for c in criteria] for r in part], np.int32)
    label_mask = np.array([[c in r["scores"] for c in criteria] for r in part], np.float32)
    return {"tokens": tokens, "mask": mask, "labels": labels, "label_mask": label_mask}
  test_arrays = arrays(test)
  score_fn = jax.jit(functools.partial(reward.criterion_rewards, model=start.model))

  def evaluate(state) -> dict[str, float]:
    scores = []
    for batch in rows.eval_row_batches({"tokens": test_arrays["tokens"], "mask": test_arrays["mask"]},
                                       rc.eval_batch_size):
      placed = sharding.put_batch({"tokens": batch["tokens"], "mask": batch["mask"]}, mesh)
      scores.append(np.asarray(score_fn(state.params, placed["tokens"], placed["mask"]))[batch["row_mask"] > 0])
    scores = np.concatenate(scores)
    levels = np.asarray(losses.ordinal_expected_level(jnp.asarray(scores.reshape(-1)), scale)).reshape(scores.shape)
    metrics = {}
    for k, c in enumerate(criteria):
      scored = test_arrays["label_mask"][:, k] > 0
      truth, predicted = test_arrays["labels"][scored, k], scores[scored, k]
      spread = predicted.std() > 0 and truth.std() > 0
      metrics[f"{c}_correlation"] = float(np.corrcoef(predicted, truth)[0, 1]) if spread else 0.0
      metrics[f"{c}_accuracy"] = float(np.mean(np.rint(levels[scored, k]) == truth))
    tqdm.write(f"step {int(state.step)}: held-out correlation per criterion: "
               + ", ".join(f"{c} {metrics[f'{c}_correlation']:.3f}" for c in criteria))
    return metrics

  data = rows.rows_dataset(arrays(train), rc.batch_size // jax.process_count(), seed=config.seed,
                           shard_index=jax.process_index(), shard_count=jax.process_count())
  step_fn = common.jit_step(functools.partial(
      reward.train_step, model=start.model, tx=start.tx, kind="rubric", num_levels=scale,
      warmup_steps=config.optim.warmup_steps, total_steps=config.loop.steps, min_lr_ratio=config.optim.min_lr_ratio),
      mesh, start.state_shardings)
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=start.init_fn,
                    state_shardings=start.state_shardings, step_fn=step_fn, data_iterator=iter(data),
                    hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=rc.batch_size * rc.seq_len, evaluate=evaluate)
