"""Reward model from simulated feedback: sample, label into the store, export, train Bradley-Terry.

  rlhf-jax run experiments/reward_simulated.py --set policy.init_from=workdirs/lm
  rlhf-jax run experiments/reward_simulated.py                  # trains its own policy first
  rlhf-jax run experiments/reward_simulated.py --smoke          # < 1 min on CPU

The whole human-feedback path with a simulated labeler standing in for people, as in the
overoptimization literature: a policy LM writes two continuations of each prompt (the first words
of WordNet example sentences); a lexicon labeler with Bradley-Terry noise (P(a > b) =
sigmoid(beta (r_a - r_b)), ties within a margin) judges each pair into the feedback store under
its own name; the store's exported preferences train a Bradley-Terry reward model that starts
from the policy's trunk (or another LM's: `reward.init_from`, e.g. a smaller one). Held-out prompts
measure the reward model's pairwise accuracy against the labeler's noiseless preference (the sign of
r_a - r_b, ties left out). Collection (`feedback.collect`) stores each round of samples and verdicts
in one transaction; an interrupted one resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from rlhf_jax import files, runs, sampling, sharding, trained
from rlhf_jax.data import preferences
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.data import rows
from rlhf_jax.eval import reward_metrics
from rlhf_jax.feedback import collect, labelers
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rewards import reward_model, scorers
from rlhf_jax.steps import common, reward

PRETRAIN = Path(__file__).with_name("pretrain_tiny.py")
COLLECTION = "reward_simulated"  # the store's name for this experiment's rounds of sampling and labeling


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  init_from: str = ""  # an LM workdir; "" runs pretrain_tiny into <workdir>/policy first
  pretrain_smoke: bool = False  # with init_from="": run pretrain_tiny in --smoke mode
  num_prompts: int = 4096
  samples_per_prompt: int = 2  # K; every pair of a prompt's K samples is compared
  prompt_words: int = 4
  max_new_tokens: int = 32
  temperature: float = 1.0
  sample_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class LabelerConfig:
  scorer: str = "vader"
  beta: float = 10.0  # Bradley-Terry noise; inf = always the higher score
  tie_margin: float = 0.0
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  init_from: str = ""  # the reward model's trunk and tokenizer (an LM workdir); "" = the policy's
  seq_len: int = 64  # prompt + response tokens
  with_prompt: bool = True  # the reward model reads prompt + response (False: the response alone)
  batch_size: int = 32
  eval_batch_size: int = 64
  test_fraction: float = 0.2  # prompts held out (by prompt, so no pair leaks)
  lora: lora.LoraConfig = lora.LoraConfig()  # rank > 0: train LoRA adapters of the trunk and the head only


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  policy: PolicyConfig = PolicyConfig()
  labeler: LabelerConfig = LabelerConfig()
  reward: RewardConfig = RewardConfig()
  optim: common.OptimConfig = common.OptimConfig(learning_rate=3e-4, warmup_steps=20)
  loop: LoopConfig = LoopConfig(steps=600, log_every=20, eval_every=200, checkpoint_every=200)
  mesh: sharding.MeshConfig = sharding.MeshConfig()


def get_config(smoke: bool = False) -> Config:
  config = Config()
  if smoke:
    config = dataclasses.replace(
        config,
        policy=dataclasses.replace(config.policy, pretrain_smoke=True, num_prompts=48, max_new_tokens=12),
        reward=dataclasses.replace(config.reward, seq_len=32, batch_size=16, eval_batch_size=16),
        loop=LoopConfig(steps=20, log_every=10, eval_every=0, checkpoint_every=20, progress=False),
    )
  return config


def collect_feedback(config: Config, policy: trained.TrainedModel, workdir: Path, key: jax.Array) -> list[dict]:
  """Samples, labels and stores the comparisons once (a rerun resumes or reuses the collection);
  returns the store's exported preferences (also written to preferences.jsonl)."""
  store_path, complete = workdir / "feedback.db", workdir / "feedback_complete.json"
  if store_path.exists() and not complete.exists():
    with FeedbackStore(store_path) as store:
      foreign = store.collection_progress(COLLECTION)[0] == 0 and store.judgements()
    if foreign:  # judgements this collection did not record round by round: keep them, start over
      collect.set_aside(store_path)
  with FeedbackStore(store_path) as store:
    if not complete.exists():
      sampling_cfg, labeler_cfg = config.policy, config.labeler
      tok = policy.tokenizer
      generate = jax.jit(functools.partial(
          sampling.generate, model=Transformer(policy.model), max_new_tokens=sampling_cfg.max_new_tokens,
          temperature=sampling_cfg.temperature, eos_id=tok.eos_id, pad_id=tok.pad_id))
      labeler = labelers.SimulatedLabeler(scorers.get_scorer(labeler_cfg.scorer), beta=labeler_cfg.beta,
                                          tie_margin=labeler_cfg.tie_margin, seed=labeler_cfg.seed)
      collect.collect_comparisons(
          store, functools.partial(sampling.complete, generate, policy.params, tok),
          prompts_lib.wordnet_openings(sampling_cfg.num_prompts, sampling_cfg.prompt_words, config.seed), labeler,
          samples_per_prompt=sampling_cfg.samples_per_prompt, batch_size=sampling_cfg.sample_batch_size,
          model=f"{sampling_cfg.init_from or 'policy'}@{policy.step}", key=key, source="wordnet_examples",
          collection=COLLECTION)
      files.atomic_write_text(complete, json.dumps({"comparisons": len(store.judgements(kind="comparison"))}))
    return store.export_preferences(workdir / "preferences.jsonl")


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  mesh = sharding.make_mesh(config.mesh)
  key = jax.random.key(config.seed)
  policy, policy_dir = trained.load_policy(config.policy.init_from, workdir, mesh, pretrain=functools.partial(
      runs.run_experiment, PRETRAIN, smoke=config.policy.pretrain_smoke))
  records = collect_feedback(config, policy, workdir, jax.random.fold_in(key, 3))
  train, test = preferences.split_by_prompt(records, config.reward.test_fraction)
  print(f"preferences: {len(train)} train, {len(test)} held out, from {workdir / 'feedback.db'}", flush=True)

  reward_cfg = config.reward
  start = reward_model.start_scalar_model(workdir, init_from=reward_cfg.init_from or str(policy_dir),
                                          fallback=policy.model, texts=[], mesh=mesh, optim=config.optim,
                                          key=jax.random.fold_in(key, 0), rules=config.mesh.rules,
                                          adapters=reward_cfg.lora)
  model, init_fn = start.model, start.init_fn
  pairs = functools.partial(preferences.reward_model_pairs, tokenizer=start.tokenizer, seq_len=reward_cfg.seq_len,
                            with_prompt=reward_cfg.with_prompt)
  dataset = rows.rows_dataset(pairs(train), reward_cfg.batch_size // jax.process_count(), seed=config.seed,
                              shard_index=jax.process_index(), shard_count=jax.process_count())

  # The labeler's noiseless preference on the held-out pairs, in the same chosen/rejected order.
  scorer = scorers.get_scorer(config.labeler.scorer)
  true_margin = scorer.score([r["chosen"] for r in test]) - scorer.score([r["rejected"] for r in test])
  untied = np.abs(true_margin) > 0
  test_batches = rows.eval_row_batches(pairs(test), reward_cfg.eval_batch_size)
  pair_fn = jax.jit(functools.partial(reward.pair_rewards, model=model))

  def evaluate(state) -> dict[str, float]:
    margin = reward_metrics.pair_margins(pair_fn, state.params, test_batches, mesh)
    vs_labels = reward_metrics.chosen_first_metrics(margin)  # against the labeler's own (noisy) labels
    metrics = {"accuracy_vs_labels": vs_labels["accuracy"], "ece_vs_labels": vs_labels["ece"],
               "brier_vs_labels": vs_labels["brier"],
               "accuracy_vs_noiseless": float(np.mean((margin > 0) == (true_margin > 0), where=untied)),
               "label_agreement_with_noiseless": float(np.mean(true_margin > 0, where=untied)),
               "pairs": float(len(margin))}
    tqdm.write(f"step {int(state.step)}: held-out pairwise accuracy {metrics['accuracy_vs_noiseless']:.3f} "
               f"against the noiseless labeler ({metrics['label_agreement_with_noiseless']:.3f} for its own "
               f"noisy labels)")
    return metrics

  if not test or not untied.any():
    raise ValueError(f"no held-out pairs with a preference: raise policy.num_prompts ({config.policy.num_prompts}) "
                     f"or reward.test_fraction ({reward_cfg.test_fraction})")
  step_fn = common.jit_step(functools.partial(
      reward.train_step, model=model, tx=start.tx, kind="preference", warmup_steps=config.optim.warmup_steps,
      total_steps=config.loop.steps, min_lr_ratio=config.optim.min_lr_ratio), mesh, start.state_shardings)
  (workdir / "data.json").write_text(json.dumps({"train_pairs": len(train), "test_pairs": len(test)}) + "\n")
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=init_fn,
                    state_shardings=start.state_shardings, step_fn=step_fn, data_iterator=iter(dataset),
                    hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=reward_cfg.batch_size * reward_cfg.seq_len, evaluate=evaluate)
