"""Rollouts for RL fine-tuning: sample responses, recompute their log-probs, reference log-probs, values.

`rollout` is one pure, jittable function of the policy, value and reference parameters: it
samples with the KV-cache sampler and then recomputes everything the update needs with
teacher-forced forwards, so that the update's first-epoch ratio pi/pi_old is exactly 1 (the
sampler's own log-probs agree only to float tolerance; Huang et al. 2024 recompute them too).

Scoring is separate because a reward may live on the host: `decode_responses` gives the texts that
any `rewards.scorers.Scorer` scores (`scorers.score_responses`).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import sampling
from rlhf_jax.models.transformer import Transformer


@flax.struct.dataclass
class Rollout:
  prompt_BxP: jax.Array  # int32, left-padded
  prompt_mask_BxP: jax.Array
  response_BxN: jax.Array  # int32, pad after EOS
  response_mask_BxN: jax.Array  # bool, real response tokens up to and including EOS
  logp_BxN: jax.Array  # float32, log pi_old(token) under the sampling temperature
  ref_logp_BxN: jax.Array  # float32, log pi_ref(token), same temperature
  values_BxN: jax.Array  # float32, V(s_t): the value of the prefix before response token t
  ended_B: jax.Array  # bool, the response emitted EOS


def values_of_responses(value_params, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN, *,
                        value_model: Transformer) -> jax.Array:
  """V(s_t) for each response token t, read at the position before it (the state it was chosen in).

  Same alignment as the log-probs: the value of response token t sits at sequence position P-1+t,
  where the model has seen the prompt and response tokens before t (Huang et al. 2024, the
  `values[:, context_length - 1:-1]` slice of the lm-human-preferences code).
  """
  P = prompt_BxP.shape[1]
  tokens_BxT = jnp.concatenate([prompt_BxP, response_BxN], axis=1).astype(jnp.int32)
  mask_BxT = jnp.concatenate([prompt_mask_BxP.astype(bool), response_mask_BxN.astype(bool)], axis=1)
  out = value_model.apply({"params": value_params}, tokens_BxT, input_mask_BxT=mask_BxT)
  return out.scalar_BxT[:, P - 1:-1] * response_mask_BxN


def rollout(policy_params, value_params, ref_params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
            key: jax.Array, temperature: jax.Array, *, policy_model: Transformer, value_model: Transformer | None,
            max_new_tokens: int, eos_id: int, pad_id: int) -> Rollout:
  """Samples one response per prompt row and everything the RL update needs about it.

  `value_model=None` (critic-free methods) skips the value forward; values are then zeros.
  Repeat prompt rows K times for K samples per prompt: each row draws from its own key.
  """
  out = sampling.generate(policy_params, prompt_BxP, prompt_mask_BxP, key, model=policy_model,
                          max_new_tokens=max_new_tokens, temperature=temperature, eos_id=eos_id, pad_id=pad_id)
  logp = sampling.response_logprobs(policy_params, prompt_BxP, prompt_mask_BxP, out.tokens_BxN, out.mask_BxN,
                                    model=policy_model, temperature=temperature)
  ref_logp = sampling.response_logprobs(ref_params, prompt_BxP, prompt_mask_BxP, out.tokens_BxN, out.mask_BxN,
                                        model=policy_model, temperature=temperature)
  if value_model is None:  # critic-free methods (REINFORCE, RLOO, GRPO, ReMax)
    values = jnp.zeros(out.tokens_BxN.shape, jnp.float32)
  else:
    values = values_of_responses(value_params, prompt_BxP, prompt_mask_BxP, out.tokens_BxN, out.mask_BxN,
                                 value_model=value_model)
  return Rollout(prompt_BxP=prompt_BxP, prompt_mask_BxP=prompt_mask_BxP, response_BxN=out.tokens_BxN,
                 response_mask_BxN=out.mask_BxN, logp_BxN=logp, ref_logp_BxN=ref_logp, values_BxN=values,
                 ended_B=out.ended_B)


def decode_responses(tokenizer, response_BxN: np.ndarray, mask_BxN: np.ndarray) -> list[str]:
  """Response texts: the real tokens, without the EOS that ends them."""
  texts = []
  for tokens, mask in zip(np.asarray(response_BxN), np.asarray(mask_BxN)):
    ids = [int(t) for t, m in zip(tokens, mask) if m and t != tokenizer.eos_id]
    texts.append(tokenizer.decode(ids))
  return texts
