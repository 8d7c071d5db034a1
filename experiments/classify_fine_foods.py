"""A classifier corrected by a labeler, round after round (the seeds' classification loop).

  rlhf-jax run experiments/pretrain_tiny.py --workdir workdirs/lm
  rlhf-jax run experiments/classify_fine_foods.py --set classify.init_from=workdirs/lm
  rlhf-jax run experiments/classify_fine_foods.py --smoke                 # < 1 min, random init

A great-vs-other classifier of Amazon fine-food reviews (the scalar-head model of the reward
experiments) starts from `classify.initial_labels` labeled reviews. Each round it labels the rest
of the training pool; the labeler is shown `classify.reviews_per_round` of its predictions (the
ones it is least sure of, |logit| smallest, or a random draw with `classify.select=random`) and
corrects the wrong ones with the real human label; everything reviewed joins the training set and
the classifier is fine-tuned again from where it was. Each round reports held-out accuracy and
ROC AUC on the 1,000 test reviews, and how many of the shown predictions were mistakes.

Workdir: `round_K/` holds round K's checkpoints and metrics; `round_K/corrections.jsonl` the
reviews the labeler was shown after round K (text, prediction, label), written atomically
before round K+1 trains; `rounds.jsonl` one line of results per round. A rerun resumes: finished
rounds are restored, recorded corrections reused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from pathlib import Path
from typing import Literal

import jax
import numpy as np
from tqdm import tqdm

from rlhf_jax import files, sharding
from rlhf_jax.data import fine_foods, rows
from rlhf_jax.eval import reward_metrics
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models.transformer import ModelConfig
from rlhf_jax.rewards import reward_model
from rlhf_jax.steps import common, reward


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
  init_from: str = ""  # workdir of an LM run; "" = tokenizer trained on the reviews, random weights
  initial_labels: int = 200
  rounds: int = 4  # correction rounds after the first training
  reviews_per_round: int = 200
  select: Literal["uncertain", "random"] = "uncertain"
  steps_per_round: int = 150
  seq_len: int = 128
  batch_size: int = 32
  eval_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  classify: ClassifyConfig = ClassifyConfig()
  model: ModelConfig = ModelConfig()  # used only without classify.init_from
  optim: common.OptimConfig = common.OptimConfig()
  loop: LoopConfig = LoopConfig()  # steps is set per round from classify.steps_per_round
  mesh: sharding.MeshConfig = sharding.MeshConfig()


def get_config(smoke: bool = False) -> Config:
  config = Config(
      model=ModelConfig(vocab_size=2048, max_len=128, d_model=128, n_layers=4, n_heads=4),
      optim=common.OptimConfig(learning_rate=3e-4, warmup_steps=20, weight_decay=0.1),
      loop=LoopConfig(log_every=25, eval_every=0, checkpoint_every=1000),
  )
  if smoke:
    config = dataclasses.replace(
        config,
        classify=ClassifyConfig(initial_labels=32, rounds=2, reviews_per_round=32, steps_per_round=10, seq_len=32,
                                batch_size=16, eval_batch_size=64),
        model=ModelConfig(vocab_size=512, max_len=32, d_model=32, n_layers=1, n_heads=2),
        optim=dataclasses.replace(config.optim, learning_rate=1e-3, warmup_steps=2),
        loop=LoopConfig(log_every=5, eval_every=0, checkpoint_every=1000, progress=False),
    )
  return config


def select_for_review(logits_N: np.ndarray, candidates_N: np.ndarray, n: int, how: str,
                      rng: np.random.Generator) -> np.ndarray:
  """Indices (into the pool) of the `n` candidates the labeler is shown.

  "uncertain": smallest |logit| first (uncertainty sampling, Lewis & Gale 1994), ties broken by
  pool order; "random": a uniform draw. Both return at most the number of candidates.
  """
  pool = np.flatnonzero(candidates_N)
  if how == "uncertain":
    order = pool[np.argsort(np.abs(logits_N[pool]), kind="stable")]
  elif how == "random":
    order = rng.permutation(pool)
  else:
    raise ValueError(f"classify.select: expected 'uncertain' or 'random', got {how!r}")
  return np.sort(order[:n])


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  classify = config.classify
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(classify.batch_size, mesh, "classify.batch_size")
  sharding.check_batch_divisible(classify.eval_batch_size, mesh, "classify.eval_batch_size")
  pool, test = fine_foods.load("train"), fine_foods.load("test")
  if classify.initial_labels < classify.batch_size:
    raise ValueError(f"classify.initial_labels={classify.initial_labels} is below one batch (classify.batch_size="
                     f"{classify.batch_size})")

  key = jax.random.key(config.seed)
  start = reward_model.start_scalar_model(workdir, init_from=classify.init_from, fallback=config.model,
                                          texts=[r.text for r in pool], mesh=mesh, optim=config.optim,
                                          key=jax.random.fold_in(key, 0), rules=config.mesh.rules)
  model, tok = start.model, start.tokenizer
  if classify.seq_len > model.config.max_len:
    raise ValueError(f"classify.seq_len={classify.seq_len} exceeds the model's max_len={model.config.max_len}")
  pool_tokens, pool_mask = rows.pad_rows(tok.encode_batch([r.text for r in pool]), classify.seq_len, tok.pad_id)
  pool_labels = np.array([r.great for r in pool], np.int32)
  test_tokens, test_mask = rows.pad_rows(tok.encode_batch([r.text for r in test]), classify.seq_len, tok.pad_id)
  test_labels = np.array([r.great for r in test], np.int32)
  score_fn = jax.jit(functools.partial(reward.rewards, model=model))
  step_fn = common.jit_step(functools.partial(
      reward.train_step, model=model, tx=start.tx, kind="rating", warmup_steps=config.optim.warmup_steps,
      total_steps=classify.steps_per_round, min_lr_ratio=config.optim.min_lr_ratio), mesh, start.state_shardings)

  rng = np.random.default_rng(config.seed)
  labeled = np.zeros(len(pool), bool)
  labeled[rng.permutation(len(pool))[:classify.initial_labels]] = True
  loop = dataclasses.replace(config.loop, steps=classify.steps_per_round)
  stop = threading.Event()
  state, results = None, []
  for round_ in range(classify.rounds + 1):
    round_dir = workdir / f"round_{round_}"
    round_dir.mkdir(parents=True, exist_ok=True)
    if state is None:
      init_fn = start.init_fn
    else:  # fine-tune again from the last round's weights, with a fresh optimizer and schedule
      init_fn = jax.jit(functools.partial(common.restart_state, tx=start.tx), out_shardings=start.state_shardings)
      init_fn = functools.partial(init_fn, state.params)
    index = np.flatnonzero(labeled)
    dataset = rows.rows_dataset({"tokens": pool_tokens[index], "mask": pool_mask[index], "label": pool_labels[index]},
                                classify.batch_size, seed=config.seed + round_)
    state = train_loop(workdir=round_dir, loop=loop, config=dataclasses.asdict(config), init_fn=init_fn,
                       state_shardings=start.state_shardings, step_fn=step_fn, data_iterator=iter(dataset),
                       hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1 + round_), mesh=mesh,
                       tokens_per_step=classify.batch_size * classify.seq_len, stop=stop)
    if stop.is_set():
      return state

    test_logits = reward_metrics.score_all(score_fn, state.params, test_tokens, test_mask, classify.eval_batch_size,
                                           mesh)
    result = {"round": round_, "labeled": int(labeled.sum()),
              "test_accuracy": float(np.mean((test_logits > 0) == test_labels)),
              "test_auc": reward_metrics.roc_auc(test_logits, test_labels)}
    if round_ < classify.rounds:
      corrections = _corrections(round_dir / "corrections.jsonl", state.params, score_fn, pool, pool_tokens,
                                 pool_mask, labeled, classify, mesh, rng)
      for c in corrections:
        labeled[c["index"]] = True
      shown = len(corrections)
      result["shown"] = shown
      result["mistakes_found"] = sum(c["prediction"] != c["label"] for c in corrections)
      result["mistake_rate_of_shown"] = result["mistakes_found"] / max(shown, 1)
    results.append(result)
    tqdm.write(f"round {round_}: {result['labeled']} labels, test accuracy {result['test_accuracy']:.3f}, "
               f"AUC {result['test_auc']:.3f}"
               + (f"; labeler corrected {result['mistakes_found']} of {result['shown']} shown predictions"
                  if "shown" in result else ""))
  files.atomic_write_bytes(workdir / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in results).encode())
  return state


def _corrections(path: Path, params, score_fn, pool, pool_tokens, pool_mask, labeled, classify: ClassifyConfig, mesh,
                 rng: np.random.Generator) -> list[dict]:
  """The reviews shown to the labeler after a round, with the model's prediction and the true label.

  Read back from `path` when a previous run recorded them (so a resumed run trains on the same
  data); otherwise chosen now and written atomically before anything trains on them.
  """
  # Draw from the rng either way, so a resumed run's later random selections match an unbroken run.
  draw = np.random.default_rng(rng.integers(2**63))
  if path.exists():
    return [json.loads(line) for line in path.read_text().splitlines()]
  logits = reward_metrics.score_all(score_fn, params, pool_tokens, pool_mask, classify.eval_batch_size, mesh)
  chosen = select_for_review(logits, ~labeled, classify.reviews_per_round, classify.select, draw)
  # The labeler (simulated from the real human rating) sees the prediction and gives the label.
  records = [{"index": int(i), "text": pool[i].text, "prediction": int(logits[i] > 0), "logit": float(logits[i]),
              "label": int(pool[i].great)} for i in chosen]
  files.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
  return records
