"""LoRA adapters (`models.lora`, through qwix) on a Qwen2 checkpoint and on the GPT-2 layout."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.losses import next_token_loss
from rlhf_jax.models import hf, lora
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common

QWEN2 = Path(__file__).parent / "data" / "tiny_hf" / "qwen2"
TOKENS = jnp.asarray(np.random.default_rng(0).integers(3, 90, (4, 12)), jnp.int32)


@pytest.fixture(scope="module")
def qwen2():
  config, params = hf.load_hf(QWEN2)
  settings = lora.LoraConfig(rank=4, alpha=8.0)
  model = lora.adapt(Transformer(config), settings)
  return config, params, settings, model, lora.add_adapters(model, params, jax.random.key(0))


def logits(model, params, tokens=TOKENS):
  return jax.jit(model.apply)({"params": params}, tokens).logits_BxTxV


def test_at_init_the_adapted_model_is_the_base_model_and_the_reference_shares_its_arrays(qwen2):
  config, base_params, settings, model, params = qwen2
  np.testing.assert_array_equal(logits(model, params), logits(Transformer(config), base_params))
  reference = lora.base(params)
  assert reference["h_0"]["attn"]["q_proj"]["kernel"] is params["h_0"]["attn"]["q_proj"]["kernel"]  # no copy
  adapted = {"/".join(str(k.key) for k in path[:-1]) for path, _ in jax.tree_util.tree_leaves_with_path(params)
             if lora.is_adapter(path)}
  assert adapted == {f"h_{i}/{m}_proj" for i in range(2) for m in ("attn/q", "attn/k", "attn/v", "attn/o",
                                                                   "mlp/gate", "mlp/up", "mlp/down")}


def test_training_moves_only_the_adapters_and_the_optimizer_holds_state_for_them_only(qwen2):
  config, base_params, settings, model, params = qwen2
  tx = common.make_optimizer(common.OptimConfig(learning_rate=1e-2, warmup_steps=0), lora.trainable())
  state = tx.init(params)
  adapter_size = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params) if lora.is_adapter(path))
  state_size = sum(x.size for x in jax.tree.leaves(state) if x.ndim)
  assert state_size == 2 * adapter_size  # adam's two moments, for the adapters alone

  def loss(p, batch, key):
    del key
    total, count = next_token_loss(model.apply({"params": p}, batch[:, :-1]).logits_BxTxV, batch[:, 1:],
                                   jnp.ones_like(batch[:, 1:]))
    return total, {"count": count}

  @jax.jit
  def step(p, s):
    value, sums, grads = common.accumulate_gradients(loss, p, TOKENS, jax.random.key(0), tx=tx)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value / sums["count"]
  losses = []
  new = params
  for _ in range(5):
    new, state, value = step(new, state)
    losses.append(float(value))
  assert losses[-1] < losses[0]
  for (path, before), after in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(new)):
    if lora.is_adapter(path) and path[-1].key == "kernel_lora_b":
      assert not np.array_equal(before, after)
    elif not lora.is_adapter(path):
      np.testing.assert_array_equal(before, after)  # the base model is frozen
  merged = lora.merge(new, settings)
  np.testing.assert_allclose(logits(Transformer(config), merged), logits(model, new), atol=1e-5, rtol=1e-5)
  assert not np.allclose(logits(Transformer(config), merged), logits(Transformer(config), base_params), atol=1e-3)


def test_the_gpt2_layout_adapts_too_and_a_pattern_that_matches_nothing_is_an_error():
  config = ModelConfig(vocab_size=32, max_len=16, d_model=16, n_layers=1, n_heads=2)
  base_params = Transformer(config).init(jax.random.key(1), TOKENS[:1, :4] % 32)["params"]
  model = lora.adapt(Transformer(config), lora.LoraConfig(rank=2, targets=r".*/c_attn$"))
  params = lora.add_adapters(model, base_params, jax.random.key(2))
  assert set(params["h_0"]["attn"]["c_attn"]) == {"kernel", "bias", "kernel_lora_a", "kernel_lora_b"}
  nothing = lora.adapt(Transformer(config), lora.LoraConfig(rank=2, targets=r".*/no_such_proj$"))
  with pytest.raises(ValueError, match="matched no projection"):
    lora.add_adapters(nothing, base_params, jax.random.key(2))
  with pytest.raises(ValueError, match="lora.alpha must be > 0"):
    lora.LoraConfig(rank=2, alpha=0.0)
  with pytest.raises(ValueError, match="lora.targets: not a regular expression"):
    lora.LoraConfig(rank=2, targets="(")


def test_a_bfloat16_model_stays_bfloat16_through_its_adapters(qwen2):
  config, base_params, settings, _, params = qwen2
  config = dataclasses.replace(config, dtype="bfloat16")
  model = lora.adapt(Transformer(config), settings)
  hidden = jax.jit(model.apply)({"params": params}, TOKENS).hidden_BxTxD
  # float32 adapters would promote the residual stream (and its activation memory) to float32.
  assert hidden.dtype == jnp.bfloat16 == Transformer(config).apply({"params": base_params}, TOKENS).hidden_BxTxD.dtype


def test_adapters_are_split_over_the_fsdp_axis_like_their_kernels(qwen2):
  from rlhf_jax import sharding
  *_, params = qwen2
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=8))
  specs = {sharding.path_str(p): s.spec for p, s in
           jax.tree_util.tree_leaves_with_path(sharding.tree_shardings(params, mesh, "fsdp"))}
  # qwen2's fixture: d 32, MLP 48, rank 4 (not split: 4 < 8 devices).
  assert specs["h_0/mlp/up_proj/kernel_lora_a"] == jax.sharding.PartitionSpec("fsdp", None)
  assert specs["h_0/mlp/down_proj/kernel_lora_b"] == jax.sharding.PartitionSpec(None, "fsdp")
  placed = jax.device_put(params, sharding.tree_shardings(params, mesh, "fsdp"))
  np.testing.assert_allclose(logits(qwen2[3], placed), logits(qwen2[3], params), atol=1e-5)  # computes on shards
