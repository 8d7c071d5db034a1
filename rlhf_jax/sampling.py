"""Autoregressive sampling from `Transformer`, and teacher-forced log-probs of given tokens.

`generate` is the rollout half of RLHF: it returns the sampled tokens together with the log-prob
of each one, and the PPO update later recomputes those log-probs with `response_logprobs` (the
same forward the policy sees in training). The two must agree to float tolerance, so:

* The returned `logp` is log-softmax(logits / temperature) at the sampled token, i.e. the
  temperature-scaled distribution BEFORE the top-k / top-p filter. This is what the policy
  recomputes in the update ("The N Implementation Details of RLHF with PPO", Huang et al. 2023,
  detail on temperature: the original lm-human-preferences code divides the logits by the sampling
  temperature both when sampling and when recomputing). With top-k / top-p on, the tokens come from
  the filtered distribution while `logp` is under the unfiltered one; that is the usual choice
  because a filtered distribution has no gradient-friendly log-prob for the update to recompute.
* Temperature is an ordinary (traceable) argument: a Python float, a scalar array, or a `[B]`
  array of per-row temperatures. It does not change shapes, so one compiled program serves every
  temperature and temperatures can be vmapped in sweeps. `top_k` and `top_p` change the program
  (`top_k` fixes a shape; `top_p < 1` adds a sort), so they are static.

Prompts are LEFT-padded (`prompt_mask_BxP` is 0 on the left): all rows then end at the same slot,
so one decoding step appends one column to the whole batch. The model counts positions over real
tokens only, so a row's continuation does not depend on how much padding it has. Every prompt row
needs at least one real token.

Decoding runs `jax.lax.scan` for exactly `max_new_tokens` steps rather than a `while_loop` that
exits once every row has emitted EOS: the length is static, the program is simpler to shard and
to cost, and in RL batches some row usually runs to the limit anyway. Rows that have finished keep
running and emit `pad_id` with mask 0.

Use under jit with the static names in `GENERATE_STATIC_ARGNAMES`:

  generate_fn = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)
  out = generate_fn(params, prompt_BxP, prompt_mask_BxP, key, model=model, max_new_tokens=64,
                    temperature=0.7, eos_id=eos, pad_id=pad)
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import KVCache, Transformer

# Arguments of `generate` that select the compiled program. Everything else may be traced,
# including temperature, eos_id and pad_id: they change no shape, so changing them reuses the program.
GENERATE_STATIC_ARGNAMES = ("model", "max_new_tokens", "top_k", "top_p", "use_cache", "suppress_ids", "logits_fn")


@flax.struct.dataclass
class SampleOutput:
  tokens_BxN: jax.Array  # int32; pad_id after the first EOS
  logp_BxN: jax.Array  # float32; log-softmax(logits / temperature) at the token, 0 where mask is 0
  mask_BxN: jax.Array  # bool; True for generated tokens up to and including the first EOS
  lengths_B: jax.Array  # int32; number of True entries of mask_BxN
  ended_B: jax.Array  # bool; the row emitted EOS within max_new_tokens (RL often penalises rows that did not)


def _check_settings(temperature, top_k: int, top_p: float) -> None:
  # Only a concrete temperature can be checked; a traced one is the caller's responsibility.
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise UserError(f"temperature must be > 0, got {temperature}; use top_k=1 for greedy decoding")
  if top_k < 0:
    raise UserError(f"top_k must be >= 0 (0 turns it off), got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise UserError(f"top_p must be in (0, 1] (1.0 turns it off), got {top_p}")


def _scale(logits: jax.Array, temperature) -> jax.Array:
  """logits / temperature with temperature a scalar or one value per row (leading axis)."""
  t = jnp.asarray(temperature, jnp.float32)
  if t.ndim > 1:
    raise ValueError(f"temperature must be a scalar or a [B] array, got shape {t.shape}")
  return logits / t.reshape(t.shape + (1,) * (logits.ndim - t.ndim))


def _is_single_key(key: jax.Array) -> bool:
  """True for one key (typed `jax.random.key` or raw uint32[2]); False for a [B] batch of keys."""
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  return key.ndim == (0 if typed else 1)


def sample_logits(logits_BxV: jax.Array, key: jax.Array, temperature=1.0, top_k: int = 0,
                  top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Samples one token per row and returns `(token_B int32, logp_B float32)`.

  The token is drawn from softmax(logits / temperature) restricted first to the `top_k` largest
  logits (0 = off), then to the nucleus: the smallest set of most-likely tokens whose renormalised
  probability reaches `top_p` (1.0 = off; the top token is always kept). This is the order of the
  HuggingFace warpers. `logp_B` is the log-prob under the temperature-scaled distribution WITHOUT
  the filters, the one the policy recomputes during the RL update (see the module docstring).

  `key` is one key for the whole batch, or a `[B]` array of per-row keys; per-row keys make a
  row's draw independent of which other rows share the batch.
  """
  _check_settings(temperature, top_k, top_p)
  B, V = logits_BxV.shape
  scaled_BxV = _scale(logits_BxV.astype(jnp.float32), temperature)
  logp_BxV = jax.nn.log_softmax(scaled_BxV, axis=-1)

  k = top_k if 0 < top_k < V else (V if top_p < 1.0 else 0)
  if k:
    # Candidates sorted by decreasing logit; with only top_k this avoids sorting the vocabulary.
    cand_BxK, cand_ids_BxK = jax.lax.top_k(scaled_BxV, k)
    if top_p < 1.0:
      probs_BxK = jax.nn.softmax(cand_BxK, axis=-1)
      mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
      keep_BxK = (mass_before_BxK < top_p).at[:, 0].set(True)
      cand_BxK = jnp.where(keep_BxK, cand_BxK, -jnp.inf)
  else:
    cand_BxK, cand_ids_BxK = scaled_BxV, None

  if _is_single_key(key):
    u_B = jax.random.uniform(key, (B,))
  else:
    u_B = jax.vmap(lambda k: jax.random.uniform(k, ()))(key)
  choice_B = inverse_cdf_choice(jax.nn.softmax(cand_BxK, axis=-1), u_B)
  if cand_ids_BxK is None:
    token_B = choice_B
  else:
    token_B = jnp.take_along_axis(cand_ids_BxK, choice_B[:, None], axis=-1)[:, 0]
  token_B = token_B.astype(jnp.int32)
  logp_B = jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]
  return token_B, logp_B


def inverse_cdf_choice(probs_BxV: jax.Array, u_B: jax.Array) -> jax.Array:
  """The index i with C[i-1] <= u * C[V-1] < C[i] (C the cumulative sum of each row): a draw from
  `probs_BxV` given one uniform u in [0, 1) per row; entries of probability 0 are never drawn.

  Why not `jax.random.categorical`: its Gumbel-max trick needs V random numbers per row, and on
  CPU generating them was a quarter of a decoding step (vocabulary 8000: 2.8 ms of ~10 ms for 16
  rows); this needs one. The cumulative sum is taken in two levels, over blocks of ~sqrt(V)
  entries and then inside the chosen block, because XLA's long cumsums are slow on CPU.
  """
  B, V = probs_BxV.shape
  block = max(1, int(round(V ** 0.5)))
  n_blocks = -(-V // block)
  p_BxKxL = jnp.pad(probs_BxV, ((0, 0), (0, n_blocks * block - V))).reshape(B, n_blocks, block)
  mass_BxK = p_BxKxL.sum(-1)
  cum_BxK = jnp.cumsum(mass_BxK, axis=-1)
  target_B = u_B * cum_BxK[:, -1]
  # Rounding can put the target at or past the total: never step past the last block (entry) with mass.
  last_block_B = n_blocks - 1 - jnp.argmax((mass_BxK > 0)[:, ::-1], axis=-1)
  block_B = jnp.minimum(jnp.sum(cum_BxK <= target_B[:, None], axis=-1), last_block_B)
  inner_BxL = jnp.take_along_axis(p_BxKxL, block_B[:, None, None], axis=1)[:, 0]
  before_B = jnp.take_along_axis(cum_BxK, block_B[:, None], axis=-1)[:, 0] - jnp.take_along_axis(
      mass_BxK, block_B[:, None], axis=-1)[:, 0]
  inner_cum_BxL = before_B[:, None] + jnp.cumsum(inner_BxL, axis=-1)
  last_entry_B = block - 1 - jnp.argmax((inner_BxL > 0)[:, ::-1], axis=-1)
  entry_B = jnp.minimum(jnp.sum(inner_cum_BxL <= target_B[:, None], axis=-1), last_entry_B)
  return block_B * block + entry_B


def sample_logits_rows(logits_BxV: jax.Array, keys_B: jax.Array, temperature_B: jax.Array, top_k_B: jax.Array,
                       top_p_B: jax.Array, *, filtered: bool = True) -> tuple[jax.Array, jax.Array]:
  """`sample_logits` with every setting one traced value per row: `(token_B, logp_B)`.

  A server batches requests that each bring their own temperature, top_k (0 = off) and top_p
  (1.0 = off); as static arguments every new combination would compile a new program. Row b draws
  the token `sample_logits(logits_BxV[b:b+1], keys_B[b:b+1], temperature_B[b], top_k_B[b],
  top_p_B[b])` draws (the same uniform, the same candidates in the same order), so a request's
  tokens do not depend on which requests share its batch. `filtered` (static) False leaves the
  sort out, for batches where no row filters; it must then be that no row does.
  """
  B, V = logits_BxV.shape
  scaled_BxV = _scale(logits_BxV.astype(jnp.float32), temperature_B)
  logp_BxV = jax.nn.log_softmax(scaled_BxV, axis=-1)
  u_B = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys_B)
  token_B = inverse_cdf_choice(jax.nn.softmax(scaled_BxV, axis=-1), u_B)
  if filtered:
    # One full sort serves every row; a row's filters then act on ranks (sample_logits' order).
    cand_BxV, cand_ids_BxV = jax.lax.top_k(scaled_BxV, V)
    rank_V = jnp.arange(V)
    k_B = jnp.where((top_k_B > 0) & (top_k_B < V), top_k_B, V)
    cand_BxV = jnp.where(rank_V < k_B[:, None], cand_BxV, -jnp.inf)
    probs_BxV = jax.nn.softmax(cand_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = (mass_before_BxV < top_p_B[:, None]) | (rank_V == 0)
    cand_BxV = jnp.where(keep_BxV, cand_BxV, -jnp.inf)
    choice_B = inverse_cdf_choice(jax.nn.softmax(cand_BxV, axis=-1), u_B)
    sorted_token_B = jnp.take_along_axis(cand_ids_BxV, choice_B[:, None], axis=-1)[:, 0]
    filters_B = (k_B < V) | (top_p_B < 1.0)
    token_B = jnp.where(filters_B, sorted_token_B, token_B)
  token_B = token_B.astype(jnp.int32)
  return token_B, jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]


def finish_rows(token_B, logp_B, done_B, eos_id, pad_id):
  """A decoding step's tokens after the rows that had finished are masked: those emit `pad_id`
  with logp 0; returns `(token_B, logp_B, live_B, done_B)`, `live_B` the rows that emitted a real
  token (EOS included) and `done_B` the rows finished after this step."""
  live_B = ~done_B
  token_B = jnp.where(live_B, token_B, pad_id)
  logp_B = jnp.where(live_B, logp_B, 0.0)
  return token_B, logp_B, live_B, done_B | (live_B & (token_B == eos_id))


def _emit(logits_BxV, keys_B, done_B, temperature, top_k, top_p, eos_id, pad_id, suppress_ids=()):
  """One decoding step's output: finished rows emit pad with mask 0 and logp 0."""
  if suppress_ids:
    logits_BxV = logits_BxV.at[:, jnp.asarray(suppress_ids, jnp.int32)].set(-jnp.inf)
  token_B, logp_B = sample_logits(logits_BxV, keys_B, temperature, top_k, top_p)
  return finish_rows(token_B, logp_B, done_B, eos_id, pad_id)


def generate(params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, key: jax.Array, *,
             model: Transformer, max_new_tokens: int, temperature=1.0, top_k: int = 0,
             top_p: float = 1.0, eos_id: int, pad_id: int, use_cache: bool = True,
             suppress_ids: tuple[int, ...] = (), preference_B: jax.Array | None = None,
             logits_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> SampleOutput:
  """Samples `max_new_tokens` tokens after each left-padded prompt.

  Args:
    params: the `Transformer` parameters (the `'params'` collection).
    prompt_BxP: int tokens, left-padded.
    prompt_mask_BxP: 1/True for real prompt tokens, 0 for left padding.
    key: one PRNG key, split into one key per row, or a `[B]` array of per-row keys. Step `i` of
      row `b` uses `fold_in(row_key_b, i)`, so a row's tokens depend only on its own key, prompt
      and the settings, not on its batch neighbours or its padding.
    model: the `Transformer` module (static).
    max_new_tokens: N, the number of decoding steps (static). Prompt length + N must not exceed
      `model.config.max_len`, so that `response_logprobs` can score the whole sequence.
    temperature: Python float, scalar array or `[B]` array (traced; see module docstring).
    top_k, top_p: static filters, see `sample_logits`.
    eos_id: a row stops after emitting it (an id outside the vocabulary, e.g. -1, never stops).
      Traceable.
    pad_id: emitted after EOS. Traceable.
    use_cache: True decodes with a KV cache (one prefill, then one token per step). False
      recomputes the full forward over a fixed `[B, P + N]` buffer every step: O(N) times slower,
      kept as the reference that tests the cache.
    suppress_ids: token ids never sampled (static), e.g. a `<|bad|>` control token when sampling a
      conditionally trained model under `<|good|>`. `logp_BxN` is then the log-prob under the
      renormalized distribution that was sampled from.
    preference_B: for a model with `n_preferences`, the preference id every position of row b is
      conditioned on (prompt and continuation); None: id 0, unconditioned.
    logits_fn: `(lm_logits_BxV, hidden_BxD) -> logits_BxV`, the next-token logits to sample from,
      given the model's logits and final hidden state at the position before the new token (static;
      None: the LM's logits). Decoding with extra heads on the same KV cache, e.g. ILQL's
      advantage-reweighted logits (`steps.ilql.decode_logits` teacher-forced); `logp_BxN` is then
      under the distribution sampled, log-softmax(logits_fn(...) / temperature).

  Returns:
    `SampleOutput`; see its fields.
  """
  B, P = prompt_BxP.shape
  N = max_new_tokens
  max_len = model.config.max_len
  if N < 1:
    raise UserError(f"max_new_tokens must be >= 1, got {N}")
  if P + N > max_len:
    raise UserError(f"prompt length {P} + max_new_tokens {N} = {P + N} exceeds model.max_len={max_len} "
                     f"(the number of learned positions); lower max_new_tokens or truncate the prompts")
  _check_settings(temperature, top_k, top_p)
  prompt_BxP = prompt_BxP.astype(jnp.int32)
  prompt_mask_BxP = prompt_mask_BxP.astype(jnp.bool_)
  variables = {"params": params}

  def pref(T: int) -> jax.Array | None:
    """The model's preference input for T positions (None: unconditioned)."""
    if preference_B is None:
      return None
    return jnp.broadcast_to(jnp.asarray(preference_B, jnp.int32)[:, None], (B, T))

  row_keys_B = jax.random.split(key, B) if _is_single_key(key) else key
  fold_rows = jax.vmap(jax.random.fold_in, in_axes=(0, None))
  step_keys_NxB = jax.vmap(lambda i: fold_rows(row_keys_B, i))(jnp.arange(N, dtype=jnp.uint32))
  emit = lambda logits_BxV, keys_B, done_B: _emit(logits_BxV, keys_B, done_B, temperature, top_k,
                                                  top_p, eos_id, pad_id, suppress_ids)

  def next_logits(out, index: int | jax.Array) -> jax.Array:
    """The logits to sample from at position `index` of a forward's output."""
    logits_BxV = jax.lax.dynamic_index_in_dim(out.logits_BxTxV, index, axis=1, keepdims=False)
    if logits_fn is None:
      return logits_BxV
    return logits_fn(logits_BxV, jax.lax.dynamic_index_in_dim(out.hidden_BxTxD, index, axis=1, keepdims=False))

  if use_cache:
    # The last sampled token is never fed back, so P + N - 1 slots hold everything attended to.
    cache = KVCache.init(model.config, B, P + N - 1)
    out = model.apply(variables, prompt_BxP, input_mask_BxT=prompt_mask_BxP, cache=cache, preference_BxT=pref(P))
    token_B, logp_B, live_B, done_B = emit(next_logits(out, P - 1), step_keys_NxB[0], jnp.zeros((B,), jnp.bool_))

    def step(carry, keys_B):
      cache, token_B, live_B, done_B = carry
      # A finished row's pad is fed as padding so that it never becomes a key.
      out = model.apply(variables, token_B[:, None], input_mask_BxT=live_B[:, None], cache=cache, preference_BxT=pref(1))
      token_B, logp_B, live_B, done_B = emit(next_logits(out, 0), keys_B, done_B)
      return (out.cache, token_B, live_B, done_B), (token_B, logp_B, live_B)

    _, (rest_tokens_MxB, rest_logp_MxB, rest_live_MxB) = jax.lax.scan(
        step, (out.cache, token_B, live_B, done_B), step_keys_NxB[1:])
    tokens_NxB = jnp.concatenate([token_B[None], rest_tokens_MxB])
    logp_NxB = jnp.concatenate([logp_B[None], rest_logp_MxB])
    live_NxB = jnp.concatenate([live_B[None], rest_live_MxB])
  else:
    buffer_BxS = jnp.concatenate([prompt_BxP, jnp.full((B, N), pad_id, jnp.int32)], axis=1)
    buffer_mask_BxS = jnp.concatenate([prompt_mask_BxP, jnp.zeros((B, N), jnp.bool_)], axis=1)

    def step(carry, xs):
      buffer_BxS, buffer_mask_BxS, done_B = carry
      i, keys_B = xs
      out = model.apply(variables, buffer_BxS, input_mask_BxT=buffer_mask_BxS, preference_BxT=pref(P + N))
      token_B, logp_B, live_B, done_B = emit(next_logits(out, P - 1 + i), keys_B, done_B)
      buffer_BxS = jax.lax.dynamic_update_slice_in_dim(buffer_BxS, token_B[:, None], P + i, axis=1)
      buffer_mask_BxS = jax.lax.dynamic_update_slice_in_dim(buffer_mask_BxS, live_B[:, None], P + i, axis=1)
      return (buffer_BxS, buffer_mask_BxS, done_B), (token_B, logp_B, live_B)

    _, (tokens_NxB, logp_NxB, live_NxB) = jax.lax.scan(
        step, (buffer_BxS, buffer_mask_BxS, jnp.zeros((B,), jnp.bool_)), (jnp.arange(N), step_keys_NxB))

  tokens_BxN, logp_BxN, mask_BxN = tokens_NxB.T, logp_NxB.T, live_NxB.T
  return SampleOutput(
      tokens_BxN=tokens_BxN,
      logp_BxN=logp_BxN,
      mask_BxN=mask_BxN,
      lengths_B=mask_BxN.sum(-1, dtype=jnp.int32),
      ended_B=jnp.any(mask_BxN & (tokens_BxN == eos_id), axis=-1),
  )


def sequence_logprobs(params, tokens_BxT: jax.Array, mask_BxT: jax.Array, *, model: Transformer,
                      temperature=1.0, start: int = 0) -> jax.Array:
  """Teacher-forced log p(token_t | tokens_<t) under softmax(logits / temperature), as `logp_BxT`.

  Entry t is aligned with token t. It is 0 where the token is padding and where the row has no
  real token before t (a row's first real token has nothing to be predicted from). Padding may sit
  anywhere (left-padded prompts, padding after EOS): positions count real tokens only, as in
  `generate`, so this recomputes exactly the log-probs `generate` returned.

  `start` (static): only the entries of tokens start..T-1 (`[B, T - start]`); the logits before
  them are never computed (`Transformer`'s `logits_span`), which saves most of a forward's cost
  when the prompt is long and the vocabulary large.
  """
  mask_BxT = mask_BxT.astype(jnp.bool_)
  T = tokens_BxT.shape[1]
  first = max(start, 1)  # token 0 has nothing before it to be predicted from
  logits_BxLxV = model.apply({"params": params}, tokens_BxT.astype(jnp.int32), input_mask_BxT=mask_BxT,
                             logits_span=(first - 1, T - 1)).logits_BxTxV
  logp_BxLxV = jax.nn.log_softmax(_scale(logits_BxLxV, temperature), axis=-1)
  next_logp_BxL = jnp.take_along_axis(logp_BxLxV, tokens_BxT[:, first:, None].astype(jnp.int32), axis=-1)[..., 0]
  logp_BxU = jnp.pad(next_logp_BxL, ((0, 0), (first - start, 0)))  # U = T - start
  n_real_before_BxT = jnp.cumsum(mask_BxT, axis=-1, dtype=jnp.int32) - mask_BxT
  return jnp.where(mask_BxT[:, start:] & (n_real_before_BxT[:, start:] > 0), logp_BxU, 0.0)


def response_logprobs(params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                      response_BxN: jax.Array, response_mask_BxN: jax.Array, *, model: Transformer,
                      temperature=1.0) -> jax.Array:
  """`logp_BxN` of a response after its left-padded prompt: recomputes `SampleOutput.logp_BxN`.

  This is the log-prob the RL update needs (policy and reference model alike); `response_mask_BxN`
  is `SampleOutput.mask_BxN`, and entries where it is 0 are 0.
  """
  tokens_BxT = jnp.concatenate([prompt_BxP.astype(jnp.int32), response_BxN.astype(jnp.int32)], axis=1)
  mask_BxT = jnp.concatenate([prompt_mask_BxP.astype(jnp.bool_), response_mask_BxN.astype(jnp.bool_)],
                             axis=1)
  return sequence_logprobs(params, tokens_BxT, mask_BxT, model=model, temperature=temperature,
                           start=prompt_BxP.shape[1])


@functools.partial(jax.jit, static_argnames=("model", "cache_len", "top_k", "top_p"))
def _prefill(params, prompt_1xP, mask_1xP, step_key, temperature, *, model: Transformer, cache_len: int, top_k: int,
             top_p: float):
  cache = KVCache.init(model.config, 1, cache_len)
  out = model.apply({"params": params}, prompt_1xP, input_mask_BxT=mask_1xP, cache=cache)
  token_1, _ = sample_logits(out.logits_BxTxV[:, -1], step_key[None], temperature, top_k, top_p)
  return out.cache, token_1


@functools.partial(jax.jit, static_argnames=("model", "top_k", "top_p"))
def _decode(params, cache, token_1, step_key, temperature, *, model: Transformer, top_k: int, top_p: float):
  out = model.apply({"params": params}, token_1[:, None], input_mask_BxT=jnp.ones((1, 1), jnp.bool_), cache=cache)
  token_1, _ = sample_logits(out.logits_BxTxV[:, 0], step_key[None], temperature, top_k, top_p)
  return out.cache, token_1


def stream(params, prompt_ids, key: jax.Array, *, model: Transformer, max_new_tokens: int, temperature=1.0,
           top_k: int = 0, top_p: float = 1.0, eos_id: int, pad_id: int, prompt_len: int | None = None):
  """Yields the tokens of one continuation as they are sampled (for `rlhf-jax chat`).

  The same tokens as `generate` on the prompt left-padded to `prompt_len` (default: all the
  positions that `max_new_tokens` leaves) with the same key, up to and including EOS: row key
  `split(key, 1)[0]`, step i `fold_in(row_key, i)`. A fixed `prompt_len` keeps one compiled
  program for prompts of any length; a longer prompt keeps its last `prompt_len` tokens.
  """
  _check_settings(temperature, top_k, top_p)
  P = model.config.max_len - max_new_tokens if prompt_len is None else prompt_len
  if P < 1 or P + max_new_tokens > model.config.max_len:
    raise UserError(f"prompt_len {P} + max_new_tokens {max_new_tokens} must fit model.max_len="
                     f"{model.config.max_len}, with room for at least one prompt token")
  ids = list(prompt_ids)[-P:] or [eos_id]
  prompt_1xP = jnp.asarray([[pad_id] * (P - len(ids)) + ids], jnp.int32)
  mask_1xP = jnp.asarray([[False] * (P - len(ids)) + [True] * len(ids)])
  row_key = jax.random.split(key, 1)[0]
  cache, token_1 = _prefill(params, prompt_1xP, mask_1xP, jax.random.fold_in(row_key, 0), temperature, model=model,
                            cache_len=P + max_new_tokens - 1, top_k=top_k, top_p=top_p)
  for i in range(max_new_tokens):
    token = int(token_1[0])
    yield token
    if token == eos_id or i == max_new_tokens - 1:
      return
    cache, token_1 = _decode(params, cache, token_1, jax.random.fold_in(row_key, i + 1), temperature, model=model,
                             top_k=top_k, top_p=top_p)


def complete(generate: Callable, params, tokenizer, prompts: list[str], key: jax.Array) -> list[str]:
  """Decoded continuations of `prompts` (left-padded to the longest); `generate(params, tokens_BxP,
  mask_BxP, key)` is a jitted `generate`."""
  tokens_BxP, mask_BxP = prompts_lib.encode_prompts(tokenizer, prompts)
  out = jax.device_get(generate(params, tokens_BxP, mask_BxP, key))
  return [tokenizer.decode([int(t) for t, m in zip(row, mask) if m and t != tokenizer.eos_id])
          for row, mask in zip(out.tokens_BxN, out.mask_BxN)]
