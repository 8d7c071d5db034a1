"""Reward-model steps on a task with a known answer: prefer sequences that contain token 7."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, reward

RM = ModelConfig(vocab_size=16, max_len=8, d_model=32, n_layers=1, n_heads=2, scalar_head=True,
                 scalar_head_init="reward")
OPTIM = common.OptimConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.0)


def pairs(seed, batch_size=16, length=8):
  """Chosen rows contain token 7, rejected rows do not; both right-padded to random lengths."""
  rng = np.random.default_rng(seed)
  def rows(with_seven):
    tokens = rng.integers(0, 7, (batch_size, length))
    lengths = rng.integers(3, length + 1, batch_size)
    if with_seven:
      tokens[np.arange(batch_size), rng.integers(0, lengths)] = 7
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return np.where(mask, tokens, 0).astype(np.int32), mask
  chosen, chosen_mask = rows(True)
  rejected, rejected_mask = rows(False)
  return {"chosen": chosen, "chosen_mask": chosen_mask, "rejected": rejected, "rejected_mask": rejected_mask}


@pytest.fixture(scope="module")
def setup():
  model = Transformer(RM)
  tx = common.make_optimizer(OPTIM)
  state = jax.jit(functools.partial(common.init_state, model=model, tx=tx))(jax.random.key(0))
  step = jax.jit(functools.partial(reward.train_step, model=model, tx=tx, kind="preference", warmup_steps=0,
                                   total_steps=100, min_lr_ratio=1.0))
  evaluate = jax.jit(functools.partial(reward.eval_sums, model=model, kind="preference"))
  return model, state, step, evaluate


def test_reward_head_init_is_normal_with_the_literature_scale():
  params = jax.jit(Transformer(dataclasses.replace(RM, d_model=256)).init)(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  kernel = np.asarray(params["scalar_head"]["kernel"])
  assert abs(kernel.std() - 1 / np.sqrt(257)) < 0.2 / np.sqrt(257)
  zeros = Transformer(dataclasses.replace(RM, scalar_head_init="zeros")).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  assert not np.any(zeros["scalar_head"]["kernel"])


def test_reward_is_read_at_the_last_real_token(setup):
  model, state, _, _ = setup
  batch = pairs(0)
  r_chosen, _ = jax.jit(functools.partial(reward.pair_rewards, model=model))(state.params, batch)
  # Changing tokens after the last real one (padding) must not change the reward.
  garbage = dict(batch, chosen=np.where(batch["chosen_mask"], batch["chosen"], 5).astype(np.int32))
  r_garbage, _ = jax.jit(functools.partial(reward.pair_rewards, model=model))(state.params, garbage)
  np.testing.assert_allclose(r_chosen, r_garbage, atol=1e-5)


def test_bradley_terry_training_learns_the_preference(setup):
  _, state, step, evaluate = setup
  held_out = pairs(999, batch_size=64)
  before = jax.device_get(evaluate(state.params, held_out))
  for i in range(60):
    state, metrics = step(state, pairs(i), jax.random.key(1), OPTIM.hparams())
  after = jax.device_get(evaluate(state.params, held_out))
  assert after["loss_sum"] < 0.5 * before["loss_sum"]
  assert after["correct"] / after["count"] > 0.9, after
  assert float(metrics["accuracy"]) > 0.8


def test_loss_sums_match_a_loop_over_pairs(setup):
  model, state, _, _ = setup
  batch = pairs(5, batch_size=4)
  total, sums = jax.jit(functools.partial(reward.preference_sums, model=model))(state.params, batch, None)
  expected = 0.0
  for i in range(4):
    one = {k: v[i:i + 1] for k, v in batch.items()}
    rc, rr = jax.jit(functools.partial(reward.pair_rewards, model=model))(state.params, one)
    expected += float(-jax.nn.log_sigmoid(rc - rr)[0])
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  assert sums["count"] == 4


def test_rating_training_learns_binary_labels():
  model = Transformer(RM)
  tx = common.make_optimizer(OPTIM)
  state = jax.jit(functools.partial(common.init_state, model=model, tx=tx))(jax.random.key(0))
  step = jax.jit(functools.partial(reward.train_step, model=model, tx=tx, kind="rating", warmup_steps=0,
                                   total_steps=100, min_lr_ratio=1.0))

  def ratings(seed):
    p = pairs(seed, batch_size=8)  # great = contains token 7
    return {"tokens": np.concatenate([p["chosen"], p["rejected"]]),
            "mask": np.concatenate([p["chosen_mask"], p["rejected_mask"]]),
            "label": np.array([1] * 8 + [0] * 8, np.int32)}

  for i in range(60):
    state, _ = step(state, ratings(i), jax.random.key(1), OPTIM.hparams())
  held_out = jax.jit(functools.partial(reward.eval_sums, model=model, kind="rating"))(state.params, ratings(999))
  assert held_out["correct"] / held_out["count"] > 0.85, held_out


def _counted_sevens(seed, batch_size=16, length=8, levels=3):
  """Rows with 0..levels-1 copies of token 7; the rating is the number of copies."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 7, (batch_size, length))
  label = rng.integers(0, levels, batch_size)
  for i, n in enumerate(label):
    tokens[i, rng.choice(length, n, replace=False)] = 7
  return {"tokens": tokens.astype(np.int32), "mask": np.ones((batch_size, length), np.int32),
          "label": label.astype(np.int32)}


@pytest.mark.parametrize("kind", ["ordinal", "regression"])
def test_rating_scales_beyond_two_levels(kind):
  model = Transformer(RM)
  tx = common.make_optimizer(OPTIM)
  state = jax.jit(functools.partial(common.init_state, model=model, tx=tx))(jax.random.key(0))
  step = jax.jit(functools.partial(reward.train_step, model=model, tx=tx, kind=kind, warmup_steps=0,
                                   total_steps=100, min_lr_ratio=1.0, num_levels=3))
  evaluate = jax.jit(functools.partial(reward.eval_sums, model=model, kind=kind, num_levels=3))
  held_out = _counted_sevens(999, batch_size=96)
  before = jax.device_get(evaluate(state.params, held_out))
  for i in range(80):
    state, _ = step(state, _counted_sevens(i), jax.random.key(1), OPTIM.hparams())
  after = jax.device_get(evaluate(state.params, held_out))
  assert after["loss_sum"] < 0.5 * before["loss_sum"], (before, after)
  assert after["correct"] / after["count"] > 0.7, after
  # The reward orders the levels: mean reward rises with the rating.
  r = np.asarray(jax.jit(functools.partial(reward.rewards, model=model))(state.params, held_out["tokens"],
                                                                          held_out["mask"]))
  means = [r[held_out["label"] == k].mean() for k in range(3)]
  assert means[0] < means[1] < means[2], means


def test_normalize_head_gives_mean_zero_std_one(setup):
  model, state, _, _ = setup
  batch = pairs(3, batch_size=32)
  score = jax.jit(functools.partial(reward.rewards, model=model))
  r = np.asarray(score(state.params, batch["chosen"], batch["chosen_mask"]))
  normalized = reward.normalize_head(state.params, r.mean(), r.std())
  r_norm = np.asarray(score(normalized, batch["chosen"], batch["chosen_mask"]))
  np.testing.assert_allclose([r_norm.mean(), r_norm.std()], [0.0, 1.0], atol=1e-4)
  np.testing.assert_allclose(r_norm, (r - r.mean()) / r.std(), rtol=1e-4, atol=1e-4)
