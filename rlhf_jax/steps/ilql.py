"""ILQL training step: token-level Q-learning from offline sequences (Snell et al. 2022).

The model is the language model (the behaviour policy pi_beta, trained on the data by next-token
loss as in the paper's implementation) plus three heads on its final hidden state: two Q heads
Q_1, Q_2 (each [D -> V], one value per next token) and a V head ([D -> 1]). Target Q heads are a
Polyak average of the Q heads, kept in the state. The loss is

  LM next-token loss + Q loss (both heads) + V loss (expectile tau against min(Q_1, Q_2) targets)
  + alpha * CQL loss,

each an exact token mean (`losses.ilql_losses`). Decoding uses `advantage_logits` with the LM's
logits and min(Q_1, Q_2) - V (`decode_logits`).

Batches are `{"tokens": [B, T], "mask": [B, T], "rewards": [B, T]}` and optionally
`"action_mask": [B, T]`: mask 1 on real tokens, which must be contiguous in each row (padding on
the right, or on both sides like a left-padded prompt followed by a right-padded response: the
model counts positions over real tokens only, so both give the same forward); `rewards[t]` is the
reward for emitting token t (e.g. a score at the last token). The action at step t is token t+1,
so losses use positions 0..T-2 and the reward of token t+1. `action_mask` (default: `mask`) marks
the tokens that are actions the policy chooses: a prompt's tokens are given, not chosen, so a
prompt + response row marks only the response; every loss (LM, Q, V, CQL) counts only the steps
that emit a marked token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses
from rlhf_jax.advantages import last_token_index
from rlhf_jax.config import check_range
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common


class Heads(nn.Module):
  """Q_1, Q_2 over the vocabulary and V, on the LM's final hidden state (float32)."""
  vocab_size: int

  @nn.compact
  def __call__(self, hidden_BxTxD):
    h = hidden_BxTxD.astype(jnp.float32)
    dense = lambda n, name: nn.Dense(n, kernel_init=nn.initializers.normal(0.01), name=name)  # noqa: E731
    return dense(self.vocab_size, "q1")(h), dense(self.vocab_size, "q2")(h), dense(1, "v")(h)[..., 0]


def advantage_logits(lm_logits_BxV: jax.Array, q_BxV: jax.Array, v_B: jax.Array, beta: float | jax.Array) -> jax.Array:
  """Decoding logits log pi_beta(a|s) + beta (Q(s, a) - V(s)) (eq. 4); softmax normalizes them."""
  return jax.nn.log_softmax(lm_logits_BxV, axis=-1) + beta * (q_BxV - v_B[:, None])


@flax.struct.dataclass
class ILQLState:
  step: jax.Array
  params: Any  # {"lm": ..., "heads": ...}
  opt_state: optax.OptState
  target_heads: Any  # Polyak average of params["heads"]


@flax.struct.dataclass
class ILQLHparams:
  learning_rate: jax.Array
  weight_decay: jax.Array
  gamma: jax.Array
  tau: jax.Array  # expectile
  alpha: jax.Array  # CQL weight
  polyak: jax.Array  # target update rate
  beta: jax.Array  # decoding: log pi_beta + beta * (min(Q1, Q2) - V)
  temperature: jax.Array  # decoding: those logits / temperature (evaluation samples with it)


@dataclasses.dataclass(frozen=True)
class ILQLConfig:
  gamma: float = 0.99
  tau: float = 0.7
  alpha: float = 0.1
  polyak: float = 0.005
  beta: float = 4.0  # decoding: log pi_beta + beta * (Q - V)
  # Decoding: those logits / temperature. `rl.train_offline_ilql` also samples its data set and the
  # reward normalization from the reference at it, as the RL trainer does with its temperature.
  temperature: float = 1.0
  # The offline data set of `rl.train_offline_ilql` when no records are given: this many samples of
  # the starting policy on the task's train prompts (a shape, so not in hparams).
  num_samples: int = 1024

  def __post_init__(self):
    check_range(self, "ilql", "> 0", "temperature")
    check_range(self, "ilql", ">= 1", "num_samples")

  def hparams(self, optim: common.OptimConfig) -> ILQLHparams:
    return common.hparams_from(ILQLHparams, self, optim)


def init_state(key: jax.Array, lm_params, *, model: Transformer, tx: optax.GradientTransformation) -> ILQLState:
  heads = Heads(model.config.vocab_size).init(key, jnp.zeros((1, 1, model.config.d_model)))["params"]
  params = {"lm": lm_params, "heads": heads}
  return ILQLState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), target_heads=heads)


def _forward(params, heads_params, tokens, mask, model: Transformer):
  out = model.apply({"params": params["lm"]}, tokens, input_mask_BxT=mask)
  q1, q2, v = Heads(model.config.vocab_size).apply({"params": heads_params}, out.hidden_BxTxD)
  return out.logits_BxTxV, q1, q2, v


def _loss_sums(params, batch, key, hp: ILQLHparams, target_heads, *, model: Transformer):
  del key
  tokens, mask = batch["tokens"].astype(jnp.int32), batch["mask"]
  logits, q1_all, q2_all, v = _forward(params, params["heads"], tokens, mask, model)
  _, tq1_all, tq2_all, _ = _forward(jax.lax.stop_gradient(params), target_heads, tokens, mask, model)
  # Step t (state = tokens <= t) takes action tokens[t+1], rewarded by rewards[t+1]. Only chosen
  # tokens are steps: after a prompt, the first step is at its last token (the state "whole
  # prompt", emitting the first response token); states ending earlier in the prompt are never
  # learned or read. The last step's Bellman target reads V after it through this mask: 0, terminal.
  actions = tokens[:, 1:]
  action_mask = batch.get("action_mask", mask)
  step_mask = (mask[:, :-1] * mask[:, 1:] * action_mask[:, 1:]).astype(jnp.float32)
  pick = lambda q: jnp.take_along_axis(q[:, :-1], actions[..., None], -1)[..., 0]  # noqa: E731
  q1, q2 = pick(q1_all), pick(q2_all)
  target_q = jnp.minimum(pick(tq1_all), pick(tq2_all))
  rewards = batch["rewards"][:, 1:]
  # V(s_{t+1}) at position t+1; `ilql_losses` reads it through `next_state_values`.
  v_states = v[:, :-1]
  out1 = losses.ilql_losses(q1, v_states, target_q, v_states, q1_all[:, :-1], actions, rewards, step_mask,
                            gamma=hp.gamma, tau=hp.tau)
  out2 = losses.ilql_losses(q2, v_states, target_q, v_states, q2_all[:, :-1], actions, rewards, step_mask,
                            gamma=hp.gamma, tau=hp.tau)
  lm_sum, count = losses.next_token_loss(logits[:, :-1], actions, step_mask)
  q_sum = out1["q"][0] + out2["q"][0]
  cql_sum = out1["cql"][0] + out2["cql"][0]
  v_sum = out1["v"][0]
  total = lm_sum + q_sum + v_sum + hp.alpha * cql_sum
  return total, {"count": count, "lm": lm_sum, "q": q_sum, "v": v_sum, "cql": cql_sum}


def ilql_step(state: ILQLState, batch, key: jax.Array, hp: ILQLHparams, *, model: Transformer,
              tx: optax.GradientTransformation, warmup_steps: int, total_steps: int,
              min_lr_ratio: float) -> tuple[ILQLState, dict]:
  """One AdamW update on the ILQL loss, then a Polyak step of the target Q heads."""
  key = jax.random.fold_in(key, state.step)
  sums_fn = functools.partial(_loss_sums, hp=hp, target_heads=state.target_heads, model=model)
  total, sums, grads = common.accumulate_gradients(sums_fn, state.params, batch, key, tx=tx)
  state, lr = common.apply_gradients(state, grads, hp, tx=tx, warmup_steps=warmup_steps, total_steps=total_steps,
                                     min_lr_ratio=min_lr_ratio)
  target = jax.tree.map(lambda t, p: (1 - hp.polyak) * t + hp.polyak * p, state.target_heads, state.params["heads"])
  count = jnp.maximum(sums["count"], 1.0)
  metrics = {"loss": total / count, "lm_loss": sums["lm"] / count, "q_loss": sums["q"] / count,
             "v_loss": sums["v"] / count, "cql_loss": sums["cql"] / count, "learning_rate": lr}
  return state.replace(target_heads=target), metrics


def next_token_logits(heads_params, lm_logits_BxV: jax.Array, hidden_BxD: jax.Array, beta: float | jax.Array, *,
                      vocab_size: int) -> jax.Array:
  """`decode_logits` at one position from the LM's logits and final hidden state there: with
  `heads_params` and `beta` bound, the `logits_fn` of `sampling.generate`, which then decodes ILQL
  on the LM's KV cache."""
  q1, q2, v = Heads(vocab_size).apply({"params": heads_params}, hidden_BxD)
  return advantage_logits(lm_logits_BxV, jnp.minimum(q1, q2), v, beta)


def decode_logits(params, tokens_BxT, mask_BxT, beta: float | jax.Array, *, model: Transformer) -> jax.Array:
  """Next-token logits after each row's last real token: log pi_beta + beta (min(Q1, Q2) - V)."""
  logits, q1, q2, v = _forward(params, params["heads"], tokens_BxT, mask_BxT, model)
  last = last_token_index(mask_BxT)
  at = lambda x: jnp.take_along_axis(x, last[:, None, None], 1)[:, 0]  # noqa: E731
  return advantage_logits(at(logits), jnp.minimum(at(q1), at(q2)),
                          jnp.take_along_axis(v, last[:, None], 1)[:, 0], beta)
