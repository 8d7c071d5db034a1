"""Sampling from a policy and judging it: what RL and preference-optimization experiments share.

`PolicySampler` wraps the jitted rollout (samples, policy and reference log-probs) and decodes the
text; `evaluate_policy` scores a fixed prompt set with a gold labeler and a proxy reward and
measures KL(pi || pi_ref) per sequence, length and EOS rate, the numbers a reward-KL frontier needs;
`reference_normalization` measures the gain and bias that give a reward mean 0 and std 1 on the
reference policy's samples (Ziegler et al. 2019).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sharding
from rlhf_jax.advantages import sequence_kl
from rlhf_jax.data.corpora import atomic_write_bytes
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.eval import lm as lm_eval


@dataclasses.dataclass
class Sampled:
  rollout: rollout_lib.Rollout  # on device, for the update
  host: rollout_lib.Rollout  # numpy copy
  prompts: list[str]
  responses: list[str]


@dataclasses.dataclass
class PolicySampler:
  """`sampler(policy_params, tokens, mask, key, value_params=None) -> Sampled`.

  `roll` is `rollout.rollout` partially applied and jitted (models, lengths, eos/pad bound);
  prompts are left-padded [B, P] arrays, placed on the mesh's data axis.
  """
  roll: Callable
  ref_params: Any
  tokenizer: Any
  mesh: Mesh
  temperature: float = 1.0

  def __call__(self, policy_params, tokens_BxP, mask_BxP, key, value_params=None) -> Sampled:
    placed = sharding.put_batch({"p": tokens_BxP, "m": mask_BxP}, self.mesh)
    key = jax.device_put(key, sharding.replicated(self.mesh))  # a restored key may sit on one device
    r = self.roll(policy_params, value_params, self.ref_params, placed["p"], placed["m"], key, self.temperature)
    host = jax.device_get(r)
    return Sampled(rollout=r, host=host,
                   prompts=rollout_lib.decode_prompts(self.tokenizer, host.prompt_BxP, host.prompt_mask_BxP),
                   responses=rollout_lib.decode_responses(self.tokenizer, host.response_BxN, host.response_mask_BxN))


def sample_texts(sampler: PolicySampler, policy_params, prompts: list[str], *, prompt_len: int, batch_size: int,
                 key: jax.Array) -> tuple[list[str], np.ndarray]:
  """Responses to any number of prompt texts and their KL to the reference (nats/sequence).

  Prompts go through in batches of `batch_size` (the last one padded with copies of its first
  prompt, whose samples are dropped), so one compiled program serves every call; batch i uses the
  key `fold_in(key, i)`.
  """
  texts, kls = [], []
  for i in range(0, len(prompts), batch_size):
    chunk = prompts[i:i + batch_size]
    n = len(chunk)
    tokens, mask = prompts_lib.encode_prompts(sampler.tokenizer, chunk + [chunk[0]] * (batch_size - n), prompt_len)
    s = sampler(policy_params, tokens, mask, jax.random.fold_in(key, i))
    texts += s.responses[:n]
    kls.append(np.asarray(sequence_kl(s.host.logp_BxN, s.host.ref_logp_BxN, s.host.response_mask_BxN))[:n])
  return texts, (np.concatenate(kls) if kls else np.zeros(0))


def reference_normalization(sampler: PolicySampler, tokens_NxP: np.ndarray, mask_NxP: np.ndarray, batch_size: int,
                            key: jax.Array, scorer, *, with_prompt: bool, num_samples: int,
                            value_params=None) -> dict[str, float]:
  """{"mean", "std", "samples"} of `scorer` on the reference policy's samples of the first prompts."""
  scores = []
  for i in range(0, min(num_samples, len(tokens_NxP)) - batch_size + 1, batch_size):
    s = sampler(sampler.ref_params, tokens_NxP[i:i + batch_size], mask_NxP[i:i + batch_size],
                jax.random.fold_in(key, i), value_params)
    scores.append(rollout_lib.score_texts(scorer, s.prompts, s.responses, with_prompt))
  if not scores:
    raise ValueError(f"no full batch of {batch_size} prompts to normalize the reward on")
  scores = np.concatenate(scores).astype(np.float64)
  return {"mean": float(scores.mean()), "std": float(max(scores.std(), 1e-6)), "samples": int(scores.size)}


def saved_normalization(path: str | Path, measure: Callable[[], dict[str, float]], *,
                        enabled: bool = True) -> dict[str, float]:
  """The reward normalization of a run: measured once (`measure()`, e.g. `reference_normalization`)
  and saved to `path`, so a resumed run uses the same reward; {"mean": 0, "std": 1} if not `enabled`."""
  path = Path(path)
  if not enabled:
    return {"mean": 0.0, "std": 1.0}
  if path.exists():
    return json.loads(path.read_text())
  norm = measure()
  atomic_write_bytes(path, (json.dumps(norm) + "\n").encode())
  return norm


def evaluate_policy(sampler: PolicySampler, policy_params, tokens_NxP: np.ndarray, mask_NxP: np.ndarray,
                    batch_size: int, key: jax.Array, *, gold, proxy, proxy_with_prompt: bool,
                    norm: dict[str, float] | None = None, value_params=None, samples_path: str | Path | None = None,
                    step: int = 0, samples_to_log: int = 8) -> dict[str, float]:
  """Gold and proxy score, KL to the reference (nats/sequence), length and EOS rate on fixed prompts.

  Uses every full batch of prompts, each with a key folded from `key` and its offset, so the same
  parameters give the same numbers. The proxy is normalized with `norm` when given.
  """
  norm = norm or {"mean": 0.0, "std": 1.0}
  golds, proxies, kls, lengths, ended = [], [], [], [], []
  for i in range(0, len(tokens_NxP) - batch_size + 1, batch_size):
    s = sampler(policy_params, tokens_NxP[i:i + batch_size], mask_NxP[i:i + batch_size], jax.random.fold_in(key, i),
                value_params)
    golds.append(rollout_lib.score_texts(gold, s.prompts, s.responses, False))
    proxies.append((rollout_lib.score_texts(proxy, s.prompts, s.responses, proxy_with_prompt) - norm["mean"])
                   / norm["std"])
    kls.append(np.asarray(sequence_kl(s.host.logp_BxN, s.host.ref_logp_BxN, s.host.response_mask_BxN)))
    lengths.append(s.host.response_mask_BxN.sum(-1))
    ended.append(s.host.ended_B)
    if i == 0 and samples_path is not None:
      lm_eval.write_samples(samples_path, step, s.prompts[:samples_to_log], s.responses[:samples_to_log])
  if not golds:
    raise ValueError(f"no full batch of {batch_size} evaluation prompts")
  cat = np.concatenate
  return {"gold_score": float(cat(golds).mean()), "proxy_score": float(cat(proxies).mean()),
          "kl": float(cat(kls).mean()), "response_length": float(cat(lengths).mean()),
          "eos_rate": float(cat(ended).mean())}
