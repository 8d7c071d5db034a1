"""Tests for rlhf_jax.data.lm_pipeline: packing, windows, shuffling, sharding, resume, eval, caching."""

from __future__ import annotations

import json
import math

import data_fixtures
import numpy as np
import pytest

from rlhf_jax.data import corpora, lm_pipeline
from rlhf_jax.tokenizers import SentencePieceTokenizer

T, B = 8, 4


def take(dataset_or_iter, n):
  it = iter(dataset_or_iter)
  return [next(it) for _ in range(n)]


def window_starts(batch):
  """With tokens = arange(N), a window's first input is its start offset."""
  return list(batch["inputs"][:, 0])


def test_pack_puts_eos_after_every_document():
  stream = lm_pipeline.pack([[5, 6], [7], []], eos_id=3)
  assert stream.dtype == np.int32
  assert stream.tolist() == [5, 6, 3, 7, 3, 3]
  assert lm_pipeline.pack([], eos_id=3).size == 0


def test_windows_are_shifted_and_non_overlapping():
  tokens = np.arange(10 * T + 5)
  batch = take(lm_pipeline.lm_dataset(tokens, T, B, seed=0, shuffle=False), 1)[0]
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "inputs": ((B, T), np.int32), "targets": ((B, T), np.int32),
      "loss_mask": ((B, T), np.int32)}
  np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
  np.testing.assert_array_equal(batch["inputs"][:, 0], np.arange(B) * T)
  assert batch["loss_mask"].all()


def test_one_epoch_visits_every_window_once_and_epochs_reshuffle():
  n_windows = 6 * B
  tokens = np.arange(n_windows * T + 1)
  batches = take(lm_pipeline.lm_dataset(tokens, T, B, seed=3, num_epochs=2), 12)
  epoch1 = [s for b in batches[:6] for s in window_starts(b)]
  epoch2 = [s for b in batches[6:] for s in window_starts(b)]
  assert sorted(epoch1) == sorted(epoch2) == list(range(0, n_windows * T, T))
  assert epoch1 != sorted(epoch1)  # shuffled
  assert epoch1 != epoch2  # a new order each epoch
  with pytest.raises(StopIteration):
    take(lm_pipeline.lm_dataset(tokens, T, B, seed=3, num_epochs=2), 13)


def test_same_seed_same_batches_other_seed_other_batches():
  tokens = np.arange(50 * T + 1)
  a, b, c = (take(lm_pipeline.lm_dataset(tokens, T, B, seed=s), 5) for s in (7, 7, 8))
  assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
  assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_resume_from_saved_state_gives_the_same_batches():
  tokens = np.arange(30 * T + 1)
  dataset = lm_pipeline.lm_dataset(tokens, T, B, seed=0)
  it = iter(dataset)
  take(it, 11)  # crosses an epoch boundary (7 batches per epoch)
  state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
  expected = take(it, 9)
  resumed = iter(lm_pipeline.lm_dataset(tokens, T, B, seed=0))
  resumed.set_state(state)
  for x, y in zip(expected, take(resumed, 9)):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_shards_are_disjoint_and_cover_all_windows():
  n_windows = 8 * B
  tokens = np.arange(n_windows * T + 1)
  seen = []
  for shard in range(2):
    batches = take(lm_pipeline.lm_dataset(tokens, T, B, seed=1, num_epochs=1, shard_index=shard,
                                          shard_count=2), 4)
    seen.append({s for b in batches for s in window_starts(b)})
  assert seen[0].isdisjoint(seen[1])
  assert seen[0] | seen[1] == set(range(0, n_windows * T, T))
  with pytest.raises(ValueError, match="shard_index"):
    lm_pipeline.lm_dataset(tokens, T, B, seed=0, shard_index=2, shard_count=2)


def test_processes_split_the_single_process_batches():
  """Process i of n gets rows [i*B, (i+1)*B) of the global batch a single process would see, so a
  multi-host run trains on exactly the same data."""
  tokens = np.arange(8 * B * T + 1)
  whole = take(lm_pipeline.lm_dataset(tokens, T, 2 * B, seed=3), 3)
  parts = [take(lm_pipeline.lm_dataset(tokens, T, B, seed=3, shard_index=i, shard_count=2), 3) for i in range(2)]
  for b, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(batch[key], np.concatenate([parts[0][b][key], parts[1][b][key]]))


def test_too_few_tokens_is_an_error():
  with pytest.raises(ValueError, match="too few for batch_size=4"):
    lm_pipeline.lm_dataset(np.arange(3 * T + 1), T, B, seed=0)


@pytest.mark.parametrize("n_tokens", [2, T + 1, 5 * T * B + 1, 5 * T * B + 7])
def test_eval_batches_count_every_token_once(n_tokens):
  tokens = np.arange(100, 100 + n_tokens)
  batches = lm_pipeline.eval_batches(tokens, T, B, pad_id=0)
  assert all(b[k].shape == (B, T) for b in batches for k in b)
  masked_targets = np.concatenate([b["targets"][b["loss_mask"] == 1] for b in batches])
  np.testing.assert_array_equal(masked_targets, tokens[1:])  # in order, each exactly once
  for b in batches:
    np.testing.assert_array_equal(b["inputs"][b["loss_mask"] == 1] + 1,
                                  b["targets"][b["loss_mask"] == 1])
  assert len(batches) == math.ceil(math.ceil((n_tokens - 1) / T) / B)  # no all-padding batch


# --- the whole path from a corpus to token streams ----------------------------------------


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
  """A jsonl corpus of 300 synthetic documents, each starting with its own marker word."""
  path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
  texts = data_fixtures.synthetic_texts(300, seed=2, words_per_doc=60)
  docs = [corpora.Document(f"doc{i:04d}", f"doc{i:04d} {t}") for i, t in enumerate(texts)]
  corpora.write_jsonl(path, docs)
  return path, docs


@pytest.fixture(scope="module")
def tokenizer(small_corpus, tmp_path_factory):
  _, docs = small_corpus
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  return SentencePieceTokenizer.train([d.text for d in docs], 400, path, num_threads=2)


def test_prepare_lm_tokens_splits_by_document_and_caches(small_corpus, tokenizer, tmp_path,
                                                         monkeypatch):
  path, docs = small_corpus
  tokens = lm_pipeline.prepare_lm_tokens(f"file:{path}", tokenizer, val_fraction=0.1, cache=tmp_path)
  assert tokens.train_N.dtype == tokens.validation_M.dtype == np.int32

  def documents(stream):
    pieces = np.split(stream, np.flatnonzero(stream == tokenizer.eos_id) + 1)
    assert pieces[-1].size == 0  # the stream ends with EOS
    return [tokenizer.decode(p[:-1]) for p in pieces[:-1]]

  train_texts, val_texts = documents(tokens.train_N), documents(tokens.validation_M)
  expected_train, expected_val = corpora.split_documents(docs, 0.1)
  assert train_texts == [d.text for d in expected_train]
  assert val_texts == [d.text for d in expected_val]
  assert 10 < len(val_texts) < 60
  # No held-out document (identified by its marker word) appears anywhere in training.
  train_stream_text = tokenizer.decode(tokens.train_N)
  assert not any(text.split()[0] in train_stream_text for text in val_texts)
  meta = json.loads((tokens.path / "meta.json").read_text())
  assert meta["n_tokens"] == {"train": tokens.train_N.size, "validation": tokens.validation_M.size}

  # A rerun reads the cache: no tokenization, same files, same arrays.
  mtime = (tokens.path / "train.npy").stat().st_mtime_ns
  monkeypatch.setattr(lm_pipeline, "tokenize_documents", lambda *a, **k: pytest.fail("retokenized"))
  again = lm_pipeline.prepare_lm_tokens(f"file:{path}", tokenizer, val_fraction=0.1, cache=tmp_path)
  assert again.path == tokens.path
  assert (again.path / "train.npy").stat().st_mtime_ns == mtime
  np.testing.assert_array_equal(again.train_N, tokens.train_N)
  # Another split is another cache entry.
  monkeypatch.undo()
  other = lm_pipeline.prepare_lm_tokens(f"file:{path}", tokenizer, val_fraction=0.2, cache=tmp_path)
  assert other.path != tokens.path
  assert other.validation_M.size > tokens.validation_M.size


def test_interrupted_tokenization_leaves_no_cache(small_corpus, tokenizer, tmp_path, monkeypatch):
  path, _ = small_corpus
  calls = []

  def fail_on_validation(texts, tok, num_threads=0):
    calls.append(len(texts))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return tok.encode_batch(texts)

  monkeypatch.setattr(lm_pipeline, "tokenize_documents", fail_on_validation)
  with pytest.raises(KeyboardInterrupt):
    lm_pipeline.prepare_lm_tokens(f"file:{path}", tokenizer, cache=tmp_path)
  assert list((tmp_path / "lm_tokens").iterdir()) == []
  monkeypatch.undo()
  tokens = lm_pipeline.prepare_lm_tokens(f"file:{path}", tokenizer, cache=tmp_path)
  assert tokens.validation_M.size > 0


def test_tokenized_corpus_feeds_the_dataset(small_corpus, tokenizer, tmp_path):
  path, _ = small_corpus
  tokens = lm_pipeline.prepare_lm_tokens(f"file:{path}", tokenizer, cache=tmp_path)
  batch = take(lm_pipeline.lm_dataset(tokens.train_N, 32, 8, seed=0), 1)[0]
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert (batch["inputs"] == tokenizer.eos_id).any()  # 256 tokens span several documents
  assert 0 <= batch["inputs"].min() and batch["inputs"].max() < tokenizer.vocab_size
  eval_ = lm_pipeline.eval_batches(tokens.validation_M, 32, 8)
  assert sum(int(b["loss_mask"].sum()) for b in eval_) == tokens.validation_M.size - 1


@pytest.mark.network
def test_registered_corpora_are_read_through_tfds(cache_dir, monkeypatch):
  from rlhf_jax.data import corpora, tfds_corpus
  calls = []
  real = tfds_corpus.data_source
  monkeypatch.setattr(tfds_corpus, "data_source", lambda *a, **k: calls.append(a[:2]) or real(*a, **k))
  train, val = lm_pipeline.split_corpus("austen", 0.05)
  assert calls == [("austen", "train"), ("austen", "validation")]
  assert {d.id for d in train}.isdisjoint({d.id for d in val}) and val
  assert sorted(d.id for d in train + val) == sorted(d.id for d in corpora.load_documents("austen"))
