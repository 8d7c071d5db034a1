"""Offline preference optimization on a task: a DPO-family loss on a fixed set of preference pairs.

  records = rl.preference_records("store:workdirs/quickstart/reward/feedback.db", seed=0)  # or "fine_foods"
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
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from rlhf_jax import pretrained, sharding
from rlhf_jax.data import fine_foods, rows
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.loop import train_loop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rl import trainer
from rlhf_jax.rl.task import Task
from rlhf_jax.steps import common, dpo


def preference_records(source: str, *, seed: int) -> list[dict]:
  """The preference pairs `source` (an experiment's `data.source`) names: "store:PATH", every live
  comparison with a winner in that feedback store; or "fine_foods", the fine-food reviews' 1,400
  human train pairs (a 5-star review preferred to a lower-rated one, no prompt)."""
  if source == "fine_foods":
    return fine_foods.preference_pairs("train", seed=seed)
  if not source.startswith("store:"):
    raise ValueError(f"data.source: expected 'store:PATH' or 'fine_foods', got {source!r}")
  path = source[len("store:"):]
  if not Path(path).is_file():
    raise FileNotFoundError(f"data.source store {path} not found: expected a feedback store (feedback.db)")
  with FeedbackStore(path) as store:
    return store.export_preferences()


def pair_arrays(records: Sequence[dict], tokenizer, prompt_len: int, response_len: int) -> dict[str, np.ndarray]:
  """Left-padded prompts [N, prompt_len] and right-padded chosen/rejected responses [N, response_len]
  (cut to their first response_len tokens; an empty one becomes a lone EOS) of preference records."""
  prompt, prompt_mask = prompts_lib.encode_prompts(tokenizer, [r["prompt"] for r in records], prompt_len)
  out = {"prompt": prompt, "prompt_mask": prompt_mask}
  for side in ("chosen", "rejected"):
    ids = [t or [tokenizer.eos_id] for t in tokenizer.encode_batch([r[side] for r in records])]
    out[side], out[f"{side}_mask"] = rows.pad_rows(ids, response_len, tokenizer.pad_id)
  return out


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


def train_offline_dpo(config: trainer.Config, records: Sequence[dict], task: Task, policy: pretrained.Pretrained,
                      workdir: str | Path, mesh: Mesh | None = None) -> common.TrainState:
  """Trains `policy` on the preference pairs `records` (module docstring), evaluated on `task`;
  resumes from `workdir`'s checkpoints. Returns the final state (also saved)."""
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
  pretrained.save_model_config(workdir, policy.model)
  model, tok = Transformer(policy.model), policy.tokenizer
  hp = config.dpo.hparams(config.optim)
  frozen, _, sample = trainer.reference_and_reward(config, task, policy, workdir, mesh, temperature=hp.temperature)

  pairs = pair_arrays(records, tok, task.prompt_len, task.max_new_tokens)
  pairs.update(reference_logprobs(frozen["ref"], pairs, model=model, batch_size=rc.eval_batch_size,
                                  temperature=hp.temperature, mesh=mesh))
  tqdm.write(f"{len(records)} preference pairs, {pairs_per_step} a step")
  tx = common.make_optimizer(config.optim)
  init, state_shardings = common.jit_sharded(functools.partial(pretrained.restart_state, tx=tx), mesh,
                                             config.mesh.rules, policy.params)
  step = common.jit_step(functools.partial(
      dpo.dpo_step, model=model, tx=tx, kind=config.dpo.kind, warmup_steps=config.optim.warmup_steps,
      total_steps=config.loop.steps, min_lr_ratio=config.optim.min_lr_ratio), mesh, state_shardings)
  evaluate_state = trainer.state_evaluator(config, task, tok, sample, frozen, workdir, mesh, temperature=hp.temperature)
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config),
                    init_fn=functools.partial(init, policy.params), state_shardings=state_shardings, step_fn=step,
                    data_iterator=iter(rows.rows_dataset(pairs, pairs_per_step, seed=config.seed)), hp=hp,
                    rng=jax.random.fold_in(jax.random.key(config.seed), 1), mesh=mesh,
                    tokens_per_step=rc.batch_size * (task.prompt_len + task.max_new_tokens), evaluate=evaluate_state)
