"""Best-of-n rejection-sampling fine-tuning: n samples of each prompt, keep the best, imitate it.

`rsft_step(state, batch, key, hp) -> (state, metrics)` on a scored rollout whose rows hold n samples
of each prompt in consecutive rows (`rl.rl_iteration`'s batch): the response with the highest
`score_B` in each group is kept (the first on ties) and the policy maximizes its likelihood, the
token-mean NLL over the kept responses, for `epochs` passes. This is RAFT (Dong et al. 2023,
"Reward rAnked FineTuning", Alg. 1 with one kept sample per prompt) and one Improve step of ReST
(Gulcehre et al. 2023) per iteration. The likelihood is that of the model itself (temperature 1);
`hp.temperature` is the sampling temperature only.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import advantages, sampling
from rlhf_jax.config import check_range
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common


@flax.struct.dataclass
class RSFTHparams:
  learning_rate: jax.Array
  weight_decay: jax.Array
  temperature: jax.Array  # of the rollout


@dataclasses.dataclass(frozen=True)
class RSFTConfig:
  n: int = 4  # samples per prompt; the best one is kept
  epochs: int = 1
  temperature: float = 1.0

  def __post_init__(self):
    if self.n < 2:
      raise ValueError(f"rsft.n must be >= 2 (best of n samples), got {self.n}")
    check_range(self, "rsft", ">= 1", "epochs")
    check_range(self, "rsft", "> 0", "temperature")

  def hparams(self, optim: common.OptimConfig) -> RSFTHparams:
    return common.hparams_from(RSFTHparams, self, optim)


def best_rows(score_B: jax.Array, group_size: int) -> jax.Array:
  """Row index [B / group_size] of the highest score in each group of consecutive rows."""
  score_GxK = score_B.reshape(-1, group_size)
  return jnp.argmax(score_GxK, axis=-1) + group_size * jnp.arange(score_GxK.shape[0])


def _nll_sums(params, batch, key, hp: RSFTHparams, *, model: Transformer):
  del key, hp
  mask = batch["response_mask_BxN"]
  logp = sampling.response_logprobs(params, batch["prompt_BxP"], batch["prompt_mask_BxP"], batch["response_BxN"],
                                    mask, model=model)
  return -jnp.sum(logp * mask.astype(jnp.float32)), {"count": jnp.sum(mask.astype(jnp.float32))}


def rsft_step(state: common.TrainState, batch: dict[str, jax.Array], key: jax.Array, hp: RSFTHparams, *,
              model: Transformer, tx: optax.GradientTransformation, config: RSFTConfig, warmup_steps: int,
              total_steps: int, min_lr_ratio: float) -> tuple[common.TrainState, dict]:
  """`epochs` updates on the token-mean NLL of each group's best response (module docstring)."""
  key = jax.random.fold_in(key, state.step)
  keep = best_rows(batch["score_B"], config.n)
  best = {name: batch[name][keep] for name in ("prompt_BxP", "prompt_mask_BxP", "response_BxN", "response_mask_BxN")}
  sums_fn = functools.partial(_nll_sums, hp=hp, model=model)

  def update(st, epoch_key):
    total, sums, grads = common.accumulate_gradients(sums_fn, st.params, best, epoch_key, tx=tx)
    st, lr = common.apply_gradients(st, grads, hp, tx=tx, warmup_steps=warmup_steps, total_steps=total_steps,
                                    min_lr_ratio=min_lr_ratio)
    return st, {"loss": total / jnp.maximum(sums["count"], 1.0), "learning_rate": lr,
                "grad_norm": optax.tree.norm(grads)}

  state, stats = jax.lax.scan(update, state, jax.random.split(key, config.epochs))
  maskf_BxN = batch["response_mask_BxN"].astype(jnp.float32)
  kl_B = advantages.sequence_kl(batch["logp_BxN"], batch["ref_logp_BxN"], batch["response_mask_BxN"])
  return state, {"loss": stats["loss"].mean(), "score": batch["score_B"].mean(),
                 "best_score": batch["score_B"][keep].mean(), "kl": kl_B.mean(),
                 "response_length": maskf_BxN.sum(-1).mean(),
                 "eos_rate": batch["ended_B"].astype(jnp.float32).mean(),
                 "learning_rate": stats["learning_rate"][-1], "grad_norm": stats["grad_norm"].mean()}
