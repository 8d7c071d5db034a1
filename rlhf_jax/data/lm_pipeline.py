"""The language-model input pipeline: documents -> one token stream -> [B, T] batches.

1. `prepare_lm_tokens(spec, tokenizer)` reads the train and validation documents of a corpus
   spec (`split_corpus`: registered corpora from their TFDS array_record dataset, files split by
   the same by-document rule), tokenizes them and packs each split into one flat int32 stream
   where every document is followed by EOS. The two streams are cached as .npy files keyed by a hash of the documents,
   the tokenizer model and the split, so a rerun does not tokenize again.
2. `lm_dataset(tokens_N, T, B, seed=...)` cuts the stream into non-overlapping windows
   `tokens[i*T : i*T + T + 1]` (inputs = window[:-1], targets = window[1:]) and serves them
   shuffled, repeated and batched by grain. Its iterator is checkpointable
   (`get_state`/`set_state`), and `shard_index`/`shard_count` give each process its own windows.
3. `eval_batches(tokens_N, T, B)` is one deterministic pass over the validation stream in which
   every token after the first is a target exactly once (padding carries loss_mask 0).

Batches are dicts `{"inputs": int32[B, T], "targets": int32[B, T], "loss_mask": int32[B, T]}`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import grain
import numpy as np

from rlhf_jax import files
from rlhf_jax.data import corpora
from rlhf_jax.tokenizers import Tokenizer

CACHE_FORMAT = 1  # bump when packing changes, so old token caches are not reused
Batch = dict[str, np.ndarray]


def tokenize_documents(
    texts: Sequence[str], tokenizer: Tokenizer, num_threads: int = 0
) -> list[list[int]]:
  """Token ids of each text, encoded in the tokenizer's thread pool (<= 0 threads: all cores)."""
  return tokenizer.encode_batch(list(texts), num_threads=num_threads)


def pack(token_lists: Iterable[Sequence[int]], eos_id: int) -> np.ndarray:
  """One int32 stream `doc_0 EOS doc_1 EOS ...`: EOS tells the model where a document ends."""
  eos_1 = np.array([eos_id], np.int32)
  parts = []
  for ids in token_lists:
    parts.append(np.asarray(ids, np.int32))
    parts.append(eos_1)
  return np.concatenate(parts) if parts else np.zeros([0], np.int32)


@dataclasses.dataclass(frozen=True)
class LMTokens:
  train_N: np.ndarray  # int32 stream of the training documents
  validation_M: np.ndarray  # int32 stream of the held-out documents
  path: Path  # the cache dir holding train.npy, validation.npy and meta.json


def _cache_key(docs: Sequence[corpora.Document], tokenizer: Tokenizer, val_fraction: float) -> str:
  """A hash of everything the token streams depend on (the documents themselves, not the spec,
  so an edited file: corpus is tokenized again)."""
  h = hashlib.sha256()
  h.update(json.dumps([CACHE_FORMAT, tokenizer.fingerprint, repr(val_fraction)]).encode())
  for doc in docs:
    h.update(json.dumps([doc.id, doc.text], ensure_ascii=False).encode())
  return h.hexdigest()[:20]


def split_corpus(corpus_spec: str, val_fraction: float, *, cache: Path | None = None
                 ) -> tuple[list[corpora.Document], list[corpora.Document]]:
  """Train and validation documents of a corpus spec.

  Registered corpora (`brown`, `brown+austen`, ...) are read from their TFDS dataset, whose
  array_record files hold the split; `file:` and `tfds:` specs are loaded and split here by the
  same by-document rule (`corpora.split_documents`).
  """
  if corpus_spec.startswith(("file:", "tfds:")):
    return corpora.split_documents(corpora.load_documents(corpus_spec, cache=cache), val_fraction)
  from rlhf_jax.data import tfds_corpus
  data_dir = None if cache is None else Path(cache) / "tfds"
  return tuple(
      [corpora.Document(r["id"], r["text"])
       for r in tfds_corpus.data_source(corpus_spec, split, data_dir, val_fraction=val_fraction)]
      for split in ("train", "validation"))


def prepare_lm_tokens(
    corpus_spec: str,
    tokenizer: Tokenizer,
    *,
    val_fraction: float = 0.05,
    cache: Path | None = None,
    num_threads: int = 0,
) -> LMTokens:
  """Train and validation token streams of a corpus spec (see `corpora.load_documents`).

  Cached under `cache/lm_tokens/<key>` (default `files.cache_dir()`); the directory appears
  atomically, so concurrent or interrupted runs never read half-written arrays.
  """
  train_docs, val_docs = split_corpus(corpus_spec, val_fraction, cache=cache)
  final = (cache or files.cache_dir()) / "lm_tokens" / _cache_key(train_docs + val_docs, tokenizer, val_fraction)
  if not (final / "meta.json").exists():
    with files.atomic_directory(final) as building:
      streams = {}
      for split, split_docs in [("train", train_docs), ("validation", val_docs)]:
        ids = tokenize_documents([d.text for d in split_docs], tokenizer, num_threads)
        streams[split] = pack(ids, tokenizer.eos_id)
        np.save(building / f"{split}.npy", streams[split])
      meta = {"corpus": corpus_spec, "val_fraction": val_fraction,
              "tokenizer": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
              "n_docs": {"train": len(train_docs), "validation": len(val_docs)},
              "n_tokens": {k: int(v.size) for k, v in streams.items()}}
      (building / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
  return LMTokens(np.load(final / "train.npy"), np.load(final / "validation.npy"), final)


def num_windows(n_tokens: int, seq_len: int) -> int:
  """Full windows of T inputs + 1 shifted target in a stream of `n_tokens` tokens."""
  return max(n_tokens - 1, 0) // seq_len


@dataclasses.dataclass(frozen=True)
class _GatherWindows:
  """Maps a batch of window indices [B] to the batch of shifted input/target windows."""

  tokens_N: np.ndarray
  seq_len: int
  preference_N: np.ndarray | None = None

  def __call__(self, window_B: np.ndarray) -> Batch:
    offsets_BxT1 = window_B[:, None] * self.seq_len + np.arange(self.seq_len + 1)
    windows_BxT1 = self.tokens_N[offsets_BxT1]
    batch = {
        "inputs": windows_BxT1[:, :-1],
        "targets": windows_BxT1[:, 1:],
        "loss_mask": np.ones([len(window_B), self.seq_len], np.int32),
    }
    if self.preference_N is not None:  # the preference of each input token
      batch["preference"] = self.preference_N[offsets_BxT1[:, :-1]]
    return batch


def lm_dataset(
    tokens_N: np.ndarray,
    seq_len: int,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
    read_options: grain.ReadOptions | None = None,
    preference_N: np.ndarray | None = None,
) -> grain.IterDataset:
  """Shuffled, repeated batches of non-overlapping windows of the token stream.

  Every process shuffles all window indices with `seed` (grain mixes the epoch into the seed, so
  every epoch has a new order), repeats them `num_epochs` times (None: forever) and cuts global
  batches of `batch_size * shard_count` indices; process `shard_index` gathers rows
  `[shard_index * batch_size, (shard_index + 1) * batch_size)` of each. The global batch is
  therefore the same for any number of processes, so a multi-host run trains on exactly the
  batches of a single-process one, and processes never share a window within an epoch. Only
  indices are global: each process gathers its own rows, with one numpy fancy index per batch. The iterator of the returned
  dataset supports `get_state()`/`set_state()`; resuming from a state gives the same batches.
  `read_options` defaults to no worker threads: the tokens are in memory and a gather is cheap.
  `preference_N` (int32, aligned with `tokens_N`) adds each input token's preference id to the
  batches as `"preference"` (see `rlhf_jax.data.conditional`).
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index: expected 0 <= shard_index < shard_count={shard_count}, "
                     f"got {shard_index}")
  tokens_N = np.asarray(tokens_N, np.int32)
  _check_aligned(tokens_N, preference_N)
  n = num_windows(tokens_N.size, seq_len)
  if n < shard_count * (batch_size if drop_remainder else 1):
    raise ValueError(
        f"tokens_N: {tokens_N.size} tokens give {n} windows of seq_len={seq_len}, too few for "
        f"batch_size={batch_size} on {shard_count} shard(s); use a bigger corpus or smaller sizes")
  ds = grain.MapDataset.range(n)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).batch(batch_size * shard_count, drop_remainder=drop_remainder)
  if shard_count > 1:
    ds = ds.map(functools.partial(_process_rows, start=shard_index * batch_size, size=batch_size))
  ds = ds.map(_GatherWindows(tokens_N, seq_len,
                             None if preference_N is None else np.asarray(preference_N, np.int32)))
  read_options = read_options or grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return ds.to_iter_dataset(read_options)


def _process_rows(window_B: np.ndarray, *, start: int, size: int) -> np.ndarray:
  return window_B[start:start + size]


def _check_aligned(tokens_N: np.ndarray, preference_N: np.ndarray | None) -> None:
  if preference_N is not None and np.shape(preference_N) != tokens_N.shape:
    raise ValueError(f"preference_N: expected one preference id per token, shape {tokens_N.shape}, "
                     f"got {np.shape(preference_N)}")


def eval_batches(
    tokens_N: np.ndarray, seq_len: int, batch_size: int, *, pad_id: int = 0,
    preference_N: np.ndarray | None = None,
) -> list[Batch]:
  """All validation windows in order, the last ones padded, so every target counts exactly once.

  Window i is `tokens[i*T : i*T + T + 1]` as in training; the stream is padded with `pad_id` to
  whole batches and `loss_mask` is 1 exactly on the N - 1 real targets `tokens[1:]`. Summing
  masked losses over the batches therefore gives the loss of the whole validation stream.
  `preference_N` adds `"preference"` of each input token, as in `lm_dataset`.
  """
  tokens_N = np.asarray(tokens_N, np.int32)
  _check_aligned(tokens_N, preference_N)
  n_targets = tokens_N.size - 1
  if n_targets < 1:
    raise ValueError(f"tokens_N: need at least 2 validation tokens, got {tokens_N.size}")
  n_batches = math.ceil(math.ceil(n_targets / seq_len) / batch_size)
  n_slots = n_batches * batch_size * seq_len
  padded = np.full([n_slots + 1], pad_id, np.int32)
  padded[:tokens_N.size] = tokens_N
  mask = np.zeros([n_slots], np.int32)
  mask[:n_targets] = 1
  shape = [n_batches, batch_size, seq_len]
  inputs, targets = padded[:-1].reshape(shape), padded[1:].reshape(shape)
  loss_mask = mask.reshape(shape)
  batches = [{"inputs": inputs[b], "targets": targets[b], "loss_mask": loss_mask[b]} for b in range(n_batches)]
  if preference_N is not None:
    pref = np.zeros([n_slots + 1], np.int32)
    pref[:tokens_N.size] = preference_N
    pref_inputs = pref[:-1].reshape(shape)
    for b, batch in enumerate(batches):
      batch["preference"] = pref_inputs[b]
  return batches


@dataclasses.dataclass(frozen=True)
class LMDataConfig:
  corpus: str = "brown"  # a corpus spec: registry names joined by "+", file:PATH, tfds:NAME
  vocab_size: int = 4096
  seq_len: int = 128
  batch_size: int = 32  # global batch, split over the data axis
  eval_batch_size: int = 64
  val_fraction: float = 0.05
  tokenizer_threads: int = 0  # 0: all cores

  def __post_init__(self):
    if not 0.0 < self.val_fraction < 1.0:
      raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
    for name in ("vocab_size", "seq_len", "batch_size", "eval_batch_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}")
    if not self.corpus.startswith(("file:", "tfds:")):
      for name in self.corpus.split("+"):
        try:
          corpora.get_corpus(name)  # a typo fails here, before anything is downloaded or trained
        except ValueError as e:
          raise ValueError(f"data.corpus: {e}") from None


def prepare_tokenizer(config: LMDataConfig, path: Path, *, cache: Path | None = None,
                      user_defined_symbols: Sequence[str] = ()):
  """The run's tokenizer: loaded from `path` if the run already has one, else trained and saved.

  It is trained on the training documents only, so nothing about the validation split (not even
  its vocabulary) reaches the model. `user_defined_symbols` (e.g. control tokens) become single
  pieces that the tokenizer never splits.
  """
  from rlhf_jax.tokenizers import SentencePieceTokenizer
  path = Path(path)
  if path.exists():
    tokenizer = SentencePieceTokenizer.load(path)
    if tokenizer.vocab_size != config.vocab_size:
      raise ValueError(f"{path} has vocab_size {tokenizer.vocab_size} but data.vocab_size is "
                       f"{config.vocab_size}: use a new --workdir or the matching vocab size")
    return tokenizer
  train_docs, _ = split_corpus(config.corpus, config.val_fraction, cache=cache)
  return SentencePieceTokenizer.train((d.text for d in train_docs), config.vocab_size, path,
                                      num_threads=config.tokenizer_threads,
                                      user_defined_symbols=user_defined_symbols)
