"""Tests for rlhf_jax.tokenizers: training, special ids, exact round trips, byte fallback."""

from __future__ import annotations

import pytest

import data_fixtures
from rlhf_jax.tokenizers import SentencePieceTokenizer, Tokenizer

VOCAB = 600


@pytest.fixture(scope="module")
def texts():
  # ~250 KB of English-looking text; a few odd characters so the byte pieces see some use.
  return data_fixtures.synthetic_texts(400, seed=1, words_per_doc=100) + [
      "Line one.\nLine two,\tindented.", "Prices: 12 dollars, 345 cents."]


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  return SentencePieceTokenizer.train(texts, VOCAB, path, num_threads=2)


def test_special_ids_and_vocab_size(tokenizer):
  assert isinstance(tokenizer, Tokenizer)
  assert tokenizer.vocab_size == VOCAB
  assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
  assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
  assert tokenizer.pad_id != tokenizer.eos_id


@pytest.mark.parametrize("text", [
    "The house by the river was very long.",
    "  two leading spaces,  double  spaces and a trailing one ",
    "Line one.\n\nLine three\twith a tab.",
    # NFKC would fold the full-width letter and the ligature.
    "caf\u00e9 na\u00efve \u2014 full-width \uff21 and the \ufb01 ligature",
])
def test_round_trip_is_exact(tokenizer, text):
  ids = tokenizer.encode(text)
  assert all(0 <= i < VOCAB for i in ids)
  assert tokenizer.unk_id not in ids
  assert tokenizer.decode(ids) == text


def test_unseen_characters_fall_back_to_bytes(tokenizer):
  text = "\u4f60\u597d \U0001f600"  # Chinese and an emoji, never seen in training
  ids = tokenizer.encode(text)
  pieces = [tokenizer.id_to_piece(i) for i in ids]
  assert sum(p.startswith("<0x") for p in pieces) == 3 + 3 + 4  # UTF-8 bytes of each character
  assert tokenizer.unk_id not in ids
  assert tokenizer.decode(ids) == text


def test_learned_merges_compress_common_words(tokenizer):
  ids = tokenizer.encode("the house by the river")
  assert len(ids) <= 6  # whole-word pieces, not characters
  assert tokenizer.id_to_piece(tokenizer.encode(" river")[0]) == "\u2581river"


def test_decoding_a_continuation_keeps_its_space(tokenizer):
  prompt, continuation = tokenizer.encode("The garden"), tokenizer.encode(" was long.")
  assert tokenizer.decode(continuation) == " was long."
  assert tokenizer.decode(prompt + continuation) == "The garden was long."


def test_encode_batch_matches_encode(tokenizer, texts):
  batch = tokenizer.encode_batch(texts[:50], num_threads=2)
  assert batch == [tokenizer.encode(t) for t in texts[:50]]


def test_training_is_deterministic_and_model_loads(tokenizer, texts, tmp_path):
  again = SentencePieceTokenizer.train(texts, VOCAB, tmp_path / "again.model", num_threads=2)
  assert again.fingerprint == tokenizer.fingerprint
  tokenizer.save(tmp_path / "saved.model")
  loaded = SentencePieceTokenizer.load(tmp_path / "saved.model")
  assert loaded.fingerprint == tokenizer.fingerprint
  assert loaded.encode(texts[0]) == tokenizer.encode(texts[0])
  smaller = SentencePieceTokenizer.train(texts, VOCAB - 100, tmp_path / "small.model")
  assert smaller.vocab_size == VOCAB - 100
  assert smaller.fingerprint != tokenizer.fingerprint


def test_load_missing_file_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    SentencePieceTokenizer.load(tmp_path / "nope.model")
