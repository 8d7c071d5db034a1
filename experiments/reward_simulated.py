"""Reward model from simulated feedback: sample, label into the store, export, train Bradley-Terry.

  rlhf-jax run experiments/reward_simulated.py --set policy.init_from=workdirs/lm
  rlhf-jax run experiments/reward_simulated.py                  # trains its own policy first
  rlhf-jax run experiments/reward_simulated.py --smoke          # < 1 min on CPU

The whole human-feedback path with a simulated labeler standing in for people, as in the
overoptimization literature: a policy LM writes two continuations of each prompt (the first words
of WordNet example sentences); a lexicon labeler with Bradley-Terry noise (P(a > b) =
sigmoid(beta (r_a - r_b)), ties within a margin) judges each pair into the feedback store under
its own name; the store's exported preferences train a Bradley-Terry reward model that starts
from the policy's trunk (or another LM's: `reward.init_from`, e.g. a smaller one). Held-out prompts measure the reward model's pairwise accuracy against
the labeler's noiseless preference (the sign of r_a - r_b, ties left out).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from rlhf_jax import pretrained, runs, sampling, sharding
from rlhf_jax.data import corpora, rows
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.eval import lm as lm_eval
from rlhf_jax.eval import reward as reward_eval
from rlhf_jax.feedback import labelers
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common, reward

PRETRAIN = Path(__file__).with_name("pretrain_tiny.py")


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


def collect_feedback(store: FeedbackStore, policy, prompts: list[str], config: Config, key: jax.Array) -> None:
  """K samples per prompt from the policy; the simulated labeler compares every pair into the store.

  Comparing all K(K-1)/2 pairs of K samples is how InstructGPT collects rankings (Ouyang et al.
  2022, sec. 3.5): labels are cheap next to sampling, so K = 4 gives 6 pairs for twice the
  sampling of K = 2's one pair.
  """
  pc, lc = config.policy, config.labeler
  K = pc.samples_per_prompt
  model = Transformer(policy.model)
  generate = jax.jit(functools.partial(
      sampling.generate, model=model, max_new_tokens=pc.max_new_tokens, temperature=pc.temperature,
      eos_id=policy.tokenizer.eos_id, pad_id=policy.tokenizer.pad_id))
  labeler = labelers.SimulatedLabeler(labelers.get_scorer(lc.scorer), beta=lc.beta, tie_margin=lc.tie_margin,
                                      seed=lc.seed)
  model_name = f"{config.policy.init_from or 'policy'}@{policy.step}"
  for start in tqdm(range(0, len(prompts), pc.sample_batch_size), desc="sample+label", leave=False):
    batch = prompts[start:start + pc.sample_batch_size]
    samples = [lm_eval.complete(generate, policy.params, policy.tokenizer, batch, jax.random.fold_in(key, K * start + k))
               for k in range(K)]
    pairs = [(i, a, b) for i in range(len(batch)) for a in range(K) for b in range(a + 1, K)
             if samples[a][i].strip() and samples[b][i].strip() and samples[a][i] != samples[b][i]]
    used = sorted({(i, k) for i, a, b in pairs for k in (a, b)})
    ids = store.add_samples([{"prompt": batch[i], "response": samples[k][i], "model": model_name} for i, k in used],
                            source="wordnet_examples")
    sample_id = dict(zip(used, ids))
    outcomes = labeler.compare([samples[a][i] for i, a, _ in pairs], [samples[b][i] for i, _, b in pairs])
    store.compare_many([(sample_id[i, a], sample_id[i, b], outcome) for (i, a, b), outcome in zip(pairs, outcomes)],
                       labeler=labeler.name)  # one transaction (and one fsync) a batch, not one a comparison


def set_aside_interrupted(store_path: Path) -> Path:
  """Renames the store of an interrupted collection (with its WAL files) to `<name>.interrupted-N.db`.

  Collection is deterministic, so starting it over gives the data of an uninterrupted run; training
  on the partial store instead would silently use fewer pairs. Nothing is deleted.
  """
  n = 0
  while (aside := store_path.with_name(f"{store_path.stem}.interrupted-{n}{store_path.suffix}")).exists():
    n += 1
  for suffix in ("-wal", "-shm"):
    if (extra := Path(f"{store_path}{suffix}")).exists():
      extra.rename(f"{aside}{suffix}")
  store_path.rename(aside)  # last: the WAL files moved first belong to it
  print(f"{store_path}: an interrupted collection; kept as {aside.name}, collecting again", flush=True)
  return aside


def pair_arrays(records: list[dict], tokenizer, seq_len: int, with_prompt: bool = True) -> dict[str, np.ndarray]:
  """Tokens of the chosen and rejected sides (after their prompt when `with_prompt`), right-padded."""
  arrays = {}
  for side in ("chosen", "rejected"):
    texts = [(r["prompt"] if with_prompt else "") + r[side] for r in records]
    arrays[side], arrays[f"{side}_mask"] = rows.pad_rows(tokenizer.encode_batch(texts), seq_len, tokenizer.pad_id)
  return arrays


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  mesh = sharding.make_mesh(config.mesh)
  key = jax.random.key(config.seed)
  policy, policy_dir = pretrained.load_policy(config.policy.init_from, workdir, mesh,
                                               pretrain=functools.partial(runs.run_experiment, PRETRAIN,
                                                                          smoke=config.policy.pretrain_smoke))

  store_path = workdir / "feedback.db"
  complete = workdir / "feedback_complete.json"
  if store_path.exists() and not complete.exists():
    set_aside_interrupted(store_path)
  with FeedbackStore(store_path) as store:
    if not complete.exists():  # a resumed run reuses the judgements of a finished collection
      prompts = prompts_lib.wordnet_openings(config.policy.num_prompts, config.policy.prompt_words, config.seed)
      collect_feedback(store, policy, prompts, config, jax.random.fold_in(key, 3))
      corpora.atomic_write_bytes(complete, json.dumps({"comparisons": len(store.judgements(kind="comparison"))}).encode())
    records = store.export_preferences(workdir / "preferences.jsonl")
  test_ids = {r["prompt_id"] for r in records
              if corpora.is_validation(str(r["prompt_id"]), config.reward.test_fraction)}
  train = [r for r in records if r["prompt_id"] not in test_ids]
  test = [r for r in records if r["prompt_id"] in test_ids]
  print(f"preferences: {len(train)} train, {len(test)} held out, from {store_path}", flush=True)

  rc = config.reward
  tx = common.make_optimizer(config.optim)
  start = pretrained.start_scalar_model(workdir, init_from=rc.init_from or str(policy_dir), fallback=policy.model,
                                        texts=[], mesh=mesh, tx=tx, key=jax.random.fold_in(key, 0),
                                        rules=config.mesh.rules)
  model, init_fn = start.model, start.init_fn
  dataset = rows.rows_dataset(pair_arrays(train, start.tokenizer, rc.seq_len, rc.with_prompt), rc.batch_size // jax.process_count(),
                              seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count())

  # The labeler's noiseless preference on the held-out pairs, in the same chosen/rejected order.
  scorer = labelers.get_scorer(config.labeler.scorer)
  true_margin = scorer.score([r["chosen"] for r in test]) - scorer.score([r["rejected"] for r in test])
  untied = np.abs(true_margin) > 0
  test_batches = rows.eval_row_batches(pair_arrays(test, start.tokenizer, rc.seq_len, rc.with_prompt), rc.eval_batch_size)
  pair_fn = jax.jit(functools.partial(reward.pair_rewards, model=model))

  def evaluate(state) -> dict[str, float]:
    margins = []
    for batch in test_batches:
      r_chosen, r_rejected = pair_fn(state.params, sharding.put_batch(
          {k: v for k, v in batch.items() if k != "row_mask"}, mesh))
      margins.append(np.asarray(r_chosen - r_rejected)[batch["row_mask"] > 0])
    margin = np.concatenate(margins)
    # Against the labeler's own (noisy) labels. Each pair is shown in a fixed random orientation
    # (chosen first or second), so calibration sees both outcomes, not only "first side wins".
    flip = np.random.default_rng(0).random(margin.size) < 0.5
    vs_labels = reward_eval.pairwise_metrics(np.where(flip, -margin, margin), ~flip)
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
                     f"or reward.test_fraction ({rc.test_fraction})")
  step_fn = common.jit_step(functools.partial(
      reward.train_step, model=model, tx=tx, kind="preference", warmup_steps=config.optim.warmup_steps,
      total_steps=config.loop.steps, min_lr_ratio=config.optim.min_lr_ratio), mesh, start.state_shardings)
  (workdir / "data.json").write_text(json.dumps({"train_pairs": len(train), "test_pairs": len(test)}) + "\n")
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=init_fn,
                    state_shardings=start.state_shardings, step_fn=step_fn, data_iterator=iter(dataset),
                    hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=rc.batch_size * rc.seq_len, evaluate=evaluate)
