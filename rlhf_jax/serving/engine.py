"""Dynamic batching of generation requests onto the KV-cache sampler, for `rlhf-jax serve`.

Requests arrive one at a time from many clients; the device wants them together. A background
thread takes whatever requests are waiting (up to `max_batch` rows, each of a request's `n`
choices one row), pads them into one batch of bucketed shape and decodes it: a prefill over the
left-padded prompts, then jitted chunks of `chunk` decoding steps. After each chunk the host
reads the new tokens, turns them into text for each choice (stop strings, `max_tokens`, EOS) and
hands the new text to the request's sink, which is how streaming clients see tokens as they come.
A batch ends when all its rows have finished; requests that arrived meanwhile form the next one.
This is dynamic (wave) batching, not continuous batching: a new request waits for the running
batch to end, at most `max_tokens` steps.

Shapes are bucketed so that no request length compiles a new program: the batch to a power of
two up to `max_batch`, the prompt to a power of two, the cache to a power of two that holds the
prompt and the longest request's tokens. Per-row settings (temperature, top_k, top_p) are traced
arrays (`sampling.sample_logits_rows`), so they do not select programs either; the only other
static choice is whether any row filters (a sort of the vocabulary per step).

Determinism: choice j of a request with seed s samples with the row key `fold_in(key(s), j)` and
step i with `fold_in(row_key, i)`, exactly as `sampling.generate` does with that row key, and a
row's tokens depend only on its own prompt, key and settings: the same request gives the same
answer alone or among 15 others (up to float differences between batch shapes; tested).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import sampling
from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import KVCache, ModelConfig, Transformer

_log = logging.getLogger(__name__)
SEEDS = (-(1 << 63), (1 << 63) - 1)  # a 64-bit signed seed


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
  """One prompt, sampled `n` times; validated by the API layer, checked again by `Engine.submit`."""
  prompt_ids: tuple[int, ...]
  max_tokens: int
  temperature: float = 1.0  # 0: greedy (top_k 1)
  top_p: float = 1.0
  top_k: int = 0
  n: int = 1
  seed: int = 0
  stop: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Delta:
  """New text of choice `index` (streamed as it is decoded)."""
  index: int
  text: str


@dataclasses.dataclass(frozen=True)
class Finished:
  """Choice `index` ended: "stop" (EOS or a stop string) or "length" (max_tokens); `tokens` sampled."""
  index: int
  reason: str
  tokens: int


@dataclasses.dataclass(frozen=True)
class Failed:
  """The batch holding the request failed; no further events come."""
  message: str


Event = Delta | Finished | Failed
Sink = Callable[[Event], None]


class Handle:
  """A submitted request; `cancel()` (a client that went away) stops its rows at the next chunk."""

  def __init__(self, request: GenerationRequest, sink: Sink):
    self.request, self.sink = request, sink
    self.cancelled = False

  def cancel(self) -> None:
    self.cancelled = True


# ---------------------------------------------------------------------------------------------
# The device programs.


@flax.struct.dataclass
class RowSettings:
  temperature_B: jax.Array  # float32 > 0
  top_k_B: jax.Array  # int32; 0 = off
  top_p_B: jax.Array  # float32; 1 = off


@flax.struct.dataclass
class DecodeState:
  cache: KVCache
  token_B: jax.Array  # int32; the last token emitted (pad for a finished row)
  live_B: jax.Array  # bool; token_B is a real token (fed to the model as one)
  done_B: jax.Array  # bool; the row emitted EOS or was stopped by the host
  step: jax.Array  # int32 scalar; the index of the next token (its key is fold_in(row_key, step))


_fold_rows = jax.vmap(jax.random.fold_in, in_axes=(0, None))


def _emit(logits_BxV, keys_B, step, done_B, settings: RowSettings, eos_id, pad_id, filtered: bool):
  token_B, logp_B = sampling.sample_logits_rows(logits_BxV, _fold_rows(keys_B, step), settings.temperature_B,
                                                settings.top_k_B, settings.top_p_B, filtered=filtered)
  token_B, _, live_B, done_B = sampling.finish_rows(token_B, logp_B, done_B, eos_id, pad_id)
  return token_B, live_B, done_B


@functools.partial(jax.jit, static_argnames=("model", "cache_len", "filtered"))
def prefill(params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, keys_B: jax.Array, settings: RowSettings,
            stopped_B: jax.Array, eos_id, pad_id, *, model: Transformer, cache_len: int,
            filtered: bool) -> DecodeState:
  """Reads the left-padded prompts into a `cache_len`-slot cache and samples token 0 of each row
  (`stopped_B`: padding rows of the bucket, finished from the start)."""
  B, P = prompt_BxP.shape
  cache = KVCache.init(model.config, B, cache_len)
  out = model.apply({"params": params}, prompt_BxP, input_mask_BxT=prompt_mask_BxP, cache=cache)
  token_B, live_B, done_B = _emit(out.logits_BxTxV[:, -1], keys_B, 0, stopped_B, settings, eos_id, pad_id, filtered)
  return DecodeState(cache=out.cache, token_B=token_B, live_B=live_B, done_B=done_B, step=jnp.ones((), jnp.int32))


@functools.partial(jax.jit, static_argnames=("model", "steps", "filtered"), donate_argnames=("state",))
def decode(params, state: DecodeState, keys_B: jax.Array, settings: RowSettings, stopped_B: jax.Array, eos_id, pad_id,
           *, model: Transformer, steps: int, filtered: bool) -> tuple[DecodeState, jax.Array, jax.Array]:
  """`steps` more tokens of every row: `(state, tokens_BxC, live_BxC)`; rows in `stopped_B` (the
  host saw a stop string, or max_tokens, or the client left) are finished from now on."""

  def step(state: DecodeState, _):
    # A finished row's pad is fed as padding so that it never becomes a key (as in generate).
    out = model.apply({"params": params}, state.token_B[:, None], input_mask_BxT=state.live_B[:, None],
                      cache=state.cache)
    token_B, live_B, done_B = _emit(out.logits_BxTxV[:, 0], keys_B, state.step, state.done_B, settings, eos_id,
                                    pad_id, filtered)
    new = DecodeState(cache=out.cache, token_B=token_B, live_B=live_B, done_B=done_B, step=state.step + 1)
    return new, (token_B, live_B)

  state = state.replace(done_B=state.done_B | stopped_B)
  state, (tokens_CxB, live_CxB) = jax.lax.scan(step, state, None, length=steps)
  return state, tokens_CxB.T, live_CxB.T


def bucket(n: int, smallest: int = 1, largest: int | None = None) -> int:
  """The smallest power of two >= max(n, smallest), capped at `largest`."""
  size = max(smallest, 1 << max(0, (n - 1).bit_length()))
  return size if largest is None else min(size, largest)


# ---------------------------------------------------------------------------------------------
# The host side: text, stop strings, and the batching thread.


class _Choice:
  """One row's text as it grows: what has been sent, and whether and why it ended."""

  def __init__(self, handle: Handle, index: int):
    self.handle, self.index = handle, index
    self.ids: list[int] = []
    self.sent = ""  # the text already handed to the sink
    self.reason: str | None = None
    self.sampled = 0

  @property
  def done(self) -> bool:
    return self.reason is not None or self.handle.cancelled

  def add(self, tokens: Sequence[int], tokenizer, eos_id: int) -> None:
    """Takes a chunk's tokens, ends the choice on EOS, a stop string or max_tokens, and sends
    the text that can no longer change."""
    request = self.handle.request
    for token in tokens:
      self.sampled += 1
      if token == eos_id:
        self.reason = "stop"
        break
      self.ids.append(token)
      if len(self.ids) >= request.max_tokens:
        self.reason = "length"
        break
    text = tokenizer.decode(self.ids)
    hits = [i for i in (text.find(s) for s in request.stop) if i >= 0]
    if hits:
      text, self.reason = text[:min(hits)], "stop"
    if self.reason is None:
      # Hold back what may still change: an unfinished UTF-8 character (decoded as U+FFFD), and
      # an ending that may be the start of a stop string.
      keep = len(text.rstrip("\ufffd"))
      if request.stop:
        keep = min(keep, len(text) - max(len(s) for s in request.stop) + 1)
      text = text[:max(keep, 0)]
    if len(text) > len(self.sent) and text.startswith(self.sent):
      self.handle.sink(Delta(self.index, text[len(self.sent):]))
      self.sent = text
    if self.reason is not None:
      self.handle.sink(Finished(self.index, self.reason, self.sampled))


class Engine:
  """Serves `GenerationRequest`s from a background thread; see the module docstring.

  `submit(request, sink)` queues a request and returns at once; the sink is called from the
  engine's thread with `Delta`s, one `Finished` per choice, or one `Failed`.
  """

  def __init__(self, model: ModelConfig, params: Any, tokenizer, *, max_batch: int = 16, chunk: int = 8,
               batch_wait_s: float = 0.002, max_queued_rows: int = 1024):
    if max_batch < 1 or max_batch & (max_batch - 1):
      raise UserError(f"max_batch: expected a power of two >= 1, got {max_batch}")
    if chunk < 1:
      raise UserError(f"chunk: expected >= 1 decoding steps a chunk, got {chunk}")
    self.config, self.params, self.tokenizer = model, params, tokenizer
    self.model = Transformer(model)
    self.max_batch, self.chunk, self.batch_wait_s = max_batch, chunk, batch_wait_s
    self.max_queued_rows = max_queued_rows
    self.eos_id, self.pad_id = tokenizer.eos_id, tokenizer.pad_id
    self._queue: collections.deque[Handle] = collections.deque()
    self._cv = threading.Condition()
    self._closed = False
    self._thread = threading.Thread(target=self._loop, name="rlhf-jax-serve-engine", daemon=True)
    self._thread.start()
    self.batches = 0  # counters for /health and the benchmark
    self.rows = 0

  def check(self, request: GenerationRequest) -> None:
    """Raises UserError naming the field when the request cannot be served as asked."""
    if not 1 <= request.n <= self.max_batch:
      raise UserError(f"n: expected 1..{self.max_batch} (the largest batch of this server), got {request.n}")
    if request.max_tokens < 1:
      raise UserError(f"max_tokens: expected >= 1, got {request.max_tokens}")
    if not SEEDS[0] <= request.seed <= SEEDS[1]:  # jax.random.key's range; outside it a whole batch would fail
      raise UserError(f"seed: expected an integer in [{SEEDS[0]}, {SEEDS[1]}], got {request.seed}")
    total = max(len(request.prompt_ids), 1) + request.max_tokens
    if total > self.config.max_len:
      raise UserError(f"max_tokens: the prompt's {len(request.prompt_ids)} tokens + max_tokens {request.max_tokens} "
                      f"= {total} exceed the model's context of {self.config.max_len} tokens")

  def submit(self, request: GenerationRequest, sink: Sink) -> Handle:
    self.check(request)
    handle = Handle(request, sink)
    with self._cv:
      if self._closed:
        raise RuntimeError("the engine is closed")
      queued = sum(h.request.n for h in self._queue)
      if queued + request.n > self.max_queued_rows:
        raise QueueFull(f"{queued} choices are waiting (the limit is {self.max_queued_rows}); try again shortly")
      self._queue.append(handle)
      self._cv.notify()
    return handle

  def close(self) -> None:
    with self._cv:
      self._closed = True
      self._cv.notify()
    self._thread.join()

  def _take(self) -> list[Handle] | None:
    """The next batch's requests (FIFO, whole requests, at most max_batch rows); None once closed."""
    with self._cv:
      while not self._queue and not self._closed:
        self._cv.wait()
      if self._closed:
        return None
      waiting = sum(h.request.n for h in self._queue)  # under the lock: submit appends meanwhile
    if waiting < self.max_batch:
      time.sleep(self.batch_wait_s)  # let the requests sent together arrive together
    with self._cv:
      batch, rows = [], 0
      while self._queue and rows + self._queue[0].request.n <= self.max_batch:
        handle = self._queue.popleft()
        if not handle.cancelled:
          batch.append(handle)
          rows += handle.request.n
      return batch

  def _loop(self) -> None:
    while (batch := self._take()) is not None:
      if not batch:
        continue
      try:
        self.run_batch(batch)
      except Exception as e:  # a failing batch must not end the server
        _log.exception("a batch of %d requests failed", len(batch))
        for handle in batch:
          handle.sink(Failed(f"generation failed: {type(e).__name__}: {e}"))

  def warmup(self, prompt_tokens: int, max_tokens: int, filtered: bool = False) -> None:
    """Compiles the programs of every batch bucket for requests of this size (before serving:
    which buckets a load forms depends on when its requests arrive)."""
    request = GenerationRequest(prompt_ids=(self.eos_id,) * prompt_tokens, max_tokens=max_tokens,
                                temperature=0.0 if filtered else 1.0)
    self.check(request)
    counters = self.batches, self.rows
    for size in (1 << i for i in range(self.max_batch.bit_length())):
      self.run_batch([Handle(dataclasses.replace(request, n=size), lambda event: None)])
    self.batches, self.rows = counters  # /health counts requests served, not these

  def run_batch(self, handles: Sequence[Handle]) -> None:
    """Decodes one batch to the end; called by the engine's thread (and by tests directly)."""
    choices = [_Choice(h, j) for h in handles for j in range(h.request.n)]
    B = bucket(len(choices), largest=self.max_batch)
    contexts = [list(c.handle.request.prompt_ids)[-self.config.max_len:] or [self.eos_id] for c in choices]
    P = bucket(max(len(ids) for ids in contexts), smallest=8)
    longest = max(c.handle.request.max_tokens for c in choices)
    steps = -(-(longest - 1) // self.chunk) * self.chunk  # decoding steps after prefill's token
    cache_len = bucket(P + steps, smallest=16)

    prompt_BxP = np.full((B, P), self.pad_id, np.int32)
    mask_BxP = np.zeros((B, P), bool)
    for b, ids in enumerate(contexts):
      prompt_BxP[b, P - len(ids):], mask_BxP[b, P - len(ids):] = ids, True
    mask_BxP[len(choices):, -1] = True  # padding rows: one real token each, finished from the start
    keys = [jax.random.fold_in(jax.random.key(c.handle.request.seed), c.index) for c in choices]
    keys_B = jnp.stack(keys + [keys[0]] * (B - len(choices)))
    requests = [c.handle.request for c in choices] + [choices[0].handle.request] * (B - len(choices))
    greedy_B = np.array([r.temperature == 0 for r in requests])
    settings = RowSettings(
        temperature_B=jnp.asarray(np.where(greedy_B, 1.0, [r.temperature for r in requests]), jnp.float32),
        top_k_B=jnp.asarray(np.where(greedy_B, 1, [r.top_k for r in requests]), jnp.int32),
        top_p_B=jnp.asarray([r.top_p for r in requests], jnp.float32))
    filtered = bool(greedy_B.any() or any(r.top_k > 0 or r.top_p < 1.0 for r in requests))
    stopped_B = np.arange(B) >= len(choices)

    state = prefill(self.params, jnp.asarray(prompt_BxP), jnp.asarray(mask_BxP), keys_B, settings,
                    jnp.asarray(stopped_B), self.eos_id, self.pad_id, model=self.model, cache_len=cache_len,
                    filtered=filtered)
    tokens_BxC, live_BxC = jax.device_get((state.token_B[:, None], state.live_B[:, None]))
    self.batches += 1
    self.rows += len(choices)
    while True:
      for b, choice in enumerate(choices):
        if not choice.done:
          choice.add([int(t) for t, live in zip(tokens_BxC[b], live_BxC[b]) if live], self.tokenizer, self.eos_id)
      stopped_B[:len(choices)] = [c.done for c in choices]
      if stopped_B.all():
        return
      state, tokens_BxC, live_BxC = decode(self.params, state, keys_B, settings, jnp.asarray(stopped_B), self.eos_id,
                                           self.pad_id, model=self.model, steps=self.chunk, filtered=filtered)
      tokens_BxC, live_BxC = jax.device_get((tokens_BxC, live_BxC))


class QueueFull(Exception):
  """More choices are waiting than the engine takes; the API answers 503."""
