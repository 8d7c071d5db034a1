"""ILQL on offline random sequences rewarded for containing token 7: decoding learns to prefer it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, ilql as ilql_step

LM = ModelConfig(vocab_size=16, max_len=8, d_model=32, n_layers=1, n_heads=2)


def _batch(seed, B=64, T=6):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, 16, (B, T)).astype(np.int32)  # behaviour: uniform over tokens 2..15
  rewards = np.zeros((B, T), np.float32)
  rewards[:, -1] = (tokens[:, 1:] == 7).any(axis=1)  # the outcome reward arrives with the last token
  return {"tokens": tokens, "mask": np.ones((B, T), np.int32), "rewards": rewards}


def test_ilql_learns_to_prefer_the_rewarded_token():
  model = Transformer(LM)
  optim = common.OptimConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0)
  tx = common.make_optimizer(optim)
  cfg = ilql_step.ILQLConfig(gamma=1.0, alpha=0.01, polyak=0.05)
  lm_params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  state = jax.jit(functools.partial(ilql_step.init_state, model=model, tx=tx))(jax.random.key(1), lm_params)
  step = jax.jit(functools.partial(ilql_step.ilql_step, model=model, tx=tx, warmup_steps=0, total_steps=1000,
                                   min_lr_ratio=1.0))
  hp = cfg.hparams(optim)
  first = None
  for i in range(200):
    state, metrics = step(state, _batch(i), jax.random.key(2), hp)
    first = first or {k: float(v) for k, v in metrics.items()}
  assert float(metrics["q_loss"]) < first["q_loss"]
  # Prefixes without a 7: the behaviour LM is ~uniform; ILQL's decoding puts far more mass on 7.
  prefix = jnp.array([[3, 4], [9, 12], [5, 5]], jnp.int32)
  mask = jnp.ones_like(prefix)
  decode = jax.jit(functools.partial(ilql_step.decode_logits, model=model))
  p_ilql = jax.nn.softmax(decode(state.params, prefix, mask, cfg.beta), -1)[:, 7]
  p_lm = jax.nn.softmax(model.apply({"params": state.params["lm"]}, prefix).logits_BxTxV[:, -1], -1)[:, 7]
  assert float(p_lm.mean()) < 0.15
  assert float(p_ilql.mean()) > 2 * float(p_lm.mean()), (p_ilql, p_lm)
