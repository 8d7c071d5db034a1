"""PPO on a task with a known answer: a tiny random policy learns to emit token 7."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import rollout as rollout_lib
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, ppo

POLICY = ModelConfig(vocab_size=16, max_len=16, d_model=32, n_layers=1, n_heads=2)
VALUE = dataclasses.replace(POLICY, scalar_head=True)
EOS, PAD, N = 1, 0, 6


def _score(response, mask):
  return jnp.sum((response == 7) & mask, axis=-1) / N


@functools.lru_cache(maxsize=None)
def _setup(epochs=4, minibatches=2, adaptive=True, kl_coef=0.02):
  policy_model, value_model = Transformer(POLICY), Transformer(VALUE)
  policy_params = jax.jit(policy_model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  value_params = jax.jit(value_model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  config = ppo.PPOConfig(kl_coef=kl_coef, adaptive_kl=adaptive, kl_target=1.0, kl_horizon=1000.0, epochs=epochs,
                         minibatches=minibatches, penalize_no_eos=False)
  optim = common.OptimConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0)
  tx = common.make_optimizer(optim)
  state = jax.jit(functools.partial(ppo.init_state, tx=tx, kl_coef=config.kl_coef))(policy_params, value_params)
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=policy_model, value_model=value_model,
                                   max_new_tokens=N, eos_id=EOS, pad_id=PAD))
  step = jax.jit(functools.partial(ppo.ppo_step, policy_model=policy_model, value_model=value_model, tx=tx,
                                   config=config, warmup_steps=0, total_steps=1000, min_lr_ratio=1.0))
  return state, policy_params, roll, step, config.hparams(optim)


def _batch(state, ref_params, roll, hp, i):
  prompts = jax.random.randint(jax.random.key(100 + i), (32, 2), 2, 16)
  r = roll(state.params["policy"], state.params["value"], ref_params, prompts, jnp.ones_like(prompts),
           jax.random.key(i), hp.temperature)
  batch = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
  return {**batch, "score_B": _score(r.response_BxN, r.response_mask_BxN)}


@pytest.mark.slow  # PPO learns in the default run through the trainer (test_rl.py)
def test_ppo_raises_the_reward_and_pays_kl():
  state, ref, roll, step, hp = _setup()
  scores, kls = [], []
  for i in range(25):
    state, metrics = step(state, _batch(state, ref, roll, hp, i), jax.random.key(1), hp)
    scores.append(float(metrics["score"]))
    kls.append(float(metrics["kl"]))
  assert np.mean(scores[-5:]) > 2 * np.mean(scores[:5]) + 0.1, scores
  assert np.mean(kls[-5:]) > 0.05  # moving away from the reference costs KL
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert 0.0 <= float(metrics["clipfrac"]) <= 1.0 and float(metrics["explained_variance"]) <= 1.0


def test_first_update_starts_on_policy():
  state, ref, roll, step, hp = _setup(epochs=1, minibatches=1)
  _, metrics = step(state, _batch(state, ref, roll, hp, 0), jax.random.key(1), hp)
  # One minibatch, one epoch: the update sees exactly the rollout's policy, so the ratio is 1.
  assert float(metrics["approx_kl"]) < 1e-10 and float(metrics["clipfrac"]) == 0.0


def test_adaptive_kl_coef_follows_the_target():
  state, ref, roll, step, hp = _setup(epochs=1, minibatches=1)
  batch = _batch(state, ref, roll, hp, 0)
  far = {**batch, "ref_logp_BxN": batch["logp_BxN"] - 1.0 * batch["response_mask_BxN"]}  # KL = length >> target
  new, metrics = step(state, far, jax.random.key(1), hp)
  assert float(metrics["kl"]) > 1.0 and float(new.kl_coef) > float(state.kl_coef)
  near = {**batch, "ref_logp_BxN": batch["logp_BxN"]}  # KL = 0 < target
  new, _ = step(state, near, jax.random.key(1), hp)
  assert float(new.kl_coef) < float(state.kl_coef)
  fixed_state, _, _, fixed_step, _ = _setup(epochs=1, minibatches=1, adaptive=False)
  new, _ = fixed_step(fixed_state, far, jax.random.key(1), hp)
  assert float(new.kl_coef) == pytest.approx(float(fixed_state.kl_coef))


def test_no_eos_penalty_and_kl_in_reward():
  hp = ppo.PPOConfig(no_eos_score=-3.0).hparams(common.OptimConfig())
  mask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
  batch = {"response_mask_BxN": mask, "score_B": jnp.array([2.0, 2.0]), "ended_B": jnp.array([True, False]),
           "logp_BxN": jnp.array([[-1.0, -1.0, 0.0], [-1.0, -1.0, -1.0]]),
           "ref_logp_BxN": jnp.array([[-2.0, -1.0, 0.0], [-1.0, -1.0, -1.0]]), "values_BxN": jnp.zeros((2, 3))}
  data = ppo.prepare_advantages(batch, jnp.float32(0.5), hp, kl_in_loss=False, kl_estimator="k1",
                                whiten_rewards=False, whiten_advantages=False, penalize_no_eos=True)
  np.testing.assert_allclose(data["score_B"], [2.0, -3.0])
  np.testing.assert_allclose(data["rewards_BxN"], [[-0.5, 2.0, 0.0], [0.0, 0.0, -3.0]])
  # gamma = 1, V = 0: A_1 = 2, A_0 = -0.5 + 0.95 * 2 = 1.4 (lambda = 0.95); returns = A + V.
  np.testing.assert_allclose(data["returns_BxN"][0], [1.4, 2.0, 0.0], rtol=1e-6)
