"""Offline preference optimization: one pure step for DPO, conservative DPO, IPO, KTO, ORPO and SimPO.

Batches hold preference pairs after a shared left-padded prompt:
`{"prompt", "prompt_mask"}` [B, P] and `{"chosen", "chosen_mask", "rejected", "rejected_mask"}`
[B, N] (responses right-padded), plus the reference model's summed log-probs `ref_chosen`,
`ref_rejected` [B], computed once for the dataset (`reference_logprobs`) and cached: the
reference never changes, so recomputing it every step would double the cost for nothing.

`kind` selects the loss (`rlhf_jax.losses`): "dpo" (with `hp.label_smoothing` > 0: conservative
DPO), "ipo" (tau = beta), "kto" (chosen as desirable, rejected as undesirable; reference point z0
below), "orpo" (SFT on chosen + lambda x odds ratio; lambda = beta) and "simpo" (length-normalized,
margin gamma). Reference-free losses ignore `ref_*`.

KTO's reference point z0 estimates KL(pi || pi_ref) from the batch: the mean log-ratio
log pi(y'|x) - log pi_ref(y'|x) on mismatched pairs, clipped at 0, without gradient (Ethayarajh et
al. 2024, eq. 8 and the estimate that follows it). Here, more cheaply, the log-ratios are those of
the batch's own chosen and rejected responses, averaged over the real pairs only (`pair_mask`), so
padding pairs never move it. It is a property of the whole batch, so it is computed over the whole
batch whatever `num_microbatches` is: with one microbatch from the loss's own forward pass, with
several by `kto_reference_point` (forward passes only, one microbatch at a time) before the
gradient passes. That costs about a third of a step more but keeps the step exactly the same however
the batch is split; a per-microbatch z0 would make the loss depend on the split.

Metrics show what happens to each side, not only the margin: the implicit rewards
beta (log pi - log pi_ref) of chosen and rejected, their accuracy and margin, and the log-probs of
chosen and rejected themselves (the "chosen log-prob goes down too" effect is visible).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import advantages, losses, sampling
from rlhf_jax.config import check_range
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common

KINDS = ("dpo", "ipo", "kto", "orpo", "simpo")


@flax.struct.dataclass
class DPOHparams:
  learning_rate: jax.Array
  weight_decay: jax.Array
  beta: jax.Array
  label_smoothing: jax.Array
  gamma: jax.Array  # SimPO's target margin
  temperature: jax.Array  # of the log-probs in the loss; online DPO also samples at it
  tie_margin: jax.Array  # online DPO: score gaps up to this are ties, not trained on


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  kind: Literal["dpo", "ipo", "kto", "orpo", "simpo"] = "dpo"
  beta: float = 0.1
  label_smoothing: float = 0.0
  gamma: float = 0.5
  temperature: float = 1.0
  # Online DPO: two samples whose scores differ by at most this are a tie and not trained on (in
  # the units of the trainer's score: the normalized reward when rl.normalize_reward).
  tie_margin: float = 0.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"dpo.kind must be one of {KINDS}, got {self.kind!r}")
    check_range(self, "dpo", "> 0", "beta")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
    check_range(self, "dpo", "> 0", "temperature")
    check_range(self, "dpo", ">= 0", "tie_margin")

  def hparams(self, optim: common.OptimConfig) -> DPOHparams:
    return common.hparams_from(DPOHparams, self, optim)


def pair_logprobs(params, batch, *, model: Transformer, temperature=1.0):
  """Token log-probs [B, N] of the chosen and rejected responses, from one forward over [2B, P+N]."""
  prompt = jnp.concatenate([batch["prompt"], batch["prompt"]])
  prompt_mask = jnp.concatenate([batch["prompt_mask"], batch["prompt_mask"]])
  response = jnp.concatenate([batch["chosen"], batch["rejected"]])
  mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
  logp = sampling.response_logprobs(params, prompt, prompt_mask, response, mask, model=model, temperature=temperature)
  B = batch["chosen"].shape[0]
  return logp[:B], logp[B:]


def reference_logprobs(params, batch, *, model: Transformer, temperature=1.0) -> dict[str, jax.Array]:
  """Summed reference log-probs of each pair's two responses: `{"ref_chosen", "ref_rejected"}` [B]."""
  chosen, rejected = pair_logprobs(params, batch, model=model, temperature=temperature)
  return {"ref_chosen": chosen.sum(-1), "ref_rejected": rejected.sum(-1)}


def _log_ratio_sums(logp_c, logp_r, ref_c, ref_r, pair_mask) -> tuple[jax.Array, jax.Array]:
  """Sum and count of log pi - log pi_ref over the chosen and rejected responses of the real pairs."""
  return jnp.sum(((logp_c - ref_c) + (logp_r - ref_r)) * pair_mask), 2.0 * jnp.sum(pair_mask)


def _pair_mask(batch) -> jax.Array:
  return batch.get("pair_mask", jnp.ones(batch["chosen"].shape[:1], jnp.float32)).astype(jnp.float32)


def kto_reference_point(params, batch, *, model: Transformer, num_microbatches: int = 1,
                        temperature=1.0) -> jax.Array:
  """KTO's z0 before clipping: the mean log-ratio over the real pairs of the whole batch (module docstring),
  from forward passes over one microbatch at a time, so it needs no more memory than the step itself."""
  def sums(micro):
    tok_c, tok_r = pair_logprobs(params, micro, model=model, temperature=temperature)
    return _log_ratio_sums(tok_c.sum(-1), tok_r.sum(-1), micro["ref_chosen"], micro["ref_rejected"],
                           _pair_mask(micro))
  if num_microbatches == 1:
    total, count = sums(batch)
  else:
    total_M, count_M = jax.lax.map(sums, common._split_microbatches(batch, num_microbatches))
    total, count = total_M.sum(), count_M.sum()
  return jax.lax.stop_gradient(total / jnp.maximum(count, 1.0))


def _loss_sums(params, batch, key, hp: DPOHparams, *, model: Transformer, kind: str,
               kto_z0: jax.Array | None = None):
  """Summed loss of `kind` and its metric sums; `kto_z0` is KTO's whole-batch z0, None when `batch` is the
  whole batch (then it is computed here, from this forward pass)."""
  del key
  tok_c, tok_r = pair_logprobs(params, batch, model=model, temperature=hp.temperature)
  mask_c = batch["chosen_mask"].astype(jnp.float32)
  mask_r = batch["rejected_mask"].astype(jnp.float32)
  logp_c, logp_r = tok_c.sum(-1), tok_r.sum(-1)
  len_c, len_r = mask_c.sum(-1), mask_r.sum(-1)
  ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
  pair_mask = _pair_mask(batch)
  if kind == "dpo":
    total, count = losses.dpo_loss(logp_c, logp_r, ref_c, ref_r, hp.beta, hp.label_smoothing, pair_mask)
  elif kind == "ipo":
    total, count = losses.ipo_loss(logp_c, logp_r, ref_c, ref_r, hp.beta, pair_mask)
  elif kind == "kto":
    logp = jnp.concatenate([logp_c, logp_r])
    ref = jnp.concatenate([ref_c, ref_r])
    if kto_z0 is None:  # `batch` is the whole batch
      ratio_sum, ratio_count = _log_ratio_sums(logp_c, logp_r, ref_c, ref_r, pair_mask)
      kto_z0 = jax.lax.stop_gradient(ratio_sum / jnp.maximum(ratio_count, 1.0))
    desirable = jnp.concatenate([jnp.ones_like(logp_c, bool), jnp.zeros_like(logp_r, bool)])
    total, count = losses.kto_loss(logp, ref, desirable, kto_z0, hp.beta,
                                   mask_B=jnp.concatenate([pair_mask, pair_mask]))
    count = count / 2  # per pair, like the others
  elif kind == "orpo":
    odds_sum, count = losses.orpo_odds_ratio_loss(logp_c / jnp.maximum(len_c, 1), logp_r / jnp.maximum(len_r, 1),
                                                  pair_mask)
    sft_sum = jnp.sum(-logp_c / jnp.maximum(len_c, 1) * pair_mask)  # per-token mean NLL of chosen, per pair
    total = sft_sum + hp.beta * odds_sum
  else:
    total, count = losses.simpo_loss(logp_c, logp_r, len_c, len_r, hp.beta, hp.gamma, pair_mask)
  reward_c = hp.beta * (logp_c - ref_c)
  reward_r = hp.beta * (logp_r - ref_r)
  sums = {"count": count, "reward_chosen": jnp.sum(reward_c * pair_mask),
          "reward_rejected": jnp.sum(reward_r * pair_mask),
          "reward_accuracy": jnp.sum((reward_c > reward_r) * pair_mask),
          "logp_chosen": jnp.sum(logp_c * pair_mask), "logp_rejected": jnp.sum(logp_r * pair_mask)}
  return total, sums


def dpo_step(state: common.TrainState, batch, key: jax.Array, hp: DPOHparams, *, model: Transformer,
             tx: optax.GradientTransformation, kind: str, warmup_steps: int, total_steps: int,
             min_lr_ratio: float, num_microbatches: int = 1) -> tuple[common.TrainState, dict]:
  """One AdamW update on the exact pair-mean preference loss of `kind`."""
  key = jax.random.fold_in(key, state.step)
  kto_z0 = None
  if kind == "kto" and num_microbatches > 1:  # each microbatch must see the whole batch's z0
    kto_z0 = kto_reference_point(state.params, batch, model=model, num_microbatches=num_microbatches,
                                 temperature=hp.temperature)
  total, sums, grads = common.accumulate_gradients(
      functools.partial(_loss_sums, hp=hp, model=model, kind=kind, kto_z0=kto_z0), state.params, batch, key,
      num_microbatches, tx=tx)
  state, lr = common.apply_gradients(state, grads, hp, tx=tx, warmup_steps=warmup_steps, total_steps=total_steps,
                                     min_lr_ratio=min_lr_ratio)
  n = jnp.maximum(sums["count"], 1.0)
  metrics = {"loss": total / n, **{k: v / n for k, v in sums.items() if k != "count"},
             "reward_margin": (sums["reward_chosen"] - sums["reward_rejected"]) / n,
             "grad_norm": optax.tree.norm(grads), "learning_rate": lr}
  return state, metrics


def rollout_pairs(batch: dict[str, jax.Array], tie_margin=0.0) -> dict[str, jax.Array]:
  """Preference pairs from a scored rollout with two samples of each prompt in rows 2i and 2i+1
  (`rl.rl_iteration`'s batch): the higher `score_B` is chosen; scores within `tie_margin` of each
  other are a tie, no preference, so the pair is masked out (`pair_mask` 0). The reference's summed log-probs are the rollout's `ref_logp_BxN`,
  already computed at the sampling temperature, so no second reference forward pass is needed."""
  score_Px2 = batch["score_B"].reshape(-1, 2)
  first_wins_P = score_Px2[:, 0] >= score_Px2[:, 1]

  def split(x_B):  # (chosen, rejected) of each pair
    x_Px2 = x_B.reshape(-1, 2, *x_B.shape[1:])
    pick = first_wins_P.reshape(-1, *([1] * (x_Px2.ndim - 2)))
    return jnp.where(pick, x_Px2[:, 0], x_Px2[:, 1]), jnp.where(pick, x_Px2[:, 1], x_Px2[:, 0])

  maskf_BxN = batch["response_mask_BxN"].astype(jnp.float32)
  chosen, rejected = split(batch["response_BxN"])
  chosen_mask, rejected_mask = split(batch["response_mask_BxN"])
  ref_chosen, ref_rejected = split(jnp.sum(batch["ref_logp_BxN"] * maskf_BxN, axis=-1))
  return {"prompt": batch["prompt_BxP"][::2], "prompt_mask": batch["prompt_mask_BxP"][::2],
          "chosen": chosen, "chosen_mask": chosen_mask, "rejected": rejected, "rejected_mask": rejected_mask,
          "ref_chosen": ref_chosen, "ref_rejected": ref_rejected,
          "pair_mask": (jnp.abs(score_Px2[:, 0] - score_Px2[:, 1]) > tie_margin).astype(jnp.float32)}


def online_dpo_step(state: common.TrainState, batch: dict[str, jax.Array], key: jax.Array, hp: DPOHparams, *,
                    model: Transformer, tx: optax.GradientTransformation, kind: str, warmup_steps: int,
                    total_steps: int, min_lr_ratio: float) -> tuple[common.TrainState, dict]:
  """Online DPO (Guo et al. 2024, "Direct language model alignment from online AI feedback", Alg. 1):
  two fresh samples of each prompt from the current policy, ranked by the reward, then one update of
  the `kind` loss on those pairs against the frozen reference. `batch` is a scored rollout
  (`rollout_pairs`)."""
  pairs = rollout_pairs(batch, hp.tie_margin)
  state, metrics = dpo_step(state, pairs, key, hp, model=model, tx=tx, kind=kind, warmup_steps=warmup_steps,
                            total_steps=total_steps, min_lr_ratio=min_lr_ratio)
  maskf_BxN = batch["response_mask_BxN"].astype(jnp.float32)
  kl_B = advantages.sequence_kl(batch["logp_BxN"], batch["ref_logp_BxN"], batch["response_mask_BxN"])
  return state, {**metrics, "score": batch["score_B"].mean(), "kl": kl_B.mean(),
                 "pair_fraction": pairs["pair_mask"].mean(), "response_length": maskf_BxN.sum(-1).mean(),
                 "eos_rate": batch["ended_B"].astype(jnp.float32).mean()}
