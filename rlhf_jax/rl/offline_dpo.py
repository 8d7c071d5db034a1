"""Offline preference optimization on a task: a DPO-family loss on a fixed set of preference pairs.

  records = preferences.preference_records("store:workdirs/quickstart/reward/feedback.db", seed=0)  # or "fine_foods"
  rl.train_offline_dpo(config, records, task, policy, workdir, mesh)

The counterpart of `rl.algorithm=online_dpo`, whose pairs are sampled from the current policy and
ranked by the task's reward: here the pairs are given (`{"prompt", "chosen", "rejected"}` records,
people's or a labeler's, e.g. a feedback store's export). The reference is the starting policy;
its summed log-probs of every pair are computed once before training (it never changes, so
recomputing them every step would double the cost). The policy takes `loop.steps` updates of
`dpo.kind` (`steps.dpo.dpo_step`), each on rl.batch_size / 2 pairs (the pairs of an online DPO
iteration of the same rl.batch_size), and is evaluated on the task's held-out prompts exactly as
the RL trainer evaluates (`trainer.evaluate`: the same reward normalization and metric names), so
online and offline runs compare point for point in `rlhf-jax report`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from rlhf_jax import sharding, trained
from rlhf_jax.data import preferences, rows
from rlhf_jax.loop import train_loop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rl import trainer
from rlhf_jax.rl.task import Task
from rlhf_jax.steps import common, dpo


def reference_logprobs(ref_params, pairs: dict[str, np.ndarray], *, model: Transformer, batch_size: int,
                       temperature: jax.Array, mesh: Mesh) -> dict[str, np.ndarray]:
  """`{"ref_chosen", "ref_rejected"}` [N]: the reference's summed log-probs of every pair's responses,
  at the temperature the loss uses, in batches of `batch_size` pairs."""
  fn = jax.jit(functools.partial(dpo.reference_logprobs, model=model))
  names = ("prompt", "prompt_mask", "chosen", "chosen_mask", "rejected", "rejected_mask")
  out = [jax.device_get(fn(ref_params, sharding.put_batch({k: b[k] for k in names}, mesh), temperature=temperature))
         for b in rows.eval_row_batches({k: pairs[k] for k in names}, batch_size)]
  n = len(pairs["prompt"])  # the last batch is padded with copies of row 0
  return {k: np.concatenate([o[k] for o in out])[:n] for k in ("ref_chosen", "ref_rejected")}


def train_offline_dpo(config: trainer.Config, records: Sequence[dict], task: Task, policy: trained.TrainedModel,
                      workdir: str | Path, mesh: Mesh | None = None, *, init_params: Any = None) -> common.TrainState:
  """Trains `policy` on the preference pairs `records` (module docstring), evaluated on `task`;
  resumes from `workdir`'s checkpoints. Returns the final state (also saved). `policy` is the
  reference; training starts from `init_params` when given (a later round of `dpo_rounds`), else
  from the reference's own parameters."""
  workdir = Path(workdir)
  mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
  rc = config.rl
  if rc.batch_size % 2:
    raise ValueError(f"rl.batch_size={rc.batch_size} must be even: a step trains on rl.batch_size / 2 pairs")
  pairs_per_step = rc.batch_size // 2
  if len(records) < pairs_per_step:
    raise ValueError(f"{len(records)} preference pairs, fewer than the {pairs_per_step} a step trains on "
                     f"(rl.batch_size={rc.batch_size} responses)")
  trainer.check_task(config, task, policy, mesh)
  sharding.check_batch_divisible(pairs_per_step, mesh, "rl.batch_size / 2 (pairs per step)")
  workdir.mkdir(parents=True, exist_ok=True)
  trained.save_model_config(workdir, policy.model, config.policy.lora)
  models = trainer.start_models(config, policy, key=jax.random.fold_in(jax.random.key(config.seed), 2),
                                value=False)
  model, tok = models.policy_model, policy.tokenizer
  hp = config.dpo.hparams(config.optim)
  frozen, _, sample = trainer.reference_and_reward(config, task, policy, workdir, mesh, temperature=hp.temperature,
                                                   models=models)

  pairs = preferences.policy_pairs(records, tok, task.prompt_len, task.max_new_tokens)
  # The starting parameters are the reference's function (with LoRA, adapters whose update is zero).
  pairs.update(reference_logprobs(models.start_params, pairs, model=model, batch_size=rc.eval_batch_size,
                                  temperature=hp.temperature, mesh=mesh))
  tqdm.write(f"{len(records)} preference pairs, {pairs_per_step} a step")
  tx = trainer.optimizer(config)
  start = models.start_params if init_params is None else init_params
  init, state_shardings = common.sharded_init(functools.partial(common.restart_state, tx=tx), mesh,
                                              config.mesh.rules, start)
  step = common.jit_step(functools.partial(
      dpo.dpo_step, model=model, tx=tx, kind=config.dpo.kind, warmup_steps=config.optim.warmup_steps,
      total_steps=config.loop.steps, min_lr_ratio=config.optim.min_lr_ratio), mesh, state_shardings)
  evaluate_state = trainer.state_evaluator(config, task, tok, sample, frozen, workdir, mesh, temperature=hp.temperature)
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config),
                    init_fn=functools.partial(init, start), state_shardings=state_shardings, step_fn=step,
                    data_iterator=iter(rows.rows_dataset(pairs, pairs_per_step, seed=config.seed)), hp=hp,
                    rng=jax.random.fold_in(jax.random.key(config.seed), 1), mesh=mesh,
                    tokens_per_step=rc.batch_size * (task.prompt_len + task.max_new_tokens), evaluate=evaluate_state)
