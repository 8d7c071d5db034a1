"""Hugging Face GPT-2 interchange and GPT-2's tokenizer.

tests/data/tiny_gpt2 was written by transformers itself (tools/make_gpt2_fixture.py: a random
2-layer GPT-2 with every parameter perturbed, saved as safetensors, and transformers' logits on
fixed tokens), so matching its logits checks the whole mapping against the reference
implementation: names, the fused qkv layout, LayerNorm, GELU, tied embeddings.
"""

import functools
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy

from rlhf_jax.models import gpt2
from rlhf_jax.models.transformer import ModelConfig, Transformer, init_params
from rlhf_jax.tokenizers import TiktokenTokenizer

FIXTURE = Path(__file__).parent / "data" / "tiny_gpt2"


@pytest.fixture(scope="module")
def reference():
  return np.load(FIXTURE / "reference.npz")


def logits_of(config: ModelConfig, params, tokens) -> np.ndarray:
  return np.asarray(jax.jit(Transformer(config).apply)({"params": params}, tokens).logits_BxTxV)


def test_import_matches_transformers_logits(reference):
  config, params = gpt2.load_hf(FIXTURE)
  assert (config.vocab_size, config.max_len, config.d_model, config.n_layers, config.n_heads) == (96, 32, 32, 2, 4)
  # Same tree, shapes and dtypes as a model initialised here: the import is a drop-in.
  fresh = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
  assert jax.tree.structure(fresh) == jax.tree.structure(params)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), fresh) == jax.tree.map(lambda a: (a.shape, a.dtype), params)
  np.testing.assert_allclose(logits_of(config, params, reference["tokens"]), reference["logits"], atol=1e-4, rtol=0)


def test_export_round_trips_in_transformers_layout(tmp_path, reference):
  config, params = gpt2.load_hf(FIXTURE)
  gpt2.save_hf(tmp_path, config, params, eos_token_id=95)
  # The exported file has exactly the tensors (names, shapes) transformers wrote for this model.
  ours = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  theirs = safetensors.numpy.load_file(str(FIXTURE / "model.safetensors"))
  theirs = {k: v for k, v in theirs.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
  assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
  for name in ours:
    np.testing.assert_array_equal(ours[name], theirs[name])
  hf = json.loads((tmp_path / "config.json").read_text())
  assert hf["n_layer"] == 2 and hf["eos_token_id"] == 95 and gpt2.config_from_hf(hf) == config
  config2, params2 = gpt2.load_hf(tmp_path)
  np.testing.assert_array_equal(logits_of(config2, params2, reference["tokens"]), logits_of(config, params, reference["tokens"]))


def test_names_without_the_transformer_prefix_load_too(tmp_path, reference):
  tensors = safetensors.numpy.load_file(str(FIXTURE / "model.safetensors"))
  (tmp_path / "model.safetensors").write_bytes(
      safetensors.numpy.save({k.removeprefix("transformer."): v for k, v in tensors.items()}))
  shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
  config, params = gpt2.load_hf(tmp_path)
  np.testing.assert_allclose(logits_of(config, params, reference["tokens"]), reference["logits"], atol=1e-4, rtol=0)


def test_bad_checkpoints_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    gpt2.load_hf(tmp_path)
  hf = json.loads((FIXTURE / "config.json").read_text())
  with pytest.raises(ValueError, match="activation_function"):
    gpt2.config_from_hf({**hf, "activation_function": "relu"})
  with pytest.raises(ValueError, match="n_head"):
    gpt2.config_from_hf({k: v for k, v in hf.items() if k != "n_head"})
  config, params = gpt2.load_hf(FIXTURE)
  tensors = gpt2.params_to_hf(params, config)
  with pytest.raises(ValueError, match=r"transformer.h.1.mlp.c_fc.weight|h.1.mlp.c_fc.weight"):
    gpt2.params_from_hf({**tensors, "transformer.h.1.mlp.c_fc.weight": np.zeros((3, 3), np.float32)}, config)
  with pytest.raises(ValueError, match="missing"):
    gpt2.params_from_hf({k: v for k, v in tensors.items() if "h.1." not in k}, config)
  with pytest.raises(ValueError, match="preference embedding"):
    gpt2.config_to_hf(ModelConfig(n_preferences=3))


@pytest.mark.network
def test_gpt2_tokenizer_from_the_whisper_sdist(cache_dir):
  tok = TiktokenTokenizer.gpt2()
  assert tok.vocab_size == 50257 and tok.eos_id == 50256
  assert tok.encode("Hello world") == [15496, 995]  # GPT-2's ids
  text = "It's 2026: naïve café, <|endoftext|> stays text.\n"
  assert tok.decode(tok.encode(text)) == text and tok.eos_id not in tok.encode(text)
  assert tok.encode_batch(["Hello world", "a"]) == [[15496, 995], [64]]
  with pytest.raises(FileNotFoundError, match="ranks file"):
    TiktokenTokenizer(Path(cache_dir) / "missing.tiktoken")
