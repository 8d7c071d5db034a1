"""Hugging Face checkpoints of the Llama family in and out: Llama, Qwen2, Qwen3 and Mistral.

  config, params = hf.load_hf("path/to/Qwen2.5-0.5B")                 # config.json + safetensors
  config, params = hf.load_hf(folder, mesh=mesh, rules="fsdp")         # each tensor straight onto its shards
  hf.save_hf("out/", config, params)                                   # loadable by transformers

A folder holds `config.json` and `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Both config formats are read: transformers 4's `rope_theta` +
`rope_scaling` and transformers 5's `rope_parameters`. Tensors are read one at a time and put on
the devices with the sharding rules' layout, so a model too big for one device never exists whole
on one. Linear weights are stored [out, in] (torch) and become [in, out] Flax kernels. An
architecture or setting this decoder does not have, or a tensor that is missing, unexpected or of
the wrong shape, is an error naming it. GPT-2 folders are `models.gpt2`'s; `load_hf` hands them on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy

from rlhf_jax import files, sharding
from rlhf_jax.errors import UserError
from rlhf_jax.models import gpt2
from rlhf_jax.models.transformer import ModelConfig, Transformer

FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "mistral": "MistralForCausalLM"}

_LAYER = {  # HF name inside model.layers.{i} -> (our module path inside h_i, leaf, transposed)
    "input_layernorm.weight": ("ln_1", "scale", False),
    "post_attention_layernorm.weight": ("ln_2", "scale", False),
    **{f"self_attn.{p}_proj.weight": (f"attn/{p}_proj", "kernel", True) for p in "qkvo"},
    **{f"self_attn.{p}_proj.bias": (f"attn/{p}_proj", "bias", False) for p in "qkv"},
    "self_attn.q_norm.weight": ("attn/q_norm", "scale", False),
    "self_attn.k_norm.weight": ("attn/k_norm", "scale", False),
    **{f"mlp.{p}_proj.weight": (f"mlp/{p}_proj", "kernel", True) for p in ("gate", "up", "down")},
}
_TOP = {"model.embed_tokens.weight": ("wte", "embedding", False), "model.norm.weight": ("ln_f", "scale", False),
        "lm_head.weight": ("lm_head", "kernel", True)}


def _rope(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
  """Our rope fields from either config format."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
  merged = {**params, **scaling}
  kind = merged.get("rope_type", merged.get("type", "default"))
  out = {"rope_theta": float(theta)}
  if kind == "default":
    return out
  if kind == "linear":
    return {**out, "rope_scaling": "linear", "rope_factor": float(merged["factor"])}
  if kind == "llama3":
    return {**out, "rope_scaling": "llama3", "rope_factor": float(merged["factor"]),
            "rope_low_freq_factor": float(merged["low_freq_factor"]),
            "rope_high_freq_factor": float(merged["high_freq_factor"]),
            "rope_original_max_len": int(merged["original_max_position_embeddings"])}
  raise UserError(f"{where}: rope type {kind!r} is not supported (default, linear or llama3)")


def family_of(hf: Mapping[str, Any], where: str = "config.json") -> str:
  """The config's model_type if this decoder has it, else an error naming what was found."""
  kind = hf.get("model_type")
  if kind not in FAMILIES:
    raise UserError(f"{where}: model_type {kind!r} is not supported; expected one of {sorted(FAMILIES)} "
                    f"({', '.join(FAMILIES.values())}) or gpt2")
  return kind


def config_from_hf(hf: Mapping[str, Any], *, where: str = "config.json", dtype: str = "float32") -> ModelConfig:
  """Our `ModelConfig` for a Llama / Qwen2 / Qwen3 / Mistral `config.json`."""
  family = family_of(hf, where)
  if hf.get("hidden_act", "silu") != "silu":
    raise UserError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu)")
  if hf.get("mlp_bias", False):
    raise UserError(f"{where}: mlp_bias=true is not supported")
  if family == "llama" and hf.get("attention_bias", False):
    raise UserError(f"{where}: attention_bias=true (Llama's biases on every projection) is not supported")
  if family in ("qwen2", "qwen3") and hf.get("use_sliding_window", False):
    raise UserError(f"{where}: use_sliding_window=true (Qwen's per-layer windows) is not supported")
  d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  head_dim = int(hf.get("head_dim") or d_model // n_heads)
  try:
    return ModelConfig(
        arch="llama", vocab_size=int(hf["vocab_size"]), max_len=int(hf["max_position_embeddings"]),
        d_model=d_model, n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_size=head_dim if head_dim * n_heads != d_model else 0, d_ff=int(hf["intermediate_size"]),
        layer_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attn_bias=family == "qwen2", qk_norm=family == "qwen3",
        sliding_window=int(hf.get("sliding_window") or 0) if family == "mistral" else 0,
        dtype=dtype, **_rope(hf, where))
  except KeyError as e:
    raise UserError(f"{where}: missing {e.args[0]!r}") from None
  except ValueError as e:
    raise UserError(f"{where}: {e}") from None


# safetensors' numpy API cannot read bfloat16 (numpy has no such type), and most checkpoints are
# bfloat16: tensors are read from the file's documented layout (an 8-byte little-endian header
# length, a JSON header of dtype, shape and byte offsets, then the data) into ml_dtypes' types.
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


def _header(path: Path) -> tuple[dict, int]:
  """The tensors' entries of a safetensors file and where its data starts."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size))
  header.pop("__metadata__", None)
  return header, 8 + size


def _read(path: Path, header: dict, start: int, name: str) -> np.ndarray:
  entry = header[name]
  if entry["dtype"] not in _DTYPES:
    raise UserError(f"{path}: tensor {name!r} is {entry['dtype']}; expected a float type ({', '.join(_DTYPES)})")
  begin, end = entry["data_offsets"]
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=start + begin, shape=(end - begin,))
  return data.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"]).astype(np.float32)


def _tensor_files(folder: Path) -> dict[str, Path]:
  """Tensor name -> the safetensors file that holds it."""
  index = folder / "model.safetensors.index.json"
  if index.is_file():
    weight_map = json.loads(index.read_text())["weight_map"]
    return {name: folder / file for name, file in weight_map.items()}
  single = folder / "model.safetensors"
  if not single.is_file():
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
  return {name: single for name in _header(single)[0]}


def _our_name(hf_name: str, n_layers: int) -> tuple[str, str, bool] | None:
  if hf_name in _TOP:
    return _TOP[hf_name]
  if hf_name.startswith("model.layers."):
    layer, _, rest = hf_name[len("model.layers."):].partition(".")
    if layer.isdigit() and int(layer) < n_layers and rest in _LAYER:
      module, leaf, transposed = _LAYER[rest]
      return f"h_{layer}/{module}", leaf, transposed
  return None


def load_hf(folder: str | Path, *, mesh: jax.sharding.Mesh | None = None, rules: str = "replicated",
            dtype: str = "float32") -> tuple[ModelConfig, Any]:
  """(config, params) of the checkpoint in `folder`, params float32 on `mesh` by `sharding.RULES[rules]`
  (default: this process's devices, replicated); `dtype` is the compute dtype of the config. Tensors
stored in float16 or bfloat16 are widened to float32 one at a time."""
  folder = Path(folder)
  config_file = folder / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file} not found: expected a Hugging Face model folder")
  hf = json.loads(config_file.read_text())
  if hf.get("model_type") == "gpt2":
    return gpt2.load_hf(folder)
  config = config_from_hf(hf, where=str(config_file), dtype=dtype)
  mesh = mesh if mesh is not None else sharding.make_mesh()
  expected = jax.eval_shape(lambda: Transformer(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
  shardings = sharding.tree_shardings(expected, mesh, rules)
  want = {sharding.path_str(p): (leaf.shape, s) for (p, leaf), s in
          zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(shardings))}
  found: dict[str, jax.Array] = {}
  headers: dict[Path, tuple[dict, int]] = {}
  for hf_name, path in sorted(_tensor_files(folder).items()):
    ours = _our_name(hf_name, config.n_layers)
    if ours is None and hf_name.endswith("rotary_emb.inv_freq"):
      continue  # a buffer older checkpoints carry: the frequencies come from the config
    if ours is None:
      raise UserError(f"{path}: tensor {hf_name!r} has no place in a {hf['model_type']} model with this config")
    module, leaf, transposed = ours
    name = f"{module}/{leaf}"
    if name == "lm_head/kernel" and config.tie_embeddings:
      continue  # tied: the output projection is the embedding
    if path not in headers:
      headers[path] = _header(path)
    array = _read(path, *headers[path], hf_name)
    array = array.T if transposed else array
    shape, target = want.get(name, (None, None))
    if shape != array.shape:
      raise UserError(f"{path}: tensor {hf_name!r} has shape {array.shape}; this config expects {shape}")
    found[name] = jax.device_put(array, target)
  missing = sorted(set(want) - set(found))
  if missing:
    raise UserError(f"{folder}: tensor for {missing[0]} missing (and {len(missing) - 1} more)" if len(missing) > 1
                    else f"{folder}: tensor for {missing[0]} missing")
  return config, flax.traverse_util.unflatten_dict({tuple(name.split("/")): array for name, array in found.items()})


def config_to_hf(config: ModelConfig, *, eos_token_id: int | None = None, bos_token_id: int | None = None) -> dict:
  """A transformers `config.json` for `config` (the family is the one whose features it uses)."""
  if config.arch != "llama":
    raise UserError("config_to_hf writes Llama-family configs; a GPT-2 layout model is gpt2.save_hf's")
  family = "qwen3" if config.qk_norm else "qwen2" if config.attn_bias else "mistral" if config.sliding_window else "llama"
  rope = None
  if config.rope_scaling == "linear":
    rope = {"rope_type": "linear", "factor": config.rope_factor}
  elif config.rope_scaling == "llama3":
    rope = {"rope_type": "llama3", "factor": config.rope_factor, "low_freq_factor": config.rope_low_freq_factor,
            "high_freq_factor": config.rope_high_freq_factor,
            "original_max_position_embeddings": config.rope_original_max_len}
  hf = {"architectures": [FAMILIES[family]], "model_type": family, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "intermediate_size": config.mlp_dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_len, "hidden_act": "silu",
        "rms_norm_eps": config.layer_norm_eps, "rope_theta": config.rope_theta, "rope_scaling": rope,
        "tie_word_embeddings": config.tie_embeddings, "torch_dtype": "float32"}
  if family == "mistral":
    hf["sliding_window"] = config.sliding_window
  if family in ("qwen2", "qwen3"):
    hf["use_sliding_window"] = False
  if eos_token_id is not None:
    hf["eos_token_id"] = eos_token_id
  if bos_token_id is not None:
    hf["bos_token_id"] = bos_token_id
  return hf


def save_hf(out: str | Path, config: ModelConfig, params: Any, *, eos_token_id: int | None = None,
            bos_token_id: int | None = None) -> None:
  """Writes `config.json` and `model.safetensors` (float32) in transformers' layout to `out`."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  ours = {sharding.path_str(p): np.asarray(jax.device_get(leaf), np.float32)
          for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
  tensors = {}
  for hf_name, (module, leaf, transposed) in _TOP.items():
    if f"{module}/{leaf}" in ours:
      tensors[hf_name] = ours[f"{module}/{leaf}"].T if transposed else ours[f"{module}/{leaf}"]
  for i in range(config.n_layers):
    for suffix, (module, leaf, transposed) in _LAYER.items():
      name = f"h_{i}/{module}/{leaf}"
      if name in ours:
        tensors[f"model.layers.{i}.{suffix}"] = ours[name].T if transposed else ours[name]
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  files.atomic_write_bytes(out / "model.safetensors", safetensors.numpy.save(tensors, metadata={"format": "pt"}))
  files.atomic_write_text(out / "config.json", json.dumps(config_to_hf(config, eos_token_id=eos_token_id,
                                                                       bos_token_id=bos_token_id), indent=2) + "\n")
