"""Datasets of fixed-size rows (one example per row): tokenized texts with masks and labels.

Reward-model and preference data are examples, not a token stream: each row is one text (or one
pair) padded or cut to a fixed length. `rows_dataset` serves such arrays through grain the same way
`lm_pipeline.lm_dataset` serves windows (shuffled per epoch, repeated, batched, per-process sharded,
checkpointable); `eval_row_batches` is one ordered pass where padding rows carry `row_mask` 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import grain
import numpy as np

Arrays = dict[str, np.ndarray]


def pad_rows(token_lists: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded int32 tokens [N, length] and mask [N, length]; longer texts keep their first tokens."""
  tokens_NxT = np.full((len(token_lists), length), pad_id, np.int32)
  mask_NxT = np.zeros((len(token_lists), length), np.int32)
  for i, tokens in enumerate(token_lists):
    tokens = list(tokens)[:length]
    if not tokens:
      raise ValueError(f"row {i} has no tokens: every example needs at least one")
    tokens_NxT[i, :len(tokens)] = tokens
    mask_NxT[i, :len(tokens)] = 1
  return tokens_NxT, mask_NxT


def _num_rows(arrays: Arrays) -> int:
  sizes = {name: len(a) for name, a in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"arrays must have the same number of rows, got {sizes}")
  return next(iter(sizes.values()))


@dataclasses.dataclass(frozen=True)
class _Gather:
  arrays: Arrays

  def __call__(self, index_B: np.ndarray) -> Arrays:
    return {name: a[index_B] for name, a in self.arrays.items()}


def rows_dataset(arrays: Arrays, batch_size: int, *, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
  """Shuffled, repeated batches of rows; the iterator supports get_state()/set_state()."""
  n = _num_rows(arrays)
  if n < shard_count * batch_size:
    raise ValueError(f"{n} rows are too few for batch_size={batch_size} on {shard_count} process(es)")
  ds = grain.MapDataset.range(n)[shard_index::shard_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).batch(batch_size, drop_remainder=True).map(_Gather(arrays))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def eval_row_batches(arrays: Arrays, batch_size: int) -> list[Arrays]:
  """Every row once, in order; the last batch is filled with copies of row 0 marked `row_mask` 0."""
  n = _num_rows(arrays)
  n_batches = math.ceil(n / batch_size)
  index = np.zeros(n_batches * batch_size, np.int64)
  index[:n] = np.arange(n)
  row_mask = (np.arange(n_batches * batch_size) < n).astype(np.float32)
  return [{**{name: a[index[b * batch_size:(b + 1) * batch_size]] for name, a in arrays.items()},
           "row_mask": row_mask[b * batch_size:(b + 1) * batch_size]} for b in range(n_batches)]
