"""Online DPO with feedback rounds: the current policy's pairs are judged, stored, and trained on.

  rl.train_dpo_rounds(config, rounds, task, policy, workdir, mesh, labeler=labeler)   # or labeler=None: people

Online DPO on the trainer (`rl.algorithm=online_dpo`) ranks each pair inside the jitted iteration
with the task's reward. Here the judge is a labeler that records what it says, as a person would,
in the feedback store: the online AI (or human) feedback loop of Guo et al. (2024, "Direct
Language Model Alignment from Online AI Feedback", Algorithm 1), in rounds. Round r:
1. the current policy (the starting one, then round r-1's) writes two continuations of each of
   `rounds.prompts_per_round` train prompts (round r's slice of the task's train prompts, wrapping);
2. `feedback.collect` stores the pairs: a simulated labeler's verdicts in the same transaction, or,
   with `labeler=None`, the pairs wait on the labeling page (`rlhf-jax label --store
   <workdir>/feedback.db`) until people have judged every one (`rounds.wait_timeout_s`);
3. `train_offline_dpo` takes `loop.steps` updates on the round's preferences (ties and skips train
   nothing), starting from the current policy with a fresh optimizer, into `<workdir>/round_<r>`.
The reference of every round is the starting policy, as in online DPO, so each round's evaluation
(gold and proxy reward, KL to the reference) is comparable with the last. A rerun skips finished
rounds, resumes the collection of an interrupted one from the store and its training from its
checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import files, sampling, sharding, trained
from rlhf_jax.config import check_range
from rlhf_jax.feedback import collect
from rlhf_jax.feedback.labelers import SimulatedLabeler
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rl import trainer
from rlhf_jax.rl.offline_dpo import train_offline_dpo
from rlhf_jax.rl.task import Task

ROUND_DONE = "round.json"


@dataclasses.dataclass(frozen=True)
class RoundsConfig:
  rounds: int = 3
  prompts_per_round: int = 256  # two samples each, so at most this many pairs a round
  sample_batch_size: int = 64
  wait_timeout_s: float = 24 * 3600.0  # people: how long a round waits for their verdicts

  def __post_init__(self):
    check_range(self, "rounds", ">= 1", "rounds", "prompts_per_round", "sample_batch_size")
    check_range(self, "rounds", "> 0", "wait_timeout_s")


def round_prompts(task: Task, round_index: int, count: int) -> list[str]:
  """Round r's `count` train prompts: the r-th slice of the task's train prompts, wrapping around."""
  texts = task.train.texts
  return [texts[(round_index * count + i) % len(texts)] for i in range(count)]


def _sampler(policy: trained.TrainedModel, task: Task, temperature: float, mesh: Mesh):
  """(params, prompts, key) -> one continuation each, at the task's prompt and response lengths: one
  compiled sampler that every round's policy uses."""
  tok = policy.tokenizer
  generate = jax.jit(functools.partial(sampling.generate, model=Transformer(policy.model),
                                       max_new_tokens=task.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id))
  by_text = dict(zip(task.train.texts, zip(task.train.tokens_NxP, task.train.mask_NxP)))

  def sample(params, prompts: list[str], key: jax.Array) -> list[str]:
    tokens = np.stack([by_text[p][0] for p in prompts])
    mask = np.stack([by_text[p][1] for p in prompts])
    placed = sharding.put_batch({"tokens": tokens, "mask": mask}, mesh)
    out = jax.device_get(generate(params, placed["tokens"], placed["mask"], key, temperature=temperature))
    return [tok.decode([int(t) for t, m in zip(row, m_row) if m and t != tok.eos_id])
            for row, m_row in zip(out.tokens_BxN, out.mask_BxN)]
  return sample


def train_dpo_rounds(config: trainer.Config, rounds: RoundsConfig, task: Task, policy: trained.TrainedModel,
                     workdir: str | Path, mesh: Mesh | None = None, *,
                     labeler: SimulatedLabeler | None) -> trained.TrainedModel:
  """Runs every round (module docstring); returns the last round's policy."""
  workdir = Path(workdir)
  mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
  if rounds.prompts_per_round > len(task.train.texts):
    raise ValueError(f"rounds.prompts_per_round={rounds.prompts_per_round} exceeds the task's "
                     f"{len(task.train.texts)} train prompts: a round would ask about a prompt twice")
  if rounds.prompts_per_round % rounds.sample_batch_size:
    raise ValueError(f"rounds.prompts_per_round={rounds.prompts_per_round} must be a multiple of "
                     f"rounds.sample_batch_size={rounds.sample_batch_size} (one compiled sampler)")
  workdir.mkdir(parents=True, exist_ok=True)
  trained.save_model_config(workdir, policy.model)  # `trained.load(workdir)`: the last round's policy
  key = jax.random.fold_in(jax.random.key(config.seed), 20_000)
  sample = _sampler(policy, task, config.dpo.temperature, mesh)
  current = policy
  for r in range(rounds.rounds):
    round_dir = workdir / f"round_{r}"
    if (round_dir / ROUND_DONE).is_file():
      current = None  # its policy is read back only if a later round starts from it
      continue
    if current is None:
      current = trained.load(workdir, mesh, checkpoints=workdir / f"round_{r - 1}" / "checkpoints")
    model = f"round_{r}@{current.step}"  # the samples' author in the store; unique per round
    with FeedbackStore(workdir / "feedback.db") as store:
      collect.collect_comparisons(
          store, functools.partial(sample, current.params), round_prompts(task, r, rounds.prompts_per_round),
          labeler, samples_per_prompt=2, batch_size=rounds.sample_batch_size, model=model,
          key=jax.random.fold_in(key, r), source="dpo_rounds", collection=f"round_{r}")
      if labeler is None:
        collect.wait_for_comparisons(store, store.collection_progress(f"round_{r}")[2],
                                     model=model, timeout_s=rounds.wait_timeout_s)
      records = [p for p in store.export_preferences() if p["chosen_model"] == model]
    state = train_offline_dpo(config, records, task, policy, round_dir, mesh,
                              init_params=None if r == 0 else current.params)
    files.atomic_write_text(round_dir / ROUND_DONE, json.dumps({"pairs": len(records)}) + "\n")
    current = dataclasses.replace(current, params=state.params, step=int(state.step))
  if current is None:  # every round was done before this call
    current = trained.load(workdir, mesh, checkpoints=workdir / f"round_{rounds.rounds - 1}" / "checkpoints")
  return current
