"""Hugging Face GPT-2 checkpoints in and out: `model.safetensors` + `config.json` <-> our params.

The Transformer uses GPT-2's layout and parameter names, so the mapping is by name:
`h.{i}.attn.c_attn.weight` -> `h_{i}/attn/c_attn/kernel`, `wte.weight` -> `wte/embedding`, and so on.
GPT-2's `Conv1D` stores weights as [in, out], which is already a Flax `Dense` kernel, so nothing is
transposed; `lm_head.weight` is tied to `wte` and not stored separately. Names may carry the
`transformer.` prefix of `GPT2LMHeadModel` or not (the original OpenAI-converted files have none).

  config, params = gpt2.load_hf("path/to/gpt2")     # a directory with config.json + model.safetensors
  gpt2.save_hf("out/", config, params)              # loadable by transformers' GPT2LMHeadModel

Nothing here downloads: point it at files you have (e.g. `huggingface-cli download gpt2`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import safetensors.numpy

from rlhf_jax import files
from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import ModelConfig

_LAYER_PARAMS = {  # HF suffix -> (our module path inside h_i, leaf)
    "ln_1.weight": ("ln_1", "scale"), "ln_1.bias": ("ln_1", "bias"),
    "attn.c_attn.weight": ("attn/c_attn", "kernel"), "attn.c_attn.bias": ("attn/c_attn", "bias"),
    "attn.c_proj.weight": ("attn/c_proj", "kernel"), "attn.c_proj.bias": ("attn/c_proj", "bias"),
    "ln_2.weight": ("ln_2", "scale"), "ln_2.bias": ("ln_2", "bias"),
    "mlp.c_fc.weight": ("mlp/c_fc", "kernel"), "mlp.c_fc.bias": ("mlp/c_fc", "bias"),
    "mlp.c_proj.weight": ("mlp/c_proj", "kernel"), "mlp.c_proj.bias": ("mlp/c_proj", "bias"),
}
_TOP_PARAMS = {"wte.weight": ("wte", "embedding"), "wpe.weight": ("wpe", "embedding"),
               "ln_f.weight": ("ln_f", "scale"), "ln_f.bias": ("ln_f", "bias")}
# Buffers some checkpoints carry (the causal mask), not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def config_from_hf(hf: Mapping[str, Any], *, where: str = "config.json") -> ModelConfig:
  """Our `ModelConfig` for a Hugging Face `GPT2Config` dict; anything we cannot represent is an error."""
  if hf.get("model_type", "gpt2") != "gpt2":
    raise UserError(f"{where}: model_type must be 'gpt2', got {hf.get('model_type')!r}")
  activation = hf.get("activation_function", "gelu_new")
  if activation not in ("gelu_new", "gelu_pytorch_tanh"):
    raise UserError(f"{where}: activation_function {activation!r} is not supported (the model uses GELU's "
                     "tanh approximation, GPT-2's 'gelu_new')")
  for key, expected in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("reorder_and_upcast_attn", False), ("tie_word_embeddings", True)):
    if hf.get(key, expected) != expected:
      raise UserError(f"{where}: {key}={hf[key]!r} is not supported (expected {expected!r})")
  n_inner = hf.get("n_inner")
  d_model = int(hf["n_embd"])
  if n_inner is not None and n_inner % d_model:
    raise UserError(f"{where}: n_inner={n_inner} must be a multiple of n_embd={d_model}")
  try:
    return ModelConfig(vocab_size=int(hf["vocab_size"]), max_len=int(hf["n_positions"]), d_model=d_model,
                       n_layers=int(hf["n_layer"]), n_heads=int(hf["n_head"]),
                       mlp_ratio=4 if n_inner is None else n_inner // d_model,
                       layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                       init_std=float(hf.get("initializer_range", 0.02)))
  except KeyError as e:
    raise UserError(f"{where}: missing field {e.args[0]!r}") from None


def config_to_hf(config: ModelConfig, *, eos_token_id: int | None = None) -> dict[str, Any]:
  """A `GPT2Config` dict for our config (the fields GPT2LMHeadModel needs); `eos_token_id` is the
  tokenizer's (GPT-2's own 50256 would be wrong for a sentencepiece vocabulary)."""
  if config.scalar_head or config.n_preferences:
    raise UserError("only a plain language model exports to GPT-2 (no scalar head, no preference embedding)")
  return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
          "n_positions": config.max_len, "n_embd": config.d_model, "n_layer": config.n_layers,
          "n_head": config.n_heads, "n_inner": config.mlp_ratio * config.d_model,
          "activation_function": "gelu_new", "layer_norm_epsilon": config.layer_norm_eps,
          "initializer_range": config.init_std, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
          "tie_word_embeddings": True,
          **({} if eos_token_id is None else {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id})}


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  d, f = config.d_model, config.mlp_ratio * config.d_model
  layer = {"ln_1.weight": (d,), "ln_1.bias": (d,), "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
           "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
           "mlp.c_fc.weight": (d, f), "mlp.c_fc.bias": (f,), "mlp.c_proj.weight": (f, d), "mlp.c_proj.bias": (d,)}
  shapes = {"wte.weight": (config.vocab_size, d), "wpe.weight": (config.max_len, d), "ln_f.weight": (d,),
            "ln_f.bias": (d,)}
  for i in range(config.n_layers):
    shapes.update({f"h.{i}.{k}": v for k, v in layer.items()})
  return shapes


def params_from_hf(tensors: Mapping[str, np.ndarray], config: ModelConfig, *, where: str = "model.safetensors") -> dict:
  """Our params pytree from a GPT-2 state dict (float32); every tensor must be there with its shape."""
  names = {}
  for name, value in tensors.items():
    short = name.removeprefix("transformer.")
    if short == "lm_head.weight" or short.endswith(_IGNORED_SUFFIXES):
      continue
    names[short] = value
  expected = _expected_shapes(config)
  missing = sorted(set(expected) - set(names))
  unexpected = sorted(set(names) - set(expected))
  if missing or unexpected:
    raise UserError(f"{where}: tensors do not match the config ({config.n_layers} layers): "
                     f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                     f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
  for name, shape in expected.items():
    if tuple(names[name].shape) != shape:
      raise UserError(f"{where}: {name} has shape {tuple(names[name].shape)}, expected {shape}")
  if "lm_head.weight" in {n.removeprefix("transformer.") for n in tensors}:
    head = next(v for n, v in tensors.items() if n.removeprefix("transformer.") == "lm_head.weight")
    if not np.array_equal(head, names["wte.weight"]):
      raise UserError(f"{where}: lm_head.weight differs from wte.weight; only tied output embeddings are supported")

  params: dict = {}

  def put(path: str, leaf: str, value: np.ndarray) -> None:
    node = params
    for part in path.split("/"):
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(value, np.float32)

  for name, (path, leaf) in _TOP_PARAMS.items():
    put(path, leaf, names[name])
  for i in range(config.n_layers):
    for suffix, (path, leaf) in _LAYER_PARAMS.items():
      put(f"h_{i}/{path}", leaf, names[f"h.{i}.{suffix}"])
  return params


def params_to_hf(params: Mapping, config: ModelConfig) -> dict[str, np.ndarray]:
  """A `GPT2LMHeadModel` state dict (names with the `transformer.` prefix, float32, contiguous)."""
  def get(path: str, leaf: str) -> np.ndarray:
    node = params
    for part in path.split("/"):
      node = node[part]
    return np.ascontiguousarray(np.asarray(node[leaf], np.float32))

  out = {f"transformer.{name}": get(*where) for name, where in _TOP_PARAMS.items()}
  for i in range(config.n_layers):
    for suffix, where in _LAYER_PARAMS.items():
      out[f"transformer.h.{i}.{suffix}"] = get(f"h_{i}/{where[0]}", where[1])
  return out


def load_hf(directory: str | Path) -> tuple[ModelConfig, dict]:
  """`(config, params)` from a directory holding `config.json` and `model.safetensors`."""
  directory = Path(directory)
  for name in ("config.json", "model.safetensors"):
    if not (directory / name).is_file():
      raise FileNotFoundError(f"{directory / name} not found: expected a Hugging Face GPT-2 checkpoint directory "
                              "(config.json + model.safetensors)")
  try:
    hf = json.loads((directory / "config.json").read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{directory / 'config.json'}: not valid JSON ({e})") from None
  config = config_from_hf(hf, where=str(directory / "config.json"))
  tensors = safetensors.numpy.load_file(str(directory / "model.safetensors"))
  return config, params_from_hf(tensors, config, where=str(directory / "model.safetensors"))


def save_hf(directory: str | Path, config: ModelConfig, params: Mapping, *, eos_token_id: int | None = None) -> None:
  """Writes `config.json` and `model.safetensors` (each atomically) for transformers to load."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  hf = config_to_hf(config, eos_token_id=eos_token_id)
  tensors = params_to_hf(params, config)
  files.atomic_write_bytes(directory / "model.safetensors", safetensors.numpy.save(tensors, metadata={"format": "pt"}))
  files.atomic_write_bytes(directory / "config.json", (json.dumps(hf, indent=2) + "\n").encode())
