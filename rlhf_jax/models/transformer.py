"""Decoder-only Transformer, pure-functional: the GPT-2 layout and the Llama family.

`Transformer(config).apply(params, tokens_BxT, positions_BxT)` returns a `ModelOutput` with
float32 logits, an optional scalar head (value / reward) on the same trunk, and an updated KV cache
when one was passed in. `config.arch` picks the layout:
- "gpt2": learned positions, pre-LayerNorm, GELU MLP, tied input/output embeddings, parameter
  names `wte`, `wpe`, `h_0/attn/c_attn`, ... so that GPT-2 checkpoints map onto it name by name;
- "llama" (Llama, Qwen2, Qwen3, Mistral): RMSNorm, rotary position embeddings (with the linear
  and Llama 3 frequency scalings), a SwiGLU MLP, grouped-query attention (`n_kv_heads`), optional
  q/k/v biases (Qwen2), q/k RMSNorm (Qwen3), sliding-window attention (Mistral), tied or untied
  output embeddings; names `h_0/attn/q_proj`, `h_0/mlp/gate_proj`, ... (`models.hf` maps them).
Everything else (caches, masks, preference embedding, scalar head) is the same for both, so every
trainer, sampler and reward model takes either.

Masking: `input_mask_BxT` marks real tokens (0 for padding). Keys at padded positions are never
attended to, which is what makes left-padded prompts produce the same continuation as unpadded
ones. With a cache, the new keys/values are written at slots `[cache.index, cache.index + T)` and
each query attends to the slots up to its own.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

Dtype = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 8192
  max_len: int = 256  # number of learned positions: the longest sequence the model can see
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  mlp_ratio: int = 4
  dtype: Dtype = "float32"  # compute dtype; parameters are always float32
  remat: bool = False  # recompute block activations in the backward pass (saves memory)
  # What a rematerialized block keeps (`jax.checkpoint_policies`): nothing (recompute the whole
  # block), every matmul output, or the matmul outputs without a batch dimension (weights-side).
  remat_policy: Literal["nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable"] = "nothing_saveable"
  dropout: float = 0.0  # off by default: RL needs identical log-probs in rollout and update
  scalar_head: bool = False  # adds a [B, T] scalar output (value or reward) on the trunk
  # "zeros": a value head that starts at 0 (PPO); "reward": N(0, 1/sqrt(d_model + 1)), the reward
  # head of Ziegler et al. 2019 (lm-human-preferences), so a fresh reward model already ranks.
  scalar_head_init: Literal["zeros", "reward"] = "zeros"
  scalar_heads: int = 1  # outputs of the scalar head: > 1 for a reward model with one per rubric criterion
  # > 0 adds a learned preference embedding `wpref` [n_preferences, d_model] to the input, indexed by
  # `preference_BxT` (Korbak et al. 2023's conditional training with an embedding instead of a
  # control token); id 0 is "unconditioned" and is what a call without preferences uses.
  n_preferences: int = 0
  layer_norm_eps: float = 1e-5  # LayerNorm's (gpt2) or RMSNorm's (llama) epsilon
  init_std: float = 0.02
  # The layout (module docstring). The fields below it are the Llama family's; "gpt2" needs their defaults.
  arch: Literal["gpt2", "llama"] = "gpt2"
  n_kv_heads: int = 0  # grouped-query attention: key/value heads (0: n_heads)
  head_size: int = 0  # per-head width when it is not d_model / n_heads (Qwen3); 0: d_model / n_heads
  d_ff: int = 0  # the MLP's hidden width (0: mlp_ratio * d_model)
  tie_embeddings: bool = True  # output projection = the input embedding (False: a separate lm_head)
  attn_bias: bool = False  # biases on the q/k/v projections (Qwen2)
  qk_norm: bool = False  # RMSNorm over each head of q and k (Qwen3)
  sliding_window: int = 0  # each query sees the last this many positions (Mistral); 0: all
  rope_theta: float = 10000.0
  # RoPE frequency scaling: "linear" divides positions by rope_factor; "llama3" rescales the low
  # frequencies by rope_factor with a smooth band between them (Llama 3.1).
  rope_scaling: Literal["none", "linear", "llama3"] = "none"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192

  def __post_init__(self):
    if self.arch == "gpt2" and self.d_model % self.n_heads:
      raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
    for name in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads", "mlp_ratio", "scalar_heads"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    for name in ("n_preferences", "n_kv_heads", "head_size", "d_ff", "sliding_window"):
      if getattr(self, name) < 0:
        raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
    if self.n_heads % self.num_kv_heads:
      raise ValueError(f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.n_kv_heads}")
    if self.arch == "gpt2":
      llama_only = {"n_kv_heads": 0, "head_size": 0, "d_ff": 0, "tie_embeddings": True, "attn_bias": False,
                    "qk_norm": False, "sliding_window": 0, "rope_scaling": "none"}
      for name, default in llama_only.items():
        if getattr(self, name) != default:
          raise ValueError(f"model.{name}={getattr(self, name)!r} is for model.arch=llama, not gpt2")
    if self.head_dim % 2 and self.arch == "llama":
      raise ValueError(f"rotary embeddings need an even head width, got {self.head_dim}")

  @property
  def head_dim(self) -> int:
    return self.head_size or self.d_model // self.n_heads

  @property
  def num_kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def mlp_dim(self) -> int:
    return self.d_ff or self.mlp_ratio * self.d_model

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def num_params(self, include_embeddings: bool = True) -> int:
    d, L = self.d_model, self.n_layers
    if self.arch == "gpt2":
      per_block = 4 * d  # two LayerNorms
      per_block += d * 3 * d + 3 * d + d * d + d  # attention
      per_block += 2 * self.mlp_ratio * d * d + self.mlp_ratio * d + d  # MLP
      n = L * per_block + 2 * d  # final LayerNorm
      positions = self.max_len * d
    else:
      q, kv = self.n_heads * self.head_dim, self.num_kv_heads * self.head_dim
      per_block = 2 * d + d * (q + 2 * kv) + q * d + 3 * d * self.mlp_dim  # norms, attention, SwiGLU
      per_block += (q + 2 * kv) * self.attn_bias + 2 * self.head_dim * self.qk_norm
      n = L * per_block + d + (0 if self.tie_embeddings else self.vocab_size * d)
      positions = 0
    if include_embeddings:
      n += self.vocab_size * d + positions + self.n_preferences * d
    if self.scalar_head:
      n += (d + 1) * self.scalar_heads
    return n

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B."""
    n = self.num_params(include_embeddings=False) + self.vocab_size * self.d_model
    return 6 * n + 12 * self.n_layers * self.d_model * seq_len


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for `S` slots, and which slots hold real tokens (N is the
  number of key/value heads: `n_kv_heads` under grouped-query attention).

  `index` is the next slot to write; all rows of the batch advance together (static shapes), so
  prompts of different lengths are left-padded and the padding slots are masked in `key_mask_BxS`.
  """
  k_LxBxSxNxH: jax.Array
  v_LxBxSxNxH: jax.Array
  key_mask_BxS: jax.Array
  index: jax.Array  # int32 scalar

  @classmethod
  def init(cls, config: ModelConfig, batch_size: int, num_slots: int) -> "KVCache":
    shape = (config.n_layers, batch_size, num_slots, config.num_kv_heads, config.head_dim)
    return cls(
        k_LxBxSxNxH=jnp.zeros(shape, config.compute_dtype),
        v_LxBxSxNxH=jnp.zeros(shape, config.compute_dtype),
        key_mask_BxS=jnp.zeros((batch_size, num_slots), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )


@flax.struct.dataclass
class ModelOutput:
  logits_BxTxV: jax.Array  # float32
  scalar_BxT: jax.Array | None = None  # float32; present when config.scalar_head has one output
  scalars_BxTxK: jax.Array | None = None  # float32; every output of the scalar head (K = config.scalar_heads)
  cache: KVCache | None = None
  hidden_BxTxD: jax.Array | None = None  # the final LayerNorm's output, for extra heads (e.g. ILQL's Q and V)


def _dense(config: ModelConfig, features: int, name: str, std: float, bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=bias, dtype=config.compute_dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(std), name=name)


def _attend(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxTxS, kv_cache, layer: int, cache_index):
  """Attention of the queries over the new keys and values, or over the cache's once they are
  written into it; K key/value heads serve N = K x G query heads (grouped-query attention)."""
  if kv_cache is not None:
    kv_cache, k_BxTxKxH, v_BxTxKxH = _update_cache(kv_cache, layer, cache_index, k_BxTxKxH, v_BxTxKxH)
  return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask=mask_BxTxS[:, None]), kv_cache


class Attention(nn.Module):
  config: ModelConfig
  layer: int = 0  # this layer's index in a stacked KV cache

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxTxS, kv_cache, cache_index, deterministic):
    cfg = self.config
    B, T, _ = x_BxTxD.shape
    resid_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5  # GPT-2: scale residual projections
    qkv_BxTx3D = _dense(cfg, 3 * cfg.d_model, "c_attn", cfg.init_std)(x_BxTxD)
    q, k, v = jnp.split(qkv_BxTx3D.reshape(B, T, 3 * cfg.n_heads, cfg.head_dim), 3, axis=2)
    out_BxTxNxH, kv_cache = _attend(q, k, v, mask_BxTxS, kv_cache, self.layer, cache_index)
    out_BxTxD = _dense(cfg, cfg.d_model, "c_proj", resid_std)(out_BxTxNxH.reshape(B, T, cfg.d_model))
    return nn.Dropout(cfg.dropout)(out_BxTxD, deterministic=deterministic), kv_cache


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, deterministic):
    cfg = self.config
    resid_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    h = _dense(cfg, cfg.mlp_ratio * cfg.d_model, "c_fc", cfg.init_std)(x_BxTxD)
    h = nn.gelu(h, approximate=True)  # GPT-2 uses the tanh approximation
    h = _dense(cfg, cfg.d_model, "c_proj", resid_std)(h)
    return nn.Dropout(cfg.dropout)(h, deterministic=deterministic)


def rope_frequencies(config: ModelConfig) -> jax.Array:
  """Rotary inverse frequencies [head_dim / 2]: theta^(-2i / head_dim) (Su et al. 2021), divided by
  rope_factor for "linear" scaling; for "llama3", wavelengths longer than
  rope_original_max_len / rope_low_freq_factor are stretched by rope_factor, shorter than
  rope_original_max_len / rope_high_freq_factor kept, and the band between interpolated (Llama 3.1)."""
  cfg = config
  inv_F = 1.0 / cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim)
  if cfg.rope_scaling == "linear":
    return inv_F / cfg.rope_factor
  if cfg.rope_scaling == "llama3":
    wavelen_F = 2 * jnp.pi / inv_F
    low_wavelen = cfg.rope_original_max_len / cfg.rope_low_freq_factor
    high_wavelen = cfg.rope_original_max_len / cfg.rope_high_freq_factor
    stretched_F = jnp.where(wavelen_F > low_wavelen, inv_F / cfg.rope_factor, inv_F)
    smooth_F = ((cfg.rope_original_max_len / wavelen_F - cfg.rope_low_freq_factor)
                / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor))
    between_F = (1 - smooth_F) * stretched_F / cfg.rope_factor + smooth_F * stretched_F
    in_band_F = (wavelen_F >= high_wavelen) & (wavelen_F <= low_wavelen)
    return jnp.where(in_band_F, between_F, stretched_F)
  return inv_F


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, inv_F: jax.Array) -> jax.Array:
  """Rotates each head's two halves by the angles position x frequency (the "rotate half" layout
  of Llama's checkpoints); computed in float32."""
  angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * inv_F
  angles_BxTx1xH = jnp.concatenate([angles_BxTxF, angles_BxTxF], axis=-1)[:, :, None, :]
  x = x_BxTxNxH.astype(jnp.float32)
  first, second = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return (x * jnp.cos(angles_BxTx1xH) + rotated * jnp.sin(angles_BxTx1xH)).astype(x_BxTxNxH.dtype)


def _rms_norm(config: ModelConfig, name: str) -> nn.RMSNorm:
  return nn.RMSNorm(config.layer_norm_eps, dtype=config.compute_dtype, param_dtype=jnp.float32, name=name)


def _update_cache(kv_cache, layer: int, cache_index, k, v):
  """Writes the new keys and values straight into the stacked [L, B, S, K, H] cache, which a
  decoding loop updates in place (slicing a layer out, updating it and stacking the layers again
  copied the whole cache every step); returns the cache and this layer's keys and values."""
  start = (layer, 0, cache_index, 0, 0)
  kv_cache = tuple(jax.lax.dynamic_update_slice(c_LxBxSxKxH, new[None].astype(c_LxBxSxKxH.dtype), start)
                   for c_LxBxSxKxH, new in zip(kv_cache, (k, v)))
  return kv_cache, kv_cache[0][layer], kv_cache[1][layer]


class LlamaAttention(nn.Module):
  """Grouped-query attention with rotary positions: n_heads queries share n_kv_heads keys/values."""
  config: ModelConfig
  layer: int = 0

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxTxS, kv_cache, cache_index, positions_BxT, deterministic):
    cfg = self.config
    B, T, _ = x_BxTxD.shape
    N, K, H = cfg.n_heads, cfg.num_kv_heads, cfg.head_dim
    resid_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    q_BxTxNxH = _dense(cfg, N * H, "q_proj", cfg.init_std, cfg.attn_bias)(x_BxTxD).reshape(B, T, N, H)
    k_BxTxKxH = _dense(cfg, K * H, "k_proj", cfg.init_std, cfg.attn_bias)(x_BxTxD).reshape(B, T, K, H)
    v_BxTxKxH = _dense(cfg, K * H, "v_proj", cfg.init_std, cfg.attn_bias)(x_BxTxD).reshape(B, T, K, H)
    if cfg.qk_norm:
      q_BxTxNxH, k_BxTxKxH = _rms_norm(cfg, "q_norm")(q_BxTxNxH), _rms_norm(cfg, "k_norm")(k_BxTxKxH)
    inv_F = rope_frequencies(cfg)
    q_BxTxNxH, k_BxTxKxH = apply_rope(q_BxTxNxH, positions_BxT, inv_F), apply_rope(k_BxTxKxH, positions_BxT, inv_F)
    out_BxTxNxH, kv_cache = _attend(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxTxS, kv_cache, self.layer, cache_index)
    out_BxTxD = _dense(cfg, cfg.d_model, "o_proj", resid_std, bias=False)(out_BxTxNxH.reshape(B, T, N * H))
    return nn.Dropout(cfg.dropout)(out_BxTxD, deterministic=deterministic), kv_cache


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)) (Shazeer 2020), without biases."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, deterministic):
    cfg = self.config
    resid_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    gate_BxTxF = _dense(cfg, cfg.mlp_dim, "gate_proj", cfg.init_std, bias=False)(x_BxTxD)
    h_BxTxF = nn.silu(gate_BxTxF) * _dense(cfg, cfg.mlp_dim, "up_proj", cfg.init_std, bias=False)(x_BxTxD)
    out_BxTxD = _dense(cfg, cfg.d_model, "down_proj", resid_std, bias=False)(h_BxTxF)
    return nn.Dropout(cfg.dropout)(out_BxTxD, deterministic=deterministic)


class Block(nn.Module):
  config: ModelConfig
  layer: int = 0

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxTxS, kv_cache, cache_index, positions_BxT, deterministic):
    cfg = self.config
    if cfg.arch == "llama":
      attn_out, kv_cache = LlamaAttention(cfg, self.layer, name="attn")(
          _rms_norm(cfg, "ln_1")(x_BxTxD), mask_BxTxS, kv_cache, cache_index, positions_BxT, deterministic)
      x_BxTxD = x_BxTxD + attn_out
      return x_BxTxD + SwiGLU(cfg, name="mlp")(_rms_norm(cfg, "ln_2")(x_BxTxD), deterministic), kv_cache
    ln = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.compute_dtype, name=name)
    attn_out, kv_cache = Attention(cfg, self.layer, name="attn")(ln("ln_1")(x_BxTxD), mask_BxTxS, kv_cache,
                                                                 cache_index, deterministic)
    x_BxTxD = x_BxTxD + attn_out
    x_BxTxD = x_BxTxD + MLP(cfg, name="mlp")(ln("ln_2")(x_BxTxD), deterministic)
    return x_BxTxD, kv_cache


def default_positions(input_mask_BxT: jax.Array) -> jax.Array:
  """Positions that count only real tokens, so a left-padded row starts at position 0."""
  return jnp.maximum(jnp.cumsum(input_mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def segment_positions(segment_ids_BxT: jax.Array) -> jax.Array:
  """Positions that restart at 0 where each segment of a packed row starts."""
  T = segment_ids_BxT.shape[-1]
  t_T = jnp.arange(T)
  starts_BxT = jnp.concatenate([jnp.ones_like(segment_ids_BxT[:, :1], jnp.bool_),
                                segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]], axis=-1)
  return t_T - jax.lax.cummax(jnp.where(starts_BxT, t_T, 0), axis=1)


class Transformer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None, *,
               input_mask_BxT: jax.Array | None = None, cache: KVCache | None = None,
               preference_BxT: jax.Array | None = None, deterministic: bool = True,
               logits_span: tuple[int, int] | None = None, segment_ids_BxT: jax.Array | None = None) -> ModelOutput:
    # `segment_ids_BxT`: rows packed with several sequences (ids 1, 2, ...; 0 is padding). A token
    # attends only within its own sequence and positions restart at each, so a packed sequence is
    # computed exactly as it would be alone.
    cfg = self.config
    B, T = tokens_BxT.shape
    if segment_ids_BxT is not None and cache is not None:
      raise ValueError("segment_ids_BxT (packed rows) is for training and scoring, not for decoding with a cache")
    if input_mask_BxT is None:
      input_mask_BxT = jnp.ones((B, T), jnp.bool_)
    input_mask_BxT = input_mask_BxT.astype(jnp.bool_)
    if positions_BxT is None and segment_ids_BxT is not None:
      positions_BxT = segment_positions(segment_ids_BxT)
    elif positions_BxT is None:
      positions_BxT = default_positions(input_mask_BxT)
      if cache is not None:
        positions_BxT = positions_BxT + cache.key_mask_BxS.sum(-1, keepdims=True).astype(jnp.int32)

    if cache is None:
      key_mask_BxS = input_mask_BxT
      causal_TxS = jnp.tril(jnp.ones((T, T), jnp.bool_))
      cache_index = 0
    else:
      key_mask_BxS = jax.lax.dynamic_update_slice_in_dim(cache.key_mask_BxS, input_mask_BxT, cache.index, axis=1)
      S = key_mask_BxS.shape[1]
      cache_index = cache.index
      # Query t sits in slot index + t and sees every slot up to its own.
      causal_TxS = jnp.arange(S)[None, :] <= (cache_index + jnp.arange(T))[:, None]
    if cfg.sliding_window:  # slots are positions apart by the same amount: padding only precedes a row
      S = causal_TxS.shape[1]
      q_slot_T = cache_index + jnp.arange(T)
      causal_TxS = causal_TxS & (q_slot_T[:, None] - jnp.arange(S)[None, :] < cfg.sliding_window)
    mask_BxTxS = causal_TxS[None] & key_mask_BxS[:, None, :]
    if segment_ids_BxT is not None:
      mask_BxTxS = mask_BxTxS & (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])

    wte = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                   embedding_init=nn.initializers.normal(cfg.init_std), name="wte")
    x_BxTxD = wte(tokens_BxT)
    if cfg.arch == "gpt2":  # learned positions; the Llama family rotates q and k instead
      wpe = nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                     embedding_init=nn.initializers.normal(cfg.init_std / 2), name="wpe")
      x_BxTxD = x_BxTxD + wpe(positions_BxT)
    if cfg.n_preferences:
      # Zero-initialized, so the model starts as the unconditioned one. A random row is a vector
      # shared by every position with that preference and as large as a token embedding (both
      # std init_std): it hides token identity, and on Brown (400 steps, pretrain_tiny's model) it
      # held training on the unigram plateau ~50 steps longer, for a perplexity of 213-219 where
      # plain training reaches 123 (124 with this zero init).
      wpref = nn.Embed(cfg.n_preferences, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                       embedding_init=nn.initializers.zeros, name="wpref")
      if preference_BxT is None:
        preference_BxT = jnp.zeros((B, T), jnp.int32)
      x_BxTxD = x_BxTxD + wpref(preference_BxT)
    elif preference_BxT is not None:
      raise ValueError("preference_BxT was given but model.n_preferences is 0 (the model has no preference embedding)")
    x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)

    block_cls = (nn.remat(Block, static_argnums=(6,), policy=getattr(jax.checkpoint_policies, cfg.remat_policy))
                 if cfg.remat else Block)
    kv_cache = None if cache is None else (cache.k_LxBxSxNxH, cache.v_LxBxSxNxH)
    for i in range(cfg.n_layers):
      x_BxTxD, kv_cache = block_cls(cfg, i, name=f"h_{i}")(x_BxTxD, mask_BxTxS, kv_cache, cache_index, positions_BxT,
                                                           deterministic)
    if cfg.arch == "llama":
      x_BxTxD = _rms_norm(cfg, "ln_f")(x_BxTxD)
    else:
      x_BxTxD = nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.compute_dtype, name="ln_f")(x_BxTxD)

    # `logits_span=(start, stop)`: logits of those positions only. The vocabulary projection is the
    # largest matmul of a small model; log-probs of a response need none of the prompt's logits.
    x_for_logits = x_BxTxD if logits_span is None else x_BxTxD[:, logits_span[0]:logits_span[1]]
    if cfg.tie_embeddings:
      logits_BxTxV = wte.attend(x_for_logits).astype(jnp.float32)
    else:
      logits_BxTxV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                              kernel_init=nn.initializers.normal(cfg.init_std), name="lm_head")(x_for_logits)
      logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    scalar_BxT = scalars_BxTxK = None
    if cfg.scalar_head:
      kernel_init = (nn.initializers.zeros if cfg.scalar_head_init == "zeros"
                     else nn.initializers.normal(1.0 / (cfg.d_model + 1) ** 0.5))
      head = nn.Dense(cfg.scalar_heads, dtype=jnp.float32, param_dtype=jnp.float32, kernel_init=kernel_init,
                      name="scalar_head")
      scalars_BxTxK = head(x_BxTxD.astype(jnp.float32))
      # One output is "the" value or reward; several are criteria, which only a rubric combines.
      scalar_BxT = scalars_BxTxK[..., 0] if cfg.scalar_heads == 1 else None
    new_cache = None
    if cache is not None:
      new_cache = KVCache(k_LxBxSxNxH=kv_cache[0], v_LxBxSxNxH=kv_cache[1], key_mask_BxS=key_mask_BxS,
                          index=cache.index + T)
    return ModelOutput(logits_BxTxV=logits_BxTxV, scalar_BxT=scalar_BxT, cache=new_cache, hidden_BxTxD=x_BxTxD,
                       scalars_BxTxK=scalars_BxTxK)


def init_params(config: ModelConfig, key: jax.Array) -> dict:
  """Initial parameters for `Transformer(config)` (use under `jax.jit` with out_shardings)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return Transformer(config).init(key, tokens)["params"]
