"""Rewards on tokens: `score(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> reward_B`.

Every reward an RL run optimizes has this one interface, so that a whole RLHF iteration (rollout
-> score -> advantages -> update) is one jitted function and N runs of it vmap into one program:

- `RewardModelReward`: a trained reward model, a pure JAX function on the device. It scores the
  very tokens the policy produced (no decode and re-tokenize round trip), the prompt's too when
  `with_prompt`, without the EOS that ends a response: reward models are trained on texts
  tokenized without EOS (`reward_simulated`, `reward_fine_foods`), so the score is read at the
  last real word, as in training.
- `TokenFunctionReward`: any JAX function of the four arrays (a rule on token ids, a length
  penalty, ...), traced into the program.
- `HostReward`: a reward that only exists on the host, a `scorers.Scorer` of texts: the
  lexicons, a reward model with another tokenizer, a user's `py:MODULE:FUNCTION`. It enters the
  program through `jax.pure_callback`, which decodes and scores on the host while the program
  waits. We chose the callback over a separate host stage between rollout and update because it
  keeps one program for every kind of reward: the same iteration compiles, shards and vmaps (the
  callback receives all runs' responses at once, `vmap_method="broadcast_all"`) whatever the
  reward is, and the Python loop still never blocks between log points (the callback runs on
  the runtime's thread, not the loop's). The price is the host scoring itself, which a device
  reward does not pay.

A reward is a pytree (`flax.struct`): its arrays (a reward model's parameters) are arguments of
the jitted iteration, never constants folded into the program; models, scorers and tokenizers
are static. Normalization (Ziegler et al. 2019's gain and bias) is the trainer's, not the
reward's: see `rlhf_jax.rl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rewards import scorers, signals


class Reward(Protocol):
  """A reward on tokens; `name` says what it is in logs and reports."""

  @property
  def name(self) -> str: ...

  def score(self, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, response_BxN: jax.Array,
            response_mask_BxN: jax.Array) -> jax.Array:
    """float32 [B], traceable under jit and vmap."""
    ...


def scored_response_mask(response_BxN: jax.Array, response_mask_BxN: jax.Array, eos_id: int) -> jax.Array:
  """The response tokens a text reward sees: real tokens without the EOS; a response that is only
  an EOS keeps it, so that every row has something to be scored on."""
  mask_BxN = response_mask_BxN.astype(bool)
  words_BxN = mask_BxN & (response_BxN != eos_id)
  return jnp.where(words_BxN.any(-1, keepdims=True), words_BxN, mask_BxN)


@flax.struct.dataclass
class RewardModelReward:
  """A scalar-head Transformer's output at the last scored token (`steps.reward.rewards`)."""
  params: Any
  model: Transformer = flax.struct.field(pytree_node=False)
  eos_id: int = flax.struct.field(pytree_node=False)
  with_prompt: bool = flax.struct.field(pytree_node=False, default=True)
  label: str = flax.struct.field(pytree_node=False, default="rm")

  @property
  def name(self) -> str:
    return self.label

  def score(self, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> jax.Array:
    mask_BxN = scored_response_mask(response_BxN, response_mask_BxN, self.eos_id)
    if self.with_prompt:
      tokens_BxT = jnp.concatenate([prompt_BxP, response_BxN], axis=1).astype(jnp.int32)
      mask_BxT = jnp.concatenate([prompt_mask_BxP.astype(bool), mask_BxN], axis=1)
    else:
      tokens_BxT, mask_BxT = response_BxN.astype(jnp.int32), mask_BxN
    out = self.model.apply({"params": self.params}, tokens_BxT, input_mask_BxT=mask_BxT)
    return losses.last_token_value(out.scalar_BxT, mask_BxT).astype(jnp.float32)


@flax.struct.dataclass
class TokenFunctionReward:
  """`fn(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> [B]`, a JAX function."""
  fn: Callable[..., jax.Array] = flax.struct.field(pytree_node=False)
  label: str = flax.struct.field(pytree_node=False, default="tokens")

  @property
  def name(self) -> str:
    return self.label

  def score(self, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> jax.Array:
    return jnp.asarray(self.fn(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN), jnp.float32)


def _decode(tokenizer, tokens_BxT: np.ndarray, mask_BxT: np.ndarray, drop_eos: bool) -> list[str]:
  texts = []
  for tokens, mask in zip(tokens_BxT, mask_BxT):
    ids = [int(t) for t, m in zip(tokens, mask) if m and not (drop_eos and t == tokenizer.eos_id)]
    texts.append(tokenizer.decode(ids))
  return texts


@flax.struct.dataclass
class HostReward:
  """A `scorers.Scorer` of texts, called through `jax.pure_callback` (module docstring).

  The response is decoded without its EOS; with `with_prompt` the scorer sees prompt + response
  (reward models trained on both), otherwise the response alone (the lexicons' default).
  """
  scorer: Any = flax.struct.field(pytree_node=False)
  tokenizer: Any = flax.struct.field(pytree_node=False)
  with_prompt: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def name(self) -> str:
    return self.scorer.name

  def texts(self, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> list[str]:
    """What the scorer reads, on the host (numpy arrays)."""
    responses = _decode(self.tokenizer, np.asarray(response_BxN), np.asarray(response_mask_BxN), drop_eos=True)
    if not self.with_prompt:
      return responses
    prompts = _decode(self.tokenizer, np.asarray(prompt_BxP), np.asarray(prompt_mask_BxP), drop_eos=False)
    return [p + r for p, r in zip(prompts, responses)]

  def score_on_host(self, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> np.ndarray:
    """Scores of numpy arrays with any leading axes (vmapped runs arrive as [R, B, ...])."""
    lead = response_BxN.shape[:-1]
    flat = [np.asarray(a).reshape(-1, a.shape[-1]) for a in (prompt_BxP, prompt_mask_BxP, response_BxN,
                                                             response_mask_BxN)]
    return scorers.score_texts(self.scorer, self.texts(*flat)).reshape(lead)

  def score(self, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> jax.Array:
    out = jax.ShapeDtypeStruct(response_BxN.shape[:-1], jnp.float32)
    return jax.pure_callback(self.score_on_host, out, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN,
                             vmap_method="broadcast_all")


def from_texts(fn: Callable[[list[str]], Any], tokenizer, *, with_prompt: bool = False,
               name: str | None = None) -> HostReward:
  """A Python function `texts -> scores` (higher is better) as a reward on the policy's tokens."""
  return HostReward(scorer=scorers.FunctionScorer(fn, name), tokenizer=tokenizer, with_prompt=with_prompt)


def from_spec(spec: str, *, tokenizer, mesh, with_prompt: bool, max_len: int | None = None) -> Reward:
  """The reward a config names: `rm:WORKDIR` (on the device when it shares the policy's tokenizer,
  else through the host), a lexicon (`vader`, `textblob`, `afinn`, ...) or `py:MODULE:FUNCTION`
  (a Python function `texts -> scores`). `max_len`: the longest prompt + response the reward
  must read (checked against a reward model's positions)."""
  if spec.startswith("rm:"):
    from rlhf_jax import trained
    from rlhf_jax.rewards import reward_model

    workdir = Path(spec[3:])
    loaded = trained.load(workdir, mesh)
    if not loaded.model.scalar_head:
      raise ValueError(f"reward {spec!r}: expected a reward model (scalar_head=True), got a language model")
    if max_len is not None and max_len > loaded.model.max_len:
      raise ValueError(f"reward {spec!r}: prompt + response length {max_len} exceeds the reward model's "
                       f"max_len={loaded.model.max_len}")
    if loaded.tokenizer.fingerprint == tokenizer.fingerprint:
      return RewardModelReward(params=loaded.params, model=Transformer(loaded.model), eos_id=tokenizer.eos_id,
                               with_prompt=with_prompt, label=f"rm:{workdir}@{loaded.step}")
    scorer = reward_model.RewardModelScorer(workdir, mesh, _loaded=loaded)
    return HostReward(scorer=scorer, tokenizer=tokenizer, with_prompt=with_prompt)
  return HostReward(scorer=scorers.get_scorer(spec), tokenizer=tokenizer, with_prompt=with_prompt)


@flax.struct.dataclass
class SignalReward:
  """A reward signal of `rlhf_jax.rewards.signals` from a predicted and a human (or gold) score of
  the same samples: "consistency", sign(h - s) (0 within `tolerance`), or "correlation",
  z(h) z(s) standardized over the batch (its batch mean is Pearson's rho).

  Both scores come from rewards on tokens, so the signal is one too: a simulated human (a lexicon,
  a gold reward model) through the host, a predictor on the device or the host. Each row's
  correlation share depends on its batch (the standardization), as the signal is defined; under
  vmapped runs the batch is each run's own. `rewards.signals`' "discounted" kind is per token, not
  a sequence score: PPO's `ppo.gamma` discounts the last-token reward the same way.
  """
  predicted: Any  # a Reward
  human: Any  # a Reward
  kind: str = flax.struct.field(pytree_node=False, default="consistency")
  tolerance: float = flax.struct.field(pytree_node=False, default=0.0)

  def __post_init__(self):
    if self.kind not in SIGNALS:
      raise ValueError(f"reward signal: expected one of {SIGNALS}, got {self.kind!r}")

  @property
  def name(self) -> str:
    return f"{self.kind}({self.human.name} vs {self.predicted.name})"

  def score(self, prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> jax.Array:
    args = (prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN)
    predicted_B, human_B = self.predicted.score(*args), self.human.score(*args)
    if self.kind == "consistency":
      return signals.consistency(human_B, predicted_B, self.tolerance)
    return signals.correlation_shares(human_B, predicted_B)


SIGNALS = ("consistency", "correlation")
