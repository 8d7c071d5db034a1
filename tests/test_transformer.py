import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models.transformer import KVCache, ModelConfig, Transformer, init_params

TINY = ModelConfig(vocab_size=64, max_len=16, d_model=32, n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def params():
  return jax.jit(init_params, static_argnums=0)(TINY, jax.random.key(0))


def tokens(shape, seed=1):
  return jax.random.randint(jax.random.key(seed), shape, 0, TINY.vocab_size)


def test_gpt2_parameter_layout_and_count(params):
  assert set(params) == {"wte", "wpe", "h_0", "h_1", "ln_f"}
  block = params["h_0"]
  assert block["attn"]["c_attn"]["kernel"].shape == (32, 96)  # fused q, k, v as in GPT-2
  assert block["mlp"]["c_fc"]["kernel"].shape == (32, 128)
  assert params["wte"]["embedding"].shape == (64, 32) and params["wpe"]["embedding"].shape == (16, 32)
  assert sum(x.size for x in jax.tree.leaves(params)) == TINY.num_params()
  with_head = init_params(dataclasses.replace(TINY, scalar_head=True), jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(with_head)) == TINY.num_params() + 33


def test_causal_future_tokens_do_not_change_past_logits(params):
  model = Transformer(TINY)
  x = tokens((2, 10))
  y = x.at[:, 6:].set((x[:, 6:] + 1) % TINY.vocab_size)
  apply = jax.jit(lambda p, t: model.apply({"params": p}, t).logits_BxTxV)
  a, b = apply(params, x), apply(params, y)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_tied_embeddings_logits_are_hidden_times_wte(params):
  # Zeroing the final LayerNorm's scale and setting its bias to a token's embedding makes every
  # position's hidden state that embedding; the logits are then its dot products with wte.
  p = jax.tree.map(lambda x: x, params)
  e = params["wte"]["embedding"]
  p["ln_f"] = {"scale": jnp.zeros_like(p["ln_f"]["scale"]), "bias": e[5]}
  logits = Transformer(TINY).apply({"params": p}, tokens((1, 3))).logits_BxTxV
  np.testing.assert_allclose(logits[0, 0], e @ e[5], rtol=1e-5, atol=1e-6)


def test_padded_keys_are_ignored(params):
  model = Transformer(TINY)
  x = tokens((1, 6))
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32) + 7, x], axis=1)
  mask = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
  apply = jax.jit(lambda p, t, m: model.apply({"params": p}, t, input_mask_BxT=m).logits_BxTxV)
  alone = apply(params, x, jnp.ones_like(x))
  left = apply(params, padded, mask)
  np.testing.assert_allclose(alone[0], left[0, 3:], atol=1e-5)


def test_kv_cache_chunks_match_full_forward(params):
  model = Transformer(TINY)
  x = tokens((2, 12))
  apply = jax.jit(lambda p, t, cache=None: model.apply({"params": p}, t, cache=cache))
  full = apply(params, x).logits_BxTxV
  cache = KVCache.init(TINY, 2, 16)
  pieces = []
  for lo, hi in [(0, 5), (5, 6), (6, 12)]:
    out = apply(params, x[:, lo:hi], cache)
    cache = out.cache
    pieces.append(out.logits_BxTxV)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)
  assert int(cache.index) == 12


@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_gives_the_same_gradients(params, policy):
  x = tokens((2, 8))

  def grads(config):
    model = Transformer(config)
    return jax.jit(jax.grad(lambda p: model.apply({"params": p}, x).logits_BxTxV.std()))(params)

  plain, remat = grads(TINY), grads(dataclasses.replace(TINY, remat=True, remat_policy=policy))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), plain, remat)


def test_bfloat16_compute_keeps_float32_params_and_logits(params):
  config = dataclasses.replace(TINY, dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init_params(config, jax.random.key(0))))
  x = tokens((2, 8))
  lo = jax.jit(Transformer(config).apply)({"params": params}, x).logits_BxTxV
  hi = jax.jit(Transformer(TINY).apply)({"params": params}, x).logits_BxTxV
  assert lo.dtype == jnp.float32
  np.testing.assert_allclose(lo, hi, atol=0.05)


def test_dropout_is_active_only_when_not_deterministic(params):
  model = Transformer(dataclasses.replace(TINY, dropout=0.5))
  x = tokens((2, 8))
  det = model.apply({"params": params}, x).logits_BxTxV
  np.testing.assert_array_equal(det, Transformer(TINY).apply({"params": params}, x).logits_BxTxV)
  a = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}).logits_BxTxV
  b = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(2)}).logits_BxTxV
  assert np.abs(a - b).max() > 1e-3


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="model.d_model=30 must be divisible by model.n_heads=4"):
    ModelConfig(d_model=30, n_heads=4)
  with pytest.raises(ValueError, match="model.dropout"):
    ModelConfig(dropout=1.5)
