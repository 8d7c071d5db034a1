"""Supervised fine-tuning batches from rows: demonstrations with the loss on the completion only.

1. `examples(rows, tokenizer, seq_len)`: each text row (`records.as_text`: a language-modeling
   `text`, or `prompt` + `completion`) as next-token arrays of at most `seq_len` tokens: `inputs`,
   `targets` and `loss_mask`, which is 1 on the completion's tokens and the EOS that ends it (every
   token of a text row), 0 on the prompt's. The prompt and the completion are tokenized apart, so
   the boundary between them is exact.
2. `dataset(examples, seq_len, batch_size, seed=...)`: shuffled, repeated examples, packed several
   to a row by grain's first-fit packing (`pack=False`: one a row, right-padded). A packed row
   carries `segment_ids` (1, 2, ... per example, 0 for padding): the model attends within each
   example and restarts its positions there, so packing changes no example's loss, only how many
   rows a batch needs. The iterator is checkpointable (`get_state`/`set_state`).
3. `eval_batches(examples, seq_len, batch_size)`: every held-out example once, unpacked.
"""

from __future__ import annotations

from typing import Sequence

import grain
import grain.experimental
import numpy as np

from rlhf_jax.data import rows as rows_lib

Example = dict[str, np.ndarray]
FEATURES = ("inputs", "targets", "loss_mask")


def examples(rows: Sequence[dict], tokenizer, seq_len: int) -> list[Example]:
  """Next-token training arrays of each row (module docstring), cut to `seq_len` tokens."""
  out = []
  has_prompt = bool(rows) and "prompt" in rows[0]
  prompts = tokenizer.encode_batch([r["prompt"] for r in rows]) if has_prompt else [[] for _ in rows]
  bodies = tokenizer.encode_batch([r["completion"] if has_prompt else r["text"] for r in rows])
  for prompt, body in zip(prompts, bodies):
    tokens = np.asarray(prompt + body + [tokenizer.eos_id], np.int32)[:seq_len + 1]
    weight = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(body) + 1, np.int32)])[:seq_len + 1]
    if not has_prompt:
      weight[:] = 1
    out.append({"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": weight[1:]})
  return out


class _Rename:
  """Grain's packed features -> a batch: its tokens, targets, loss mask and segment ids."""

  def __call__(self, packed: Example) -> Example:
    return {"inputs": packed["inputs"], "targets": packed["targets"], "loss_mask": packed["loss_mask"],
            "segment_ids": packed["inputs_segment_ids"]}


def _padded(example: Example, seq_len: int) -> Example:
  n = len(example["inputs"])
  out = {name: np.zeros(seq_len, np.int32) for name in FEATURES}
  for name in FEATURES:
    out[name][:n] = example[name]
  out["segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
  return out


def dataset(examples: Sequence[Example], seq_len: int, batch_size: int, *, seed: int, pack: bool = True,
            shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
  """Shuffled, repeated batches [batch_size, seq_len] of `examples` (module docstring); process
  `shard_index` of `shard_count` packs its own share of the examples."""
  if len(examples) < shard_count:
    raise ValueError(f"{len(examples)} examples are too few for {shard_count} processes")
  ds = grain.MapDataset.source(list(examples))[shard_index::shard_count].shuffle(seed=seed).repeat(None)
  if not pack:
    return ds.map(lambda e: _padded(e, seq_len)).batch(batch_size, drop_remainder=True).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  packed = grain.experimental.FirstFitPackIterDataset(
      ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)),
      length_struct={name: seq_len for name in FEATURES}, num_packing_bins=batch_size, seed=seed)
  return packed.map(_Rename()).batch(batch_size, drop_remainder=True)


def eval_batches(examples: Sequence[Example], seq_len: int, batch_size: int) -> list[dict[str, np.ndarray]]:
  """Every example once, right-padded, in batches of `batch_size` (the last filled with rows whose
  loss mask is 0): summed masked losses over them are the held-out set's."""
  padded = [_padded(e, seq_len) for e in examples]
  arrays = {name: np.stack([p[name] for p in padded]) for name in FEATURES}
  batches = rows_lib.eval_row_batches(arrays, batch_size)
  for batch in batches:
    batch["loss_mask"] = batch["loss_mask"] * batch.pop("row_mask")[:, None].astype(np.int32)
  return batches
