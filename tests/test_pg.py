"""REINFORCE / RLOO / GRPO / ReMax on the token-7 task, and their sequence advantages by hand."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import rollout as rollout_lib
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, pg

POLICY = ModelConfig(vocab_size=16, max_len=16, d_model=32, n_layers=1, n_heads=2)
EOS, PAD, N, K = 1, 0, 6, 4


def test_sequence_advantages_by_hand():
  r = jnp.array([1.0, 3.0, 0.0, 4.0])
  np.testing.assert_allclose(pg.sequence_advantages(r, estimator="reinforce", group_size=1, baseline=1.5),
                             [-0.5, 1.5, -1.5, 2.5])
  np.testing.assert_allclose(pg.sequence_advantages(r, estimator="rloo", group_size=2, baseline=0.0),
                             [-2.0, 2.0, -4.0, 4.0])
  np.testing.assert_allclose(pg.sequence_advantages(r, estimator="grpo", group_size=2, baseline=0.0),
                             np.array([-1.0, 1.0, -1.0, 1.0]) / (1 + 1e-4 / np.array([1, 1, 2, 2])), rtol=1e-4)
  np.testing.assert_allclose(pg.sequence_advantages(r, estimator="remax", group_size=1, baseline=0.0,
                                                    greedy_reward_B=jnp.array([1.0, 1.0, 1.0, 1.0])),
                             [0.0, 2.0, -1.0, 3.0])


def test_the_estimator_is_checked_where_the_step_is_bound():
  pg.check_estimator("reinforce", 1)
  pg.check_estimator("remax", 1)
  pg.check_estimator("rloo", 2)
  with pytest.raises(ValueError, match=r"'rloo' needs pg.group_size >= 2, got 1"):
    pg.check_estimator("rloo", 1)
  with pytest.raises(ValueError, match=r"estimator must be one of .*'grpo'.*, got 'ppo'"):
    pg.check_estimator("ppo", 4)
  # pg_step checks when it is bound and first called (traced), before it touches an array.
  step = functools.partial(pg.pg_step, model=None, tx=None, config=pg.PGConfig(group_size=1), estimator="grpo",
                           warmup_steps=0, total_steps=1, min_lr_ratio=1.0)
  with pytest.raises(ValueError, match="'grpo' needs pg.group_size >= 2"):
    step(None, {}, None, None)
  with pytest.raises(ValueError, match="pg.group_size must be >= 1"):
    pg.PGConfig(group_size=0)


# REINFORCE and ReMax learn in the slow run (ReMax's greedy baseline also trains in test_sentiment_pg's smoke).
@pytest.mark.parametrize("estimator", [pytest.param("reinforce", marks=pytest.mark.slow), "rloo", "grpo",
                                       pytest.param("remax", marks=pytest.mark.slow)])
def test_estimator_raises_the_reward(estimator):
  model = Transformer(POLICY)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  config = pg.PGConfig(group_size=K, kl_coef=0.01, kl_in_loss=estimator == "grpo")
  optim = common.OptimConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.0)
  tx = common.make_optimizer(optim)
  hp = config.hparams(optim)
  state = pg.init_state(params, tx=tx, kl_coef=config.kl_coef)
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=model, value_model=None, max_new_tokens=N,
                                   eos_id=EOS, pad_id=PAD))
  greedy = jax.jit(functools.partial(rollout_lib.rollout, policy_model=model, value_model=None, max_new_tokens=N,
                                     eos_id=EOS, pad_id=PAD))
  step = jax.jit(functools.partial(pg.pg_step, model=model, tx=tx, config=config, estimator=estimator,
                                   warmup_steps=0, total_steps=100, min_lr_ratio=1.0))
  score = lambda r: jnp.sum((r.response_BxN == 7) & r.response_mask_BxN, -1) / N  # noqa: E731
  scores = []
  for i in range(20):
    prompts = jnp.repeat(jax.random.randint(jax.random.key(100 + i), (8, 2), 2, 16), K, axis=0)
    r = roll(state.params, None, params, prompts, jnp.ones_like(prompts), jax.random.key(i), hp.temperature)
    batch = {**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)}, "score_B": score(r)}
    if estimator == "remax":  # the baseline: the (near-)greedy response's score
      g = greedy(state.params, None, params, prompts, jnp.ones_like(prompts), jax.random.key(i), 1e-4)
      batch["greedy_score_B"] = score(g)
    state, metrics = step(state, batch, jax.random.key(1), hp)
    scores.append(float(metrics["score"]))
  assert np.mean(scores[-5:]) > 2 * np.mean(scores[:5]) + 0.1, scores
