"""The RL trainer: one loop for PPO and the critic-free policy gradients on any `Task`.

  policy = rl.start_policy(config.policy, workdir, mesh, pretrain=...)
  task = rl.sentiment_task(config.task, tokenizer=policy.tokenizer, mesh=mesh, seed=config.seed)
  rl.train(config, task, policy, workdir, mesh)

The trainer owns what every RL run needs: the frozen reference (the starting policy), the value
model when the algorithm has one (the policy's trunk with a zero head, or the reward model), the
reward normalization on reference samples (Ziegler et al. 2019: measured once, saved to
`reward_norm.json`, so a resumed run optimizes the same reward), the jitted iteration
(`rl.iteration`: rollout, score, update in one program), evaluation on the task's held-out
prompts (gold and proxy reward, KL to the reference per sequence, length, EOS rate, a sample
table in `samples.jsonl`), and the loop with Orbax checkpoints and resume (`loop.train_loop`).

`rl.algorithm` picks the update: "ppo" (`steps.ppo`), a critic-free estimator of `steps.pg`
("reinforce", "rloo", "grpo", "remax"), "online_dpo" (two samples of each prompt ranked by the
reward, one `dpo.kind` update: `steps.dpo.online_dpo_step`) or "rsft" (best-of-n rejection-sampling
fine-tuning: `steps.rsft`). Settings that change no shape are `hp` (the algorithm's
`hparams`: learning rate, clip range, KL target, temperature, ...); the rest is static.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from rlhf_jax import files, logs, rewards
from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sharding, trained
from rlhf_jax.advantages import sequence_kl
from rlhf_jax.config import check_range
from rlhf_jax.data import rows
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.rewards import scorers
from rlhf_jax.rl import iteration as iteration_lib
from rlhf_jax.rl.task import PromptFileConfig, Task, prompt_file_task, sentiment_task
from rlhf_jax.steps import common, dpo, ilql, pg, ppo, rsft

ALGORITHMS = ("ppo",) + pg.ESTIMATORS + ("online_dpo", "rsft")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  init_from: str = ""  # an LM workdir; "" pretrains one into <workdir>/policy first (`start_policy`)
  pretrain_smoke: bool = False  # that pretraining in its --smoke mode
  # rank > 0: train LoRA adapters of the policy (and of PPO's value model, whose scalar head trains
  # too) instead of every weight; the reference is the same base weights without the adapters.
  lora: lora.LoraConfig = lora.LoraConfig()


@dataclasses.dataclass(frozen=True)
class RLConfig:
  algorithm: Literal["ppo", "reinforce", "rloo", "grpo", "remax", "online_dpo", "rsft"] = "ppo"
  batch_size: int = 32  # responses per iteration: group_size samples of batch_size / group_size prompts
  value_init: Literal["policy", "reward"] = "policy"  # PPO's value model: policy trunk + zero head, or the RM
  normalize_reward: bool = True  # mean 0, std 1 on the reference policy's samples
  normalize_samples: int = 256
  eval_batch_size: int = 64
  samples_to_log: int = 8

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"rl.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
    if self.value_init not in ("policy", "reward"):
      raise ValueError(f"rl.value_init must be 'policy' or 'reward', got {self.value_init!r}")
    check_range(self, "rl", ">= 1", "batch_size", "eval_batch_size", "normalize_samples")


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  policy: PolicyConfig = PolicyConfig()
  rl: RLConfig = RLConfig()
  # Continuations have a fixed length, as in Ziegler et al.'s sentiment task: a tiny LM seldom ends
  # within max_new_tokens, and a no-EOS penalty would teach it to stop rather than to please.
  # The KL controller's gain K_beta = batch / horizon is eq. 3's 0.1 per update (32 / 320). Ziegler
  # et al.'s code constant (horizon 10000) is made for batches of 512: at batch 32 the coefficient
  # would hardly move within a run of a hundred updates, and KL would run far past its target.
  ppo: ppo.PPOConfig = ppo.PPOConfig(kl_coef=0.05, kl_target=3.0, kl_horizon=320.0, epochs=4, minibatches=2,
                                     penalize_no_eos=False)
  pg: pg.PGConfig = pg.PGConfig()
  dpo: dpo.DPOConfig = dpo.DPOConfig()  # online_dpo: the loss (dpo.kind), beta, temperature
  rsft: rsft.RSFTConfig = rsft.RSFTConfig()
  ilql: ilql.ILQLConfig = ilql.ILQLConfig()  # offline ILQL (`rl.train_offline_ilql`), not an rl.algorithm
  optim: common.OptimConfig = common.OptimConfig(learning_rate=2e-4, warmup_steps=5, weight_decay=0.0,
                                                 min_lr_ratio=1.0)
  loop: LoopConfig = LoopConfig(steps=100, log_every=5, eval_every=25, checkpoint_every=25)
  mesh: sharding.MeshConfig = sharding.MeshConfig()

  def __post_init__(self):
    if self.rl.algorithm in ("rloo", "grpo") and self.pg.group_size < 2:
      raise ValueError(f"rl.algorithm={self.rl.algorithm} needs pg.group_size >= 2, got {self.pg.group_size}")
    if self.rl.batch_size % self.group_size:
      field = {"online_dpo": "a pair", "rsft": "rsft.n"}.get(self.rl.algorithm, "pg.group_size")
      raise ValueError(f"rl.batch_size={self.rl.batch_size} must be a multiple of the samples per prompt "
                       f"({field}={self.group_size})")

  @property
  def group_size(self) -> int:
    """Samples per prompt in an iteration (PPO: one; online DPO: a pair)."""
    return {"ppo": 1, "online_dpo": 2, "rsft": self.rsft.n}.get(self.rl.algorithm, self.pg.group_size)

  @property
  def updates_per_iteration(self) -> int:
    return {"ppo": self.ppo.epochs * self.ppo.minibatches, "online_dpo": 1,
            "rsft": self.rsft.epochs}.get(self.rl.algorithm, self.pg.epochs)


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """An RL algorithm bound to its models: everything `train` (or a benchmark, or a vmapped sweep)
  needs to run iterations."""
  iteration: Callable  # (state, batch, key, hp, frozen) -> (state, metrics), pure, not yet jitted
  init: Callable  # (policy_params, value_params, kl_coef) -> state
  hp: Any
  value_model: Transformer | None


def value_model_config(policy: ModelConfig) -> ModelConfig:
  """PPO's value model by default: the policy's trunk with a scalar head that starts at zero."""
  return dataclasses.replace(policy, scalar_head=True, scalar_head_init="zeros")


def zero_value_params(policy_params: Any, value_config: ModelConfig) -> Any:
  head = {"kernel": jnp.zeros((value_config.d_model, 1), jnp.float32), "bias": jnp.zeros((1,), jnp.float32)}
  return {**policy_params, "scalar_head": head}


@dataclasses.dataclass(frozen=True)
class Models:
  """The modules an RL run trains and the parameters they start from."""
  policy_model: Transformer  # with `policy.lora`, the adapted module
  start_params: Any  # the policy's starting parameters (with fresh adapters under LoRA)
  value_model: Transformer | None = None  # PPO's
  value_params: Any = None


def start_models(config: Config, policy: trained.TrainedModel, *, reward: Any = None, key: jax.Array,
                 value: bool | None = None) -> Models:
  """The policy (and, with `value`, default for PPO, the value model: the policy's trunk with a zero
  head, or the reward model `reward` with rl.value_init=reward), adapted by `config.policy.lora`
  when its rank is set: the loaded arrays are the base, the adapters are fresh (`lora.add_adapters`,
  no copy)."""
  adapters = config.policy.lora
  policy_model, start_params = Transformer(policy.model), policy.params
  value_model, value_params = None, None
  with_value = config.rl.algorithm == "ppo" if value is None else value
  if with_value:
    if config.rl.value_init == "reward":
      if not isinstance(reward, rewards.RewardModelReward):
        raise ValueError(f"rl.value_init=reward needs a reward model on the policy's tokens, got the reward "
                         f"{getattr(reward, 'name', reward)!r}")
      value_model, value_params = reward.model, reward.params
    else:
      value_model = Transformer(value_model_config(policy.model))
      value_params = zero_value_params(policy.params, value_model.config)
  if adapters.rank:
    policy_model = lora.adapt(policy_model, adapters)
    start_params = lora.add_adapters(policy_model, start_params, jax.random.fold_in(key, 0))
    if value_model is not None:
      value_model = lora.adapt(value_model, adapters)
      value_params = lora.add_adapters(value_model, value_params, jax.random.fold_in(key, 1))
  return Models(policy_model, start_params, value_model, value_params)


def optimizer(config: Config) -> common.Optimizer:
  """`config.optim`'s AdamW on what an RL run trains: every policy (and value) weight, or with
  `policy.lora` the adapters and PPO's value head (`value/scalar_head`), nothing else."""
  return common.make_optimizer(config.optim, lora.trainable(also=r"^value/scalar_head/")
                               if config.policy.lora.rank else None)


def build_algorithm(config: Config, *, policy_model: Transformer, value_model: Transformer | None,
                    max_new_tokens: int, eos_id: int, pad_id: int) -> Algorithm:
  """The iteration, initializer and hyperparameters of `config.rl.algorithm` (with `policy.lora`,
  `policy_model` and `value_model` are the adapted modules of `start_models`)."""
  tx = optimizer(config)
  schedule = dict(warmup_steps=config.optim.warmup_steps, min_lr_ratio=config.optim.min_lr_ratio,
                  total_steps=config.loop.steps * config.updates_per_iteration)
  algorithm = config.rl.algorithm
  if algorithm == "ppo":
    if value_model is None:
      raise ValueError("rl.algorithm=ppo needs a value model")
    update = functools.partial(ppo.ppo_step, policy_model=policy_model, value_model=value_model, tx=tx,
                               config=config.ppo, **schedule)

    def init(policy_params, value_params, kl_coef):
      return ppo.init_state(policy_params, value_params, tx=tx, kl_coef=kl_coef)
    hp = config.ppo.hparams(config.optim)
  elif algorithm in ("online_dpo", "rsft"):
    value_model = None
    if algorithm == "online_dpo":
      update = functools.partial(dpo.online_dpo_step, model=policy_model, tx=tx, kind=config.dpo.kind, **schedule)
      hp = config.dpo.hparams(config.optim)
    else:
      update = functools.partial(rsft.rsft_step, model=policy_model, tx=tx, config=config.rsft, **schedule)
      hp = config.rsft.hparams(config.optim)

    def init(policy_params, value_params, kl_coef):
      del value_params, kl_coef  # the reference enters the loss (DPO) or not at all (RSFT)
      return common.TrainState(step=jnp.zeros((), jnp.int32), params=policy_params, opt_state=tx.init(policy_params))
  else:
    value_model = None
    update = functools.partial(pg.pg_step, model=policy_model, tx=tx, config=config.pg, estimator=algorithm,
                               **schedule)

    def init(policy_params, value_params, kl_coef):
      del value_params
      return pg.init_state(policy_params, tx=tx, kl_coef=kl_coef)
    hp = config.pg.hparams(config.optim)
  iteration = functools.partial(
      iteration_lib.rl_iteration, update=update, policy_model=policy_model, value_model=value_model,
      max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
      greedy_baseline=algorithm == "remax")
  return Algorithm(iteration=iteration, init=init, hp=hp, value_model=value_model)


def initial_kl_coef(config: Config) -> float:
  return config.ppo.kl_coef if config.rl.algorithm == "ppo" else config.pg.kl_coef


def start_policy(config: PolicyConfig, workdir: str | Path, mesh: Mesh, *,
                 pretrain: Callable[..., Any] | None = None) -> trained.TrainedModel:
  """The starting policy: `config.init_from`, or (init_from="") a model that `pretrain(workdir=...)`
  trains into `<workdir>/policy` first (rerunning resumes it). The tokenizer is copied into
  `workdir`, so the run's workdir is self-contained."""
  if not config.init_from and pretrain is None:
    raise ValueError("policy.init_from is empty: name the workdir of a trained language model")
  policy, _ = trained.load_policy(config.init_from, workdir, mesh, pretrain=pretrain)
  return policy


def start_sentiment(config: Config, workdir: str | Path, *,
                    pretrain: Callable[..., Any] | None = None) -> tuple[Mesh, trained.TrainedModel, Task]:
  """What every sentiment experiment starts from: the mesh of `config.mesh`, the starting policy
  (`start_policy`) and the sentiment task of `config.task` (a `SentimentConfig`) on its tokenizer."""
  mesh = sharding.make_mesh(config.mesh)
  policy = start_policy(config.policy, workdir, mesh, pretrain=pretrain)
  return mesh, policy, sentiment_task(config.task, tokenizer=policy.tokenizer, mesh=mesh, seed=config.seed)


def make_sampler(policy_model: Transformer, reward, *, max_new_tokens: int, eos_id: int, pad_id: int,
                 roll: Callable | None = None) -> Callable:
  """`sample(policy_params, frozen, prompt_BxP, mask_BxP, key, temperature) -> (rollout, raw reward_B)`,
  both on the host, for evaluation and reward normalization.

  Sampling is a jitted program without the reward, so the persistent compilation cache keeps it
  whatever the reward is (JAX never caches a program that holds a host callback); a host reward
  then scores the fetched samples directly, a device reward in a small jitted program of its own.
  `roll`, a jitted `(policy_params, ref_params, prompt_BxP, mask_BxP, key, temperature) -> Rollout`,
  decodes another way (ILQL's advantage logits: `rl.offline_ilql`); default the policy's own samples.
  """
  if roll is None:
    roll = jax.jit(functools.partial(iteration_lib.sample, policy_model=policy_model, max_new_tokens=max_new_tokens,
                                     eos_id=eos_id, pad_id=pad_id))
  on_device = not isinstance(reward, rewards.HostReward)
  score = jax.jit(lambda reward, r: reward.score(r.prompt_BxP, r.prompt_mask_BxP, r.response_BxN,
                                                 r.response_mask_BxN))

  def sample(policy_params, frozen: dict, prompt_BxP, mask_BxP, key, temperature):
    r = roll(policy_params, frozen["ref"], prompt_BxP, mask_BxP, key, temperature)
    if on_device:
      return jax.device_get((r, score(frozen["reward"], r)))
    h = jax.device_get(r)
    return h, frozen["reward"].score_on_host(h.prompt_BxP, h.prompt_mask_BxP, h.response_BxN, h.response_mask_BxN)
  return sample


def reference_normalization(sample, params, frozen: dict, tokens_NxP: np.ndarray, mask_NxP: np.ndarray, *,
                            batch_size: int, num_samples: int, key: jax.Array, temperature: jax.Array,
                            mesh: Mesh) -> dict[str, float]:
  """{"mean", "std", "samples"} of the raw reward on the reference policy's samples of the first
  `num_samples` prompts (whole batches of `batch_size`), drawn with the policy's starting `params`."""
  scores = []
  for i in range(0, min(num_samples, len(tokens_NxP)) - batch_size + 1, batch_size):
    placed = sharding.put_batch({"p": tokens_NxP[i:i + batch_size], "m": mask_NxP[i:i + batch_size]}, mesh)
    _, raw_B = sample(params, frozen, placed["p"], placed["m"], jax.random.fold_in(key, i), temperature)
    scores.append(np.asarray(raw_B, np.float64))
  if not scores:
    raise ValueError(f"no whole batch of {batch_size} prompts among the first {num_samples} to normalize the reward on "
                     "(rl.normalize_samples)")
  scores = np.concatenate(scores)
  std = float(scores.std())
  if std < 1e-6:  # a reward constant on the reference's samples has no scale to measure: keep its own
    tqdm.write(f"the reward is constant ({scores.mean():.4g}) on {scores.size} reference samples: normalized by its "
               "mean only")
    std = 1.0
  return {"mean": float(scores.mean()), "std": std, "samples": int(scores.size)}


def evaluate(sample, policy_params, frozen: dict, task: Task, tokenizer, *, batch_size: int, key: jax.Array,
             temperature: jax.Array, mesh: Mesh, samples_path: Path | None = None, step: int = 0,
             samples_to_log: int = 8) -> dict[str, float]:
  """Gold and proxy reward, KL to the reference (nats/sequence), length and EOS rate on the task's
  held-out prompts (every whole batch; batch i samples with `fold_in(key, i)`, so the same
  parameters give the same numbers)."""
  golds, raws, proxies, kls, lengths, ended = [], [], [], [], [], []
  tokens_NxP, mask_NxP = task.test.tokens_NxP, task.test.mask_NxP
  norm = jax.device_get(frozen["norm"])  # once, not once a batch
  for i in range(0, len(tokens_NxP) - batch_size + 1, batch_size):
    placed = sharding.put_batch({"p": tokens_NxP[i:i + batch_size], "m": mask_NxP[i:i + batch_size]}, mesh)
    r, raw_B = sample(policy_params, frozen, placed["p"], placed["m"], jax.random.fold_in(key, i), temperature)
    responses = rollout_lib.decode_responses(tokenizer, r.response_BxN, r.response_mask_BxN)
    if task.gold is not None:
      golds.append(scorers.score_as_judge(task.gold, task.test.texts[i:i + batch_size], responses))
    raws.append(np.asarray(raw_B))
    proxies.append(np.asarray(iteration_lib.normalized(raw_B, norm)))
    kls.append(np.asarray(sequence_kl(r.logp_BxN, r.ref_logp_BxN, r.response_mask_BxN)))
    lengths.append(r.response_mask_BxN.sum(-1))
    ended.append(r.ended_B)
    if i == 0 and samples_path is not None:
      logs.write_samples(samples_path, step, list(task.test.texts[:samples_to_log]), responses[:samples_to_log])
  if not proxies:
    raise ValueError(f"no whole batch of {batch_size} held-out prompts (rl.eval_batch_size) among {len(tokens_NxP)}")
  cat = np.concatenate
  metrics = {"proxy_score": float(cat(proxies).mean()), "reward_raw": float(cat(raws).mean()), "kl": float(cat(kls).mean()),
             "response_length": float(cat(lengths).mean()), "eos_rate": float(cat(ended).mean())}
  if golds:
    metrics["gold_score"] = float(cat(golds).mean())
  return metrics


def _norm_arrays(norm: dict[str, float]) -> dict[str, jax.Array]:
  return {"mean": jnp.asarray(norm["mean"], jnp.float32), "std": jnp.asarray(norm["std"], jnp.float32)}


def check_task(config: Config, task: Task, policy: trained.TrainedModel, mesh: Mesh) -> None:
  """What every run on `task` needs, checked before any work starts: batches the mesh can split,
  prompt + response within the policy's positions, a whole evaluation batch of held-out prompts."""
  rc = config.rl
  sharding.check_batch_divisible(rc.batch_size, mesh, "rl.batch_size")
  sharding.check_batch_divisible(rc.eval_batch_size, mesh, "rl.eval_batch_size")
  if task.prompt_len + task.max_new_tokens > policy.model.max_len:
    raise ValueError(f"prompt length {task.prompt_len} + max_new_tokens {task.max_new_tokens} exceeds the policy's "
                     f"max_len={policy.model.max_len}")
  if len(task.test) < rc.eval_batch_size:
    raise ValueError(f"only {len(task.test)} held-out prompts for rl.eval_batch_size={rc.eval_batch_size}: hold out "
                     "more prompts or lower rl.eval_batch_size")


def _saved_normalization(path: str | Path, measure: Callable[[], dict[str, float]], *,
                         enabled: bool = True) -> dict[str, float]:
  """The reward normalization of a run: measured once (`measure()`: `reference_normalization`)
  and saved to `path`, so a resumed run uses the same reward; {"mean": 0, "std": 1} if not `enabled`."""
  path = Path(path)
  if not enabled:
    return {"mean": 0.0, "std": 1.0}
  if path.exists():
    return json.loads(path.read_text())
  norm = measure()
  files.atomic_write_bytes(path, (json.dumps(norm) + "\n").encode())
  return norm


def reference_and_reward(config: Config, task: Task, policy: trained.TrainedModel, workdir: Path, mesh: Mesh, *,
                         temperature: jax.Array, models: Models | None = None) -> tuple[dict, Any, Callable]:
  """`(frozen, frozen_shardings, sample)`: what no update changes, placed on `mesh` (the reference's
  parameters `ref`, the task's `reward` and its normalization `norm`), and the sampler of
  `make_sampler`. The normalization (Ziegler et al. 2019: gain and bias that give the reference
  policy's samples at `temperature` mean 0 and std 1) is measured once and saved to
  `<workdir>/reward_norm.json`, so a resumed run optimizes and reports the same reward.

  With LoRA (`models` from `start_models`, whose starting parameters hold adapters) `ref` is None:
  the reference is the policy's own base weights (`iteration.reference_params`), not a copy."""
  rc, tok = config.rl, policy.tokenizer
  policy_model, start_params = ((models.policy_model, models.start_params) if models is not None
                                else (Transformer(policy.model), policy.params))
  ref = None if lora.has_adapters(start_params) else start_params
  frozen = {"ref": ref, "reward": task.reward, "norm": _norm_arrays({"mean": 0.0, "std": 1.0})}
  frozen_shardings = sharding.tree_shardings(frozen, mesh, config.mesh.rules)
  frozen = jax.device_put(frozen, frozen_shardings)
  sample = make_sampler(policy_model, task.reward, max_new_tokens=task.max_new_tokens,
                        eos_id=tok.eos_id, pad_id=tok.pad_id)
  key = jax.random.fold_in(jax.random.key(config.seed), 10_000)
  norm = _saved_normalization(workdir / "reward_norm.json", functools.partial(
      reference_normalization, sample, start_params, frozen, task.train.tokens_NxP, task.train.mask_NxP,
      batch_size=rc.batch_size, num_samples=rc.normalize_samples, key=key, temperature=temperature, mesh=mesh),
      enabled=rc.normalize_reward)
  frozen = {**frozen, "norm": jax.device_put(_norm_arrays(norm), sharding.replicated(mesh))}
  return frozen, frozen_shardings, sample


def state_evaluator(config: Config, task: Task, tokenizer, sample, frozen: dict, workdir: Path, mesh: Mesh, *,
                    temperature: jax.Array, updates_per_iteration: int = 1) -> Callable[[Any], dict[str, float]]:
  """`evaluate(state) -> metrics` for `loop.train_loop`: `evaluate` on the held-out prompts at the
  loop's step (`state.step` counts optimizer updates), with samples appended to `samples.jsonl`."""
  rc = config.rl
  eval_key = jax.random.fold_in(jax.random.key(config.seed), 7)

  def evaluate_state(state) -> dict[str, float]:
    it = int(state.step) // updates_per_iteration
    metrics = evaluate(sample, iteration_lib.policy_params_of(state.params), frozen, task, tokenizer,
                       batch_size=rc.eval_batch_size, key=eval_key, temperature=temperature, mesh=mesh,
                       samples_path=workdir / "samples.jsonl", step=it, samples_to_log=rc.samples_to_log)
    if hasattr(state, "kl_coef"):
      metrics["kl_coef"] = float(state.kl_coef)
    gold = f"gold ({task.gold_name}) {metrics['gold_score']:.3f}, " if "gold_score" in metrics else ""
    tqdm.write(f"iteration {it}: {gold}proxy {metrics['proxy_score']:.3f}, KL {metrics['kl']:.2f}, "
               f"length {metrics['response_length']:.1f}")
    return metrics
  return evaluate_state


def train(config: Config, task: Task, policy: trained.TrainedModel, workdir: str | Path,
          mesh: Mesh | None = None) -> Any:
  """Trains `policy` on `task` with `config.rl.algorithm`; resumes from `workdir`'s checkpoints.
  Returns the final state (also saved)."""
  workdir = Path(workdir)
  mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
  rc = config.rl
  prompts_per_batch = rc.batch_size // config.group_size
  check_task(config, task, policy, mesh)
  if len(task.train) < prompts_per_batch:
    raise ValueError(f"only {len(task.train)} train prompts for {prompts_per_batch} prompts per iteration")
  key = jax.random.key(config.seed)
  models = start_models(config, policy, reward=task.reward, key=jax.random.fold_in(key, 2))
  workdir.mkdir(parents=True, exist_ok=True)
  trained.save_model_config(workdir, policy.model, config.policy.lora)
  tok = policy.tokenizer
  algorithm = build_algorithm(config, policy_model=models.policy_model, value_model=models.value_model,
                              max_new_tokens=task.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id)
  hp = algorithm.hp
  repl = sharding.replicated(mesh)
  frozen, frozen_shardings, sample = reference_and_reward(config, task, policy, workdir, mesh,
                                                          temperature=hp.temperature, models=models)

  init, state_shardings = common.sharded_init(algorithm.init, mesh, config.mesh.rules, models.start_params,
                                              models.value_params, initial_kl_coef(config))
  init_fn = functools.partial(init, models.start_params, models.value_params, initial_kl_coef(config))
  step = jax.jit(algorithm.iteration, in_shardings=(state_shardings, sharding.batch_sharded(mesh), repl, repl,
                                                    frozen_shardings),
                 out_shardings=(state_shardings, repl), donate_argnums=0)

  def step_fn(state, batch, rng, hp):
    return step(state, {"prompt": batch["prompt"], "prompt_mask": batch["prompt_mask"]}, rng, hp, frozen)

  dataset = rows.rows_dataset({"prompt": task.train.tokens_NxP, "prompt_mask": task.train.mask_NxP},
                              prompts_per_batch, seed=config.seed).map(
                                  functools.partial(iteration_lib.repeat_rows, times=config.group_size))
  evaluate_state = state_evaluator(config, task, tok, sample, frozen, workdir, mesh, temperature=hp.temperature,
                                   updates_per_iteration=config.updates_per_iteration)
  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=init_fn,
                    state_shardings=state_shardings, step_fn=step_fn, data_iterator=iter(dataset), hp=hp,
                    rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=rc.batch_size * (task.prompt_len + task.max_new_tokens), evaluate=evaluate_state)


@dataclasses.dataclass(frozen=True)
class PromptsConfig(Config):
  """`Config` whose task is a user's prompts (`task.path`) and the reward `task.reward` names: the
  config of the ppo and grpo recipes (`train_on_prompts`)."""
  task: PromptFileConfig = PromptFileConfig(prompt_len=16, max_new_tokens=24)


def prompts_config(algorithm: str, *, path: str, smoke_mode: bool = False) -> PromptsConfig:
  """A recipe's `PromptsConfig` for `algorithm` on the prompts of `path` (its `--smoke` mode with
  `smoke_mode`: shorter responses and runs, `smoke`)."""
  config = PromptsConfig(rl=RLConfig(algorithm=algorithm, batch_size=32, eval_batch_size=8),
                         task=PromptFileConfig(path=path, prompt_len=16, max_new_tokens=24))
  if smoke_mode:
    config = smoke(config)
    config = dataclasses.replace(config, rl=dataclasses.replace(config.rl, eval_batch_size=8),
                                 task=dataclasses.replace(config.task, max_new_tokens=8, test_fraction=0.2))
  return config


def train_on_prompts(config: PromptsConfig, workdir: str | Path, *,
                     reward_fn: Callable[[list[str]], Any] | None = None,
                     pretrain: Callable[..., Any] | None = None) -> Any:
  """RL on a user's prompts (`config.task`, a `task.PromptFileConfig`) with the reward it names, or
  `reward_fn` (a Python function of response texts), from `config.policy.init_from` (a run or a
  Hugging Face folder; "" with `pretrain`: `start_policy`): what the ppo and grpo recipes run."""
  mesh = sharding.make_mesh(config.mesh)
  policy = start_policy(config.policy, workdir, mesh, pretrain=pretrain)
  reward = rewards.from_texts(reward_fn, policy.tokenizer) if reward_fn is not None else None
  task = prompt_file_task(config.task, tokenizer=policy.tokenizer, mesh=mesh, reward=reward)
  return train(config, task, policy, workdir, mesh)


def smoke(config: Config) -> Config:
  """Settings that run an RL experiment on CPU in well under a minute (its `--smoke` mode)."""
  return dataclasses.replace(
      config, policy=dataclasses.replace(config.policy, pretrain_smoke=True),
      rl=dataclasses.replace(config.rl, batch_size=16, eval_batch_size=16, normalize_samples=32),
      ppo=dataclasses.replace(config.ppo, epochs=2), ilql=dataclasses.replace(config.ilql, num_samples=64),
      loop=LoopConfig(steps=6, log_every=2, eval_every=3, checkpoint_every=3, progress=False))
