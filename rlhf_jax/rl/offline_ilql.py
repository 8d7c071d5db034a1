"""Offline ILQL on a task: token-level Q-learning from fixed scored sequences (Snell et al. 2022).

  rl.train_offline_ilql(config, task, policy, workdir, mesh)  # data: the starting policy's samples
  rl.train_offline_ilql(config, task, policy, workdir, mesh, records=[{"prompt", "response", "reward"}, ...])

The data are sequences with one reward each. Given as `records` (texts and a float reward, used as
given), or, by default, made once from the starting policy: `ilql.num_samples` samples of the
task's train prompts (prompt i % n), scored by the task's reward normalized as the trainer
normalizes it (`reward_norm.json`), saved to `<workdir>/offline.npz` so a resumed run trains on
the same data. The model is the policy's LM plus ILQL's Q and V heads (`steps.ilql`); it takes
`loop.steps` updates of `steps.ilql.ilql_step`, each on rl.batch_size sequences, and is evaluated
on the task's held-out prompts exactly as the RL trainer evaluates (`trainer.evaluate`: the same
reward normalization, KL to the reference and metric names), decoding with ILQL's advantage
logits log pi_beta + beta (min(Q1, Q2) - V) (eq. 4) at `ilql.temperature` on the LM's KV cache.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from rlhf_jax import files
from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sampling, sharding, trained
from rlhf_jax.data import preferences, rows
from rlhf_jax.loop import train_loop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rl import iteration as iteration_lib
from rlhf_jax.rl import trainer
from rlhf_jax.rl.task import Task
from rlhf_jax.steps import common
from rlhf_jax.steps import ilql as ilql_step

SEQUENCE_FIELDS = ("prompt", "prompt_mask", "response", "response_mask", "reward")


def reference_sequences(sample, frozen: dict, task: Task, *, num_samples: int, batch_size: int, key: jax.Array,
                        temperature: jax.Array, mesh: Mesh) -> dict[str, np.ndarray]:
  """`num_samples` samples of the reference (`frozen["ref"]`) on the train prompts, row i on
  prompt i % n, in batches of `batch_size` (batch i with `fold_in(key, i)`), each with its
  normalized reward (`frozen["norm"]`)."""
  n = len(task.train)
  norm = jax.device_get(frozen["norm"])
  out = {name: [] for name in SEQUENCE_FIELDS}
  for i in range(0, num_samples, batch_size):
    index = np.arange(i, i + batch_size) % n
    placed = sharding.put_batch({"p": task.train.tokens_NxP[index], "m": task.train.mask_NxP[index]}, mesh)
    r, raw_B = sample(frozen["ref"], frozen, placed["p"], placed["m"], jax.random.fold_in(key, i), temperature)
    for name, x in (("prompt", r.prompt_BxP), ("prompt_mask", r.prompt_mask_BxP), ("response", r.response_BxN),
                    ("response_mask", r.response_mask_BxN), ("reward", iteration_lib.normalized(raw_B, norm))):
      out[name].append(np.asarray(x))
  return {name: np.concatenate(xs)[:num_samples] for name, xs in out.items()}


def saved_sequences(path: Path, make) -> dict[str, np.ndarray]:
  """The data set in `path` if it exists, else `make()` saved there (atomically: a crash never
  leaves half a file that a resume would read)."""
  if path.exists():
    with np.load(path) as f:
      missing = set(SEQUENCE_FIELDS) - set(f.files)
      if missing:
        raise ValueError(f"{path}: expected the arrays {SEQUENCE_FIELDS}, missing {sorted(missing)}")
      return {name: f[name] for name in SEQUENCE_FIELDS}
  arrays = make()
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.atomic_write_bytes(path, buffer.getvalue())
  return arrays


def ilql_rows(seqs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`steps.ilql` rows [N, P + R] of sequences: tokens, mask, action_mask and rewards.

  The layout is the sampler's: the left-padded prompt, then the right-padded response, so the real
  tokens are contiguous with padding on both sides. `ilql_step` needs only that (the model counts
  positions over real tokens, so this forward equals the one on the row shifted to the left, and
  every loss reads real steps through the mask), and it keeps the response at fixed columns: the
  actions are exactly the response's tokens (`action_mask`; the prompt is given, not chosen), and
  the reward sits on the last response token, column P + length - 1.
  """
  prompt_mask = seqs["prompt_mask"].astype(np.int32)
  response_mask = seqs["response_mask"].astype(np.int32)
  N, P = prompt_mask.shape
  last_N = response_mask.sum(-1) - 1
  if np.any(last_N < 0):
    raise ValueError(f"rows {np.flatnonzero(last_N < 0)[:5].tolist()} have an empty response")
  rewards = np.zeros(response_mask.shape, np.float32)
  rewards[np.arange(N), last_N] = seqs["reward"]
  return {"tokens": np.concatenate([seqs["prompt"], seqs["response"]], 1).astype(np.int32),
          "mask": np.concatenate([prompt_mask, response_mask], 1),
          "action_mask": np.concatenate([np.zeros_like(prompt_mask), response_mask], 1),
          "rewards": np.concatenate([np.zeros(prompt_mask.shape, np.float32), rewards], 1)}


def sample(params, ref_params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, key: jax.Array,
           temperature: jax.Array, beta: jax.Array, *, model: Transformer, max_new_tokens: int, eos_id: int,
           pad_id: int) -> rollout_lib.Rollout:
  """A rollout decoded with ILQL's advantage logits (`params` = {"lm", "heads"}) on the LM's KV cache.

  `logp_BxN` is the sampler's own: the log-prob under the distribution the tokens were drawn from,
  softmax((log pi_beta + beta (min(Q1, Q2) - V)) / temperature), so the evaluation's KL to the
  reference is that of the decoding policy (a teacher-forced recomputation would be one more
  forward for the same numbers to float tolerance). The reference's log-probs are the trainer's.
  """
  logits_fn = functools.partial(ilql_step.next_token_logits, params["heads"], beta=beta,
                                vocab_size=model.config.vocab_size)
  out = sampling.generate(params["lm"], prompt_BxP, prompt_mask_BxP, key, model=model, max_new_tokens=max_new_tokens,
                          temperature=temperature, eos_id=eos_id, pad_id=pad_id, logits_fn=logits_fn)
  ref_logp = sampling.response_logprobs(ref_params, prompt_BxP, prompt_mask_BxP, out.tokens_BxN, out.mask_BxN,
                                        model=model, temperature=temperature)
  return rollout_lib.Rollout(prompt_BxP=prompt_BxP, prompt_mask_BxP=prompt_mask_BxP, response_BxN=out.tokens_BxN,
                             response_mask_BxN=out.mask_BxN, logp_BxN=out.logp_BxN, ref_logp_BxN=ref_logp,
                             values_BxN=jnp.zeros(out.tokens_BxN.shape, jnp.float32), ended_B=out.ended_B)


def make_sampler(model: Transformer, reward, *, beta: jax.Array, max_new_tokens: int, eos_id: int, pad_id: int):
  """`trainer.make_sampler` decoding with ILQL (`sample`) at `beta`: what `trainer.evaluate` takes."""
  roll = jax.jit(functools.partial(sample, model=model, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id))

  def roll_at_beta(params, ref_params, prompt_BxP, mask_BxP, key, temperature):
    return roll(params, ref_params, prompt_BxP, mask_BxP, key, temperature, beta)
  return trainer.make_sampler(model, reward, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                              roll=roll_at_beta)


def train_offline_ilql(config: trainer.Config, task: Task, policy: trained.TrainedModel, workdir: str | Path,
                       mesh: Mesh | None = None, records: Sequence[dict] | None = None) -> ilql_step.ILQLState:
  """Trains `policy` with ILQL on `records` or its own samples (module docstring), evaluated on
  `task`; resumes from `workdir`'s checkpoints. Returns the final state (also saved)."""
  workdir = Path(workdir)
  mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
  rc, ic = config.rl, config.ilql
  num_rows = ic.num_samples if records is None else len(records)
  if num_rows < rc.batch_size:
    field = "ilql.num_samples" if records is None else "records"
    raise ValueError(f"{field}: {num_rows} sequences, fewer than the rl.batch_size={rc.batch_size} a step trains on")
  trainer.check_task(config, task, policy, mesh)
  workdir.mkdir(parents=True, exist_ok=True)
  trained.save_model_config(workdir, policy.model)
  model, tok = Transformer(policy.model), policy.tokenizer
  hp = ic.hparams(config.optim)
  frozen, _, reference_sample = trainer.reference_and_reward(config, task, policy, workdir, mesh,
                                                             temperature=hp.temperature)
  key = jax.random.key(config.seed)
  if records is None:
    seqs = saved_sequences(workdir / "offline.npz", functools.partial(
        reference_sequences, reference_sample, frozen, task, num_samples=ic.num_samples, batch_size=rc.batch_size,
        key=jax.random.fold_in(key, 10_001), temperature=hp.temperature, mesh=mesh))
  else:
    seqs = preferences.scored_responses(records, tok, task.prompt_len, task.max_new_tokens)
  if seqs["prompt"].shape[1:] != (task.prompt_len,) or seqs["response"].shape[1:] != (task.max_new_tokens,):
    raise ValueError(f"offline sequences of prompt length {seqs['prompt'].shape[1]} and response length "
                     f"{seqs['response'].shape[1]}; the task has {task.prompt_len} and {task.max_new_tokens} "
                     f"(a stale {workdir / 'offline.npz'}?)")
  tqdm.write(f"{len(seqs['reward'])} offline sequences (reward mean {seqs['reward'].mean():.3f}), "
             f"{rc.batch_size} a step")

  tx = common.make_optimizer(config.optim)
  init, state_shardings = common.sharded_init(functools.partial(ilql_step.init_state, model=model, tx=tx), mesh,
                                              config.mesh.rules, jax.random.fold_in(key, 2), policy.params)
  step = common.jit_step(functools.partial(
      ilql_step.ilql_step, model=model, tx=tx, warmup_steps=config.optim.warmup_steps, total_steps=config.loop.steps,
      min_lr_ratio=config.optim.min_lr_ratio), mesh, state_shardings)
  sample = make_sampler(model, task.reward, beta=hp.beta, max_new_tokens=task.max_new_tokens, eos_id=tok.eos_id,
                        pad_id=tok.pad_id)
  evaluate_state = trainer.state_evaluator(config, task, tok, sample, frozen, workdir, mesh, temperature=hp.temperature)
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config),
                    init_fn=functools.partial(init, jax.random.fold_in(key, 2), policy.params),
                    state_shardings=state_shardings, step_fn=step,
                    data_iterator=iter(rows.rows_dataset(ilql_rows(seqs), rc.batch_size, seed=config.seed)), hp=hp,
                    rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=rc.batch_size * (task.prompt_len + task.max_new_tokens), evaluate=evaluate_state)
