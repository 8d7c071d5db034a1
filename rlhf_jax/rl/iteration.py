"""One RLHF iteration as one pure function: rollout -> score -> advantages -> update.

  rl_iteration(state, batch, key, hp, frozen) -> (state, metrics)

`batch` holds B prompt rows (`prompt`, `prompt_mask`, [B, P], left-padded), one response
sampled per row; for RLOO/GRPO groups each prompt fills K consecutive rows (`repeat_rows`, done
by the input pipeline so that the whole batch shards over the devices like any batch). `frozen` holds what
no update changes: the reference policy's parameters (`ref`; None in a LoRA run, whose reference is
the policy's own base weights: `reference_params`), the reward (`rewards.Reward`, a
pytree) and its normalization (`norm`: mean and std of the raw reward on reference samples,
Ziegler et al. 2019). The update is a step with the `(state, batch, key, hp)` signature
(`steps.ppo.ppo_step`, `steps.pg.pg_step`) bound to its static settings.

Everything that changes no shape comes from `hp`, the sampling temperature included, so rollout
and update always agree on it and a vmapped sweep can vary it. The key of iteration t is
`fold_in(key, state.step)`: nothing in the host loop needs to know the step, and nothing here
syncs with the host (a host reward enters through `jax.pure_callback`, see `rlhf_jax.rewards`).
N runs that differ in seed (`key`) and `hp` vmap over state, key and hp with one shared batch
and one shared `frozen` (`vmapped_iteration`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sampling
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import Transformer


def policy_params_of(params: Any) -> Any:
  """The policy's parameters in a trainer state's params: PPO keeps {"policy", "value"}."""
  return params["policy"] if isinstance(params, dict) and "policy" in params else params


def value_params_of(params: Any) -> Any:
  return params["value"] if isinstance(params, dict) and "value" in params else None


def reference_params(policy_params: Any, ref_params: Any) -> Any:
  """The reference's parameters: `ref_params`, or (None: a LoRA run) the policy's own base weights
  with the adapters' updates at zero, built here from the arrays the policy already holds."""
  return lora.disabled(policy_params) if ref_params is None else ref_params


def normalized(raw_B: jax.Array, norm: dict[str, jax.Array]) -> jax.Array:
  return (raw_B - norm["mean"]) / norm["std"]


def sample(policy_params, ref_params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, key: jax.Array,
           temperature: jax.Array, *, policy_model: Transformer, max_new_tokens: int, eos_id: int,
           pad_id: int) -> rollout_lib.Rollout:
  """A rollout without values: what evaluation and reward normalization score."""
  return rollout_lib.rollout(policy_params, None, reference_params(policy_params, ref_params), prompt_BxP,
                             prompt_mask_BxP, key, temperature, policy_model=policy_model, value_model=None,
                             max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)


def rl_iteration(state, batch: dict[str, jax.Array], key: jax.Array, hp, frozen: dict, *, update: Callable,
                 policy_model: Transformer, value_model: Transformer | None, max_new_tokens: int,
                 eos_id: int, pad_id: int, greedy_baseline: bool = False) -> tuple[Any, dict[str, jax.Array]]:
  """One iteration (module docstring). `greedy_baseline` adds ReMax's `greedy_score_B`: the
  normalized reward of each prompt's greedy (argmax) response."""
  key_t = jax.random.fold_in(key, state.step)
  prompt_BxP, prompt_mask_BxP = batch["prompt"], batch["prompt_mask"]
  policy_params = policy_params_of(state.params)
  r = rollout_lib.rollout(policy_params, value_params_of(state.params), reference_params(policy_params, frozen["ref"]),
                          prompt_BxP, prompt_mask_BxP, jax.random.fold_in(key_t, 0), hp.temperature,
                          policy_model=policy_model, value_model=value_model, max_new_tokens=max_new_tokens,
                          eos_id=eos_id, pad_id=pad_id)
  reward = frozen["reward"]
  raw_B = reward.score(r.prompt_BxP, r.prompt_mask_BxP, r.response_BxN, r.response_mask_BxN)
  step_batch = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
  step_batch["score_B"] = normalized(raw_B, frozen["norm"])
  if greedy_baseline:
    g = sampling.generate(policy_params, prompt_BxP, prompt_mask_BxP, jax.random.fold_in(key_t, 1),
                          model=policy_model, max_new_tokens=max_new_tokens, top_k=1, eos_id=eos_id, pad_id=pad_id)
    step_batch["greedy_score_B"] = normalized(reward.score(prompt_BxP, prompt_mask_BxP, g.tokens_BxN, g.mask_BxN),
                                              frozen["norm"])
  if value_model is None:  # critic-free: the rollout's all-zero values are not part of the batch
    del step_batch["values_BxN"]
  state, metrics = update(state, step_batch, key, hp)
  return state, {**metrics, "score_raw": raw_B.mean()}


def repeat_rows(batch: dict[str, np.ndarray], *, times: int) -> dict[str, np.ndarray]:
  """Each row `times` times in consecutive rows: K samples of each prompt."""
  return {name: np.repeat(a, times, axis=0) for name, a in batch.items()}


def vmapped_iteration(iteration: Callable) -> Callable:
  """`iteration` over N stacked (state, key, hp): one shared prompt batch and one `frozen`."""
  return jax.vmap(iteration, in_axes=(0, None, 0, 0, None))
