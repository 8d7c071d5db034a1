"""PPO for language models with the known implementation details (Ziegler et al. 2019; Huang et al. 2024).

One PPO iteration is `ppo_step(state, batch, key, hp) -> (state, metrics)`, a pure function of a
rollout batch (`rollout.Rollout` fields plus the reward `score_B`), compiled once:

1. the score of a response without EOS is replaced by `no_eos_score` (detail 23 of Huang et al.);
2. per-token rewards r_t = -beta KL_t with the score at the last token (`advantages.kl_penalized_rewards`),
   beta the KL coefficient carried in the state (adaptive or fixed); with `kl_in_loss` the reward
   is the bare score and beta * KL estimate (k1/k3) is added to the loss instead (as in GRPO);
3. optional reward whitening (scale only), GAE, advantage whitening;
4. `epochs` passes over the batch in `minibatches` shuffled minibatches, each one AdamW step on
   the clipped policy loss + vf_coef * the clipped value loss, exact token means;
5. the adaptive controller moves beta toward the KL target (Ziegler et al. 2019, eq. 3).

Policy and value are separate networks (`params = {"policy": ..., "value": ...}`, one optimizer):
the value model starts from the reward model or from the policy's trunk with a zero head.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import advantages, losses
from rlhf_jax.config import check_range
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rollout import values_of_responses
from rlhf_jax.steps import common


@flax.struct.dataclass
class PPOState:
  step: jax.Array  # optimizer updates applied
  params: Any  # {"policy": ..., "value": ...}
  opt_state: optax.OptState
  kl_coef: jax.Array  # float32 scalar: beta, moved by the adaptive controller


@flax.struct.dataclass
class PPOHparams:
  """Numeric settings that change no shape (arrays, so sweeps can vmap them)."""
  learning_rate: jax.Array
  weight_decay: jax.Array
  clip_eps: jax.Array
  value_clip_eps: jax.Array
  vf_coef: jax.Array
  gamma: jax.Array
  lam: jax.Array
  kl_target: jax.Array
  kl_horizon: jax.Array
  no_eos_score: jax.Array
  temperature: jax.Array


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  kl_coef: float = 0.05  # initial beta
  adaptive_kl: bool = True
  kl_target: float = 6.0  # nats per sequence (Ziegler et al. 2019 use 6 for sentiment)
  kl_horizon: float = 10000.0
  kl_estimator: Literal["k1", "k2", "k3"] = "k1"
  kl_in_loss: bool = False
  gamma: float = 1.0
  lam: float = 0.95
  clip_eps: float = 0.2
  value_clip_eps: float = 0.2
  vf_coef: float = 0.1
  epochs: int = 4
  minibatches: int = 1
  whiten_rewards: bool = False
  whiten_advantages: bool = True
  penalize_no_eos: bool = True
  no_eos_score: float = -1.0
  temperature: float = 1.0

  def __post_init__(self):
    if self.kl_estimator not in advantages.KL_ESTIMATORS:
      raise ValueError(f"ppo.kl_estimator must be one of {advantages.KL_ESTIMATORS}, got {self.kl_estimator!r}")
    check_range(self, "ppo", ">= 1", "epochs", "minibatches")
    check_range(self, "ppo", "> 0", "temperature")

  def hparams(self, optim: common.OptimConfig) -> PPOHparams:
    return common.hparams_from(PPOHparams, self, optim)


def init_state(policy_params, value_params, *, tx: optax.GradientTransformation, kl_coef: float) -> PPOState:
  params = {"policy": policy_params, "value": value_params}
  return PPOState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                  kl_coef=jnp.asarray(kl_coef, jnp.float32))


def _minibatch_sums(params, mb: dict[str, jax.Array], key, hp: PPOHparams, kl_coef, *, policy_model: Transformer,
                    value_model: Transformer, kl_in_loss: bool, kl_estimator: str):
  """Summed PPO loss of one minibatch and the sums its metrics need."""
  del key  # dropout is off in RL: the log-probs of rollout and update must match
  mask = mb["response_mask_BxN"]
  maskf = mask.astype(jnp.float32)
  tokens_BxT = jnp.concatenate([mb["prompt_BxP"], mb["response_BxN"]], axis=1).astype(jnp.int32)
  full_mask = jnp.concatenate([mb["prompt_mask_BxP"].astype(bool), mask.astype(bool)], axis=1)
  P, T = mb["prompt_BxP"].shape[1], tokens_BxT.shape[1]
  logits_BxNxV = policy_model.apply({"params": params["policy"]}, tokens_BxT, input_mask_BxT=full_mask,
                                    logits_span=(P - 1, T - 1)).logits_BxTxV  # the response's predictions only
  logp_all_BxNxV = jax.nn.log_softmax(logits_BxNxV / hp.temperature, axis=-1)
  logp_BxN = jnp.take_along_axis(logp_all_BxNxV, mb["response_BxN"][..., None].astype(jnp.int32), -1)[..., 0]
  logp_BxN = logp_BxN * maskf
  values_BxN = values_of_responses(params["value"], mb["prompt_BxP"], mb["prompt_mask_BxP"], mb["response_BxN"],
                                   mask, value_model=value_model)

  pg_sum, count = losses.ppo_policy_loss(logp_BxN, mb["logp_BxN"], mb["advantages_BxN"], mask, hp.clip_eps)
  vf_sum, _ = losses.ppo_value_loss(values_BxN, mb["values_BxN"], mb["returns_BxN"], mask, hp.value_clip_eps)
  total = pg_sum + hp.vf_coef * vf_sum
  if kl_in_loss:
    kl_sum = jnp.sum(advantages.kl_estimate(logp_BxN, mb["ref_logp_BxN"], kl_estimator) * maskf)
    total = total + kl_coef * kl_sum
  log_ratio = (logp_BxN - mb["logp_BxN"]) * maskf
  ratio = jnp.exp(log_ratio)
  entropy_BxN = -jnp.sum(jnp.exp(logp_all_BxNxV) * logp_all_BxNxV, axis=-1)
  sums = {"count": count, "policy_loss": pg_sum, "value_loss": vf_sum,
          "clipfrac": jnp.sum((jnp.abs(ratio - 1.0) > hp.clip_eps) * maskf),
          "approx_kl": jnp.sum(0.5 * log_ratio ** 2),
          "entropy": jnp.sum(entropy_BxN * maskf)}
  return total, sums


def prepare_advantages(batch: dict[str, jax.Array], kl_coef: jax.Array, hp: PPOHparams, *, kl_in_loss: bool,
                       kl_estimator: str, whiten_rewards: bool, whiten_advantages: bool,
                       penalize_no_eos: bool) -> dict[str, jax.Array]:
  """Steps 1-3 of the module docstring: the batch with `advantages_BxN`, `returns_BxN`, `rewards_BxN`."""
  mask = batch["response_mask_BxN"]
  score_B = batch["score_B"]
  if penalize_no_eos:
    score_B = jnp.where(batch["ended_B"], score_B, hp.no_eos_score)
  rewards = advantages.kl_penalized_rewards(score_B, batch["logp_BxN"], batch["ref_logp_BxN"], mask,
                                            jnp.zeros_like(kl_coef) if kl_in_loss else kl_coef, kl_estimator)
  if whiten_rewards:
    rewards = advantages.whiten(rewards, mask, shift_mean=False)
  adv, returns = advantages.gae(rewards, batch["values_BxN"], mask, hp.gamma, hp.lam)
  if whiten_advantages:
    adv = advantages.whiten(adv, mask)
  return {**batch, "score_B": score_B, "rewards_BxN": rewards, "advantages_BxN": adv, "returns_BxN": returns}


def ppo_step(state: PPOState, batch: dict[str, jax.Array], key: jax.Array, hp: PPOHparams, *,
             policy_model: Transformer, value_model: Transformer, tx: optax.GradientTransformation,
             config: PPOConfig, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> tuple[PPOState, dict]:
  """One PPO iteration on a scored rollout batch (see the module docstring)."""
  key = jax.random.fold_in(key, state.step)
  mask = batch["response_mask_BxN"]
  maskf = mask.astype(jnp.float32)
  data = prepare_advantages(batch, state.kl_coef, hp, kl_in_loss=config.kl_in_loss,
                            kl_estimator=config.kl_estimator, whiten_rewards=config.whiten_rewards,
                            whiten_advantages=config.whiten_advantages, penalize_no_eos=config.penalize_no_eos)
  B = mask.shape[0]
  M = config.minibatches
  if B % M:
    raise ValueError(f"rollout batch {B} is not divisible by ppo.minibatches={M}")
  sums_fn = functools.partial(_minibatch_sums, hp=hp, kl_coef=state.kl_coef, policy_model=policy_model,
                              value_model=value_model, kl_in_loss=config.kl_in_loss,
                              kl_estimator=config.kl_estimator)
  per_row = {k: v for k, v in data.items() if k not in ("score_B", "ended_B")}

  def update(carry, xs):
    st = carry
    epoch_key, index_b = xs
    mb = jax.tree.map(lambda x: x[index_b], per_row)
    total, sums, grads = common.accumulate_gradients(sums_fn, st.params, mb, epoch_key, tx=tx)
    st, lr = common.apply_gradients(st, grads, hp, tx=tx, warmup_steps=warmup_steps, total_steps=total_steps,
                                    min_lr_ratio=min_lr_ratio)
    return st, {**sums, "loss": total, "learning_rate": lr, "grad_norm": optax.tree.norm(grads)}

  # Each epoch visits every row once, in a fresh random order split into M minibatches.
  epoch_keys = jax.random.split(key, config.epochs)
  order = jax.vmap(lambda k: jax.random.permutation(k, B))(epoch_keys).reshape(config.epochs * M, B // M)
  mb_keys = jnp.repeat(epoch_keys, M, axis=0)
  state, stats = jax.lax.scan(update, state, (mb_keys, order))

  count = jnp.maximum(stats["count"].sum(), 1.0)
  kl = advantages.sequence_kl(batch["logp_BxN"], batch["ref_logp_BxN"], mask).mean()
  new_coef = state.kl_coef
  if config.adaptive_kl:
    new_coef = advantages.adaptive_kl_coef(state.kl_coef, kl, target=hp.kl_target, horizon=hp.kl_horizon, n_steps=B)
  returns, values = data["returns_BxN"], batch["values_BxN"]
  var_returns = advantages.masked_var(returns, mask)
  explained_variance = 1.0 - advantages.masked_var(returns - values, mask) / jnp.maximum(var_returns, 1e-8)
  metrics = {
      "loss": stats["loss"].sum() / count,
      "policy_loss": stats["policy_loss"].sum() / count,
      "value_loss": stats["value_loss"].sum() / count,
      "clipfrac": stats["clipfrac"].sum() / count,
      "approx_kl": stats["approx_kl"].sum() / count,
      "entropy": stats["entropy"].sum() / count,
      "score": batch["score_B"].mean(),
      "score_penalized": data["score_B"].mean(),
      "reward_total": jnp.sum(data["rewards_BxN"] * maskf, -1).mean(),
      "kl": kl,
      "kl_coef": state.kl_coef,
      "response_length": maskf.sum(-1).mean(),
      "eos_rate": batch["ended_B"].astype(jnp.float32).mean(),
      "explained_variance": explained_variance,
      "advantage_mean": advantages.masked_mean(data["advantages_BxN"], mask),
      "learning_rate": stats["learning_rate"][-1],
      "grad_norm": stats["grad_norm"].mean(),
  }
  return state.replace(kl_coef=new_coef), metrics
