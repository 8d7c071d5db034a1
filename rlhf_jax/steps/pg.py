"""Critic-free policy gradients that share PPO's rollout: REINFORCE, RLOO, GRPO, ReMax.

`pg_step(state, batch, key, hp) -> (state, metrics)`, the estimator a static argument bound like
the config (the RL trainer binds `rl.algorithm`, the one place that names it). A batch holds K
samples of each prompt in consecutive rows (rows p*K .. p*K+K-1 share prompt p), the rollout
fields of `rollout.Rollout` and `score_B`; ReMax adds `greedy_score_B`, the score of the greedy
response to the same prompt. The sequence reward is R = score - beta KL_seq (KL in the reward, as
in RLOO, Ahmadian et al. 2024) unless `kl_in_loss`, where beta * k3 per token joins the loss
(GRPO, Shao et al. 2024, eq. 3). The advantage of the whole sequence comes from the estimator:

  reinforce   R - b, b an exponential moving average of past R (Williams 1992), kept in the state
  rloo        R_i - mean of the other K-1 samples of the prompt (`advantages.rloo_advantages`)
  grpo        (R_i - mean) / std within the prompt's group (`advantages.grpo_advantages`)
  remax       R - R(greedy response) (`advantages.remax_advantages`)

and every token of the response gets it. The update is PPO's clipped surrogate over `epochs`
passes (with one epoch and one minibatch it is exactly the policy gradient, since the ratio is 1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import advantages, losses, sampling
from rlhf_jax.config import check_range
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common

ESTIMATORS = ("reinforce", "rloo", "grpo", "remax")


@flax.struct.dataclass
class PGState:
  step: jax.Array
  params: Any  # the policy's parameters
  opt_state: optax.OptState
  kl_coef: jax.Array
  baseline: jax.Array  # float32 scalar: REINFORCE's moving-average baseline (unused by the others)


@flax.struct.dataclass
class PGHparams:
  learning_rate: jax.Array
  weight_decay: jax.Array
  clip_eps: jax.Array
  baseline_decay: jax.Array
  temperature: jax.Array


@dataclasses.dataclass(frozen=True)
class PGConfig:
  group_size: int = 4  # K samples per prompt (reinforce and remax accept 1)
  kl_coef: float = 0.05
  kl_in_loss: bool = False
  kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # used when kl_in_loss
  clip_eps: float = 0.2
  epochs: int = 1
  baseline_decay: float = 0.9
  temperature: float = 1.0

  def __post_init__(self):
    check_range(self, "pg", ">= 1", "group_size", "epochs")

  def hparams(self, optim: common.OptimConfig) -> PGHparams:
    return common.hparams_from(PGHparams, self, optim)


def init_state(policy_params, *, tx: optax.GradientTransformation, kl_coef: float) -> PGState:
  return PGState(step=jnp.zeros((), jnp.int32), params=policy_params, opt_state=tx.init(policy_params),
                 kl_coef=jnp.asarray(kl_coef, jnp.float32), baseline=jnp.zeros((), jnp.float32))


def check_estimator(estimator: str, group_size: int) -> None:
  """Raises unless `estimator` is one of `ESTIMATORS` with the group it needs: RLOO and GRPO compare
  each sample with the other samples of its prompt, so they need at least two."""
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  if estimator in ("rloo", "grpo") and group_size < 2:
    raise ValueError(f"estimator {estimator!r} needs pg.group_size >= 2, got {group_size}")


def sequence_advantages(reward_B: jax.Array, *, estimator: str, group_size: int, baseline: jax.Array,
                        greedy_reward_B: jax.Array | None = None) -> jax.Array:
  """The per-sequence advantage of each estimator (module docstring); rows grouped by prompt."""
  if estimator == "reinforce":
    return reward_B - baseline
  if estimator == "remax":
    return advantages.remax_advantages(reward_B, greedy_reward_B)
  grouped_PxK = reward_B.reshape(-1, group_size)
  if estimator == "rloo":
    return advantages.rloo_advantages(grouped_PxK).reshape(-1)
  return advantages.grpo_advantages(grouped_PxK).reshape(-1)


def _loss_sums(params, batch, key, hp: PGHparams, kl_coef, *, model: Transformer, kl_in_loss: bool,
               kl_estimator: str):
  del key
  mask = batch["response_mask_BxN"]
  maskf = mask.astype(jnp.float32)
  logp = sampling.response_logprobs(params, batch["prompt_BxP"], batch["prompt_mask_BxP"], batch["response_BxN"],
                                    mask, model=model, temperature=hp.temperature)
  adv_BxN = advantages.sequence_advantages_to_tokens(batch["advantage_B"], mask)
  total, count = losses.ppo_policy_loss(logp, batch["logp_BxN"], adv_BxN, mask, hp.clip_eps)
  if kl_in_loss:
    total = total + kl_coef * jnp.sum(advantages.kl_estimate(logp, batch["ref_logp_BxN"], kl_estimator) * maskf)
  log_ratio = (logp - batch["logp_BxN"]) * maskf
  return total, {"count": count, "clipfrac": jnp.sum((jnp.abs(jnp.exp(log_ratio) - 1) > hp.clip_eps) * maskf)}


def pg_step(state: PGState, batch: dict[str, jax.Array], key: jax.Array, hp: PGHparams, *, model: Transformer,
            tx: optax.GradientTransformation, config: PGConfig, estimator: str, warmup_steps: int,
            total_steps: int, min_lr_ratio: float) -> tuple[PGState, dict]:
  """One critic-free policy-gradient iteration on a scored rollout batch; `estimator` is one of
  `ESTIMATORS` (module docstring)."""
  check_estimator(estimator, config.group_size)  # at trace time: the estimator and config are static
  key = jax.random.fold_in(key, state.step)
  mask = batch["response_mask_BxN"]
  maskf = mask.astype(jnp.float32)
  kl_B = advantages.sequence_kl(batch["logp_BxN"], batch["ref_logp_BxN"], mask)
  penalty = 0.0 if config.kl_in_loss else state.kl_coef
  reward_B = batch["score_B"] - penalty * kl_B
  greedy = batch.get("greedy_score_B")
  adv_B = sequence_advantages(reward_B, estimator=estimator, group_size=config.group_size,
                              baseline=state.baseline, greedy_reward_B=greedy)
  data = {**batch, "advantage_B": jax.lax.stop_gradient(adv_B)}
  data = {k: v for k, v in data.items() if k not in ("score_B", "ended_B", "greedy_score_B", "values_BxN")}
  sums_fn = functools.partial(_loss_sums, hp=hp, kl_coef=state.kl_coef, model=model, kl_in_loss=config.kl_in_loss,
                              kl_estimator=config.kl_estimator)

  def update(st, epoch_key):
    total, sums, grads = common.accumulate_gradients(sums_fn, st.params, data, epoch_key, tx=tx)
    st, lr = common.apply_gradients(st, grads, hp, tx=tx, warmup_steps=warmup_steps, total_steps=total_steps,
                                    min_lr_ratio=min_lr_ratio)
    return st, {**sums, "loss": total, "learning_rate": lr, "grad_norm": optax.tree.norm(grads)}

  state, stats = jax.lax.scan(update, state, jax.random.split(key, config.epochs))
  count = jnp.maximum(stats["count"].sum(), 1.0)
  baseline = hp.baseline_decay * state.baseline + (1 - hp.baseline_decay) * reward_B.mean()
  metrics = {"loss": stats["loss"].sum() / count, "clipfrac": stats["clipfrac"].sum() / count,
             "score": batch["score_B"].mean(), "reward_total": reward_B.mean(), "kl": kl_B.mean(),
             "advantage_std": adv_B.std(), "response_length": maskf.sum(-1).mean(),
             "eos_rate": batch["ended_B"].astype(jnp.float32).mean(), "kl_coef": state.kl_coef,
             "learning_rate": stats["learning_rate"][-1], "grad_norm": stats["grad_norm"].mean()}
  return state.replace(baseline=baseline), metrics
