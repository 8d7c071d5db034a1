"""Llama-family checkpoints (`models.hf`) against transformers' own numbers.

tests/data/tiny_hf/<arch> were written by transformers (tools/make_hf_fixtures.py): random tiny
Llama (Llama 3 RoPE scaling, untied), Qwen2 (q/k/v biases, linear RoPE scaling, sharded files),
Qwen3 (q/k norms, head_dim != hidden / heads) and Mistral (sliding window) models, with their logits
on fixed tokens and a greedy continuation.
"""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import sampling, sharding
from rlhf_jax.errors import UserError
from rlhf_jax.models import hf
from rlhf_jax.models.transformer import Transformer

FIXTURES = Path(__file__).parent / "data" / "tiny_hf"
ARCHS = ["llama", "qwen2", "qwen3", "mistral"]


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request):
  reference = np.load(FIXTURES / request.param / "reference.npz")
  config, params = hf.load_hf(FIXTURES / request.param)
  return request.param, config, params, reference


def test_logits_match_transformers(loaded):
  arch, config, params, reference = loaded
  logits = jax.jit(Transformer(config).apply)({"params": params}, jnp.asarray(reference["tokens"])).logits_BxTxV
  np.testing.assert_allclose(np.asarray(logits), reference["logits"], atol=1e-4, rtol=1e-4)


def test_greedy_decoding_with_the_kv_cache_reproduces_transformers(loaded):
  arch, config, params, reference = loaded
  prompt = jnp.asarray(reference["prompt"])
  out = sampling.generate(params, prompt, jnp.ones_like(prompt), jax.random.key(0), model=Transformer(config),
                          max_new_tokens=reference["greedy"].shape[1], top_k=1, eos_id=-1, pad_id=0)
  np.testing.assert_array_equal(np.asarray(out.tokens_BxN), reference["greedy"])


def test_left_padded_prompts_continue_as_unpadded_ones():
  """On Mistral, whose sliding window counts slots: padding must not shift what a query sees."""
  reference = np.load(FIXTURES / "mistral" / "reference.npz")
  config, params = hf.load_hf(FIXTURES / "mistral")
  model = Transformer(config)
  prompt = reference["prompt"][:1, 2:]  # 4 tokens
  padded = np.concatenate([np.zeros((1, 3), np.int32), prompt], axis=1)
  mask = np.concatenate([np.zeros((1, 3), np.int32), np.ones_like(prompt)], axis=1)
  kwargs = dict(model=model, max_new_tokens=6, top_k=1, eos_id=-1, pad_id=0)
  plain = sampling.generate(params, jnp.asarray(prompt), jnp.ones_like(jnp.asarray(prompt)), jax.random.key(0), **kwargs)
  shifted = sampling.generate(params, jnp.asarray(padded), jnp.asarray(mask), jax.random.key(0), **kwargs)
  np.testing.assert_array_equal(np.asarray(plain.tokens_BxN), np.asarray(shifted.tokens_BxN))


def test_export_then_import_is_bitwise(loaded, tmp_path):
  arch, config, params, reference = loaded
  hf.save_hf(tmp_path, config, params, eos_token_id=2)
  again_config, again = hf.load_hf(tmp_path)
  assert again_config == config
  assert json.loads((tmp_path / "config.json").read_text())["model_type"] == arch
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_loaded_onto_fsdp_shards_the_logits_are_the_same():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
  config, params = hf.load_hf(FIXTURES / "qwen2", mesh=mesh, rules="fsdp")
  kernel = params["h_0"]["mlp"]["gate_proj"]["kernel"]
  assert kernel.sharding.spec[0] == "fsdp" and len(kernel.addressable_shards) == 8
  assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 4, kernel.shape[1])
  reference = np.load(FIXTURES / "qwen2" / "reference.npz")
  logits = jax.jit(Transformer(config).apply)({"params": params}, jnp.asarray(reference["tokens"])).logits_BxTxV
  np.testing.assert_allclose(np.asarray(logits), reference["logits"], atol=1e-4, rtol=1e-4)


def test_configs_and_tensors_that_do_not_fit_are_errors_naming_them(tmp_path):
  folder = tmp_path / "m"
  shutil.copytree(FIXTURES / "llama", folder)
  config = json.loads((folder / "config.json").read_text())
  for change, message in (({"model_type": "falcon"}, "model_type 'falcon' is not supported"),
                          ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
                          ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope type 'yarn'"),
                          ({"num_hidden_layers": 3}, "tensor for h_2/")):
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message):
      hf.load_hf(folder)
  (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
  with pytest.raises(UserError, match=r"'model.layers.0.mlp.down_proj.weight' has shape \(48, 32\); this config "
                                      r"expects \(40, 32\)"):
    hf.load_hf(folder)
  (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
  with pytest.raises(UserError, match="'model.layers.1.input_layernorm.weight' has no place"):
    hf.load_hf(folder)
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf(tmp_path / "nothing")


def test_bfloat16_checkpoints_load_as_their_float32_values(tmp_path):
  import ml_dtypes
  import safetensors.numpy
  shutil.copytree(FIXTURES / "qwen3", tmp_path / "bf16")
  path = tmp_path / "bf16" / "model.safetensors"
  header, start = hf._header(path)
  stored = {name: hf._read(path, header, start, name).astype(ml_dtypes.bfloat16) for name in header}
  safetensors.numpy.save_file(stored, str(path))
  _, params = hf.load_hf(tmp_path / "bf16")
  _, full = hf.load_hf(FIXTURES / "qwen3")
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), full)
  jax.tree.map(np.testing.assert_array_equal, params, rounded)
