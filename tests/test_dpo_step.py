"""Every preference loss, as a training step, learns to prefer responses containing token 7."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, dpo

LM = ModelConfig(vocab_size=16, max_len=12, d_model=32, n_layers=1, n_heads=2)


def _pairs(seed, B=16, P=3, N=5):
  rng = np.random.default_rng(seed)
  prompt = rng.integers(2, 16, (B, P)).astype(np.int32)
  chosen = rng.integers(2, 7, (B, N)).astype(np.int32)
  chosen[np.arange(B), rng.integers(0, N, B)] = 7
  rejected = rng.integers(2, 7, (B, N)).astype(np.int32)
  ones = lambda x: np.ones_like(x, np.int32)  # noqa: E731
  return {"prompt": prompt, "prompt_mask": ones(prompt), "chosen": chosen, "chosen_mask": ones(chosen),
          "rejected": rejected, "rejected_mask": ones(rejected)}


@pytest.mark.parametrize("kind", dpo.KINDS)
def test_preference_losses_learn_the_preference(kind):
  model = Transformer(LM)
  optim = common.OptimConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0)
  tx = common.make_optimizer(optim)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  state = common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  ref_fn = jax.jit(functools.partial(dpo.reference_logprobs, params, model=model))
  hp = dpo.DPOConfig(kind=kind, beta=0.5 if kind != "ipo" else 0.1).hparams(optim)
  step = jax.jit(functools.partial(dpo.dpo_step, model=model, tx=tx, kind=kind, warmup_steps=0, total_steps=100,
                                   min_lr_ratio=1.0))
  for i in range(40):
    batch = _pairs(i)
    state, metrics = step(state, {**batch, **ref_fn(batch)}, jax.random.key(1), hp)
  held_out = _pairs(999, B=64)
  held_out = {**held_out, **ref_fn(held_out)}
  c, r = jax.jit(functools.partial(dpo.pair_logprobs, model=model))(state.params, held_out)
  margin = (c.sum(-1) - held_out["ref_chosen"]) - (r.sum(-1) - held_out["ref_rejected"])
  assert float(jnp.mean(margin > 0)) > 0.9, kind
  for name in ("reward_chosen", "reward_rejected", "reward_accuracy", "logp_chosen", "logp_rejected"):
    assert np.isfinite(float(metrics[name])), name


def test_first_dpo_step_is_log_two_at_the_reference():
  model = Transformer(LM)
  optim = common.OptimConfig(learning_rate=1e-3, warmup_steps=0)
  tx = common.make_optimizer(optim)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  state = common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  batch = _pairs(0)
  batch = {**batch, **jax.jit(functools.partial(dpo.reference_logprobs, model=model))(params, batch)}
  step = jax.jit(functools.partial(dpo.dpo_step, model=model, tx=tx, kind="dpo", warmup_steps=0, total_steps=10,
                                   min_lr_ratio=1.0))
  _, metrics = step(state, batch, jax.random.key(0), dpo.DPOConfig().hparams(optim))
  assert float(metrics["loss"]) == pytest.approx(np.log(2), rel=1e-5)
  assert float(metrics["reward_margin"]) == pytest.approx(0.0, abs=1e-5)
  with pytest.raises(ValueError, match="dpo.kind"):
    dpo.DPOConfig(kind="dop")
