"""Tests for rlhf_jax.data.fine_foods: cleaning, pairing, and the real Debian data.

Tests marked `network` download r-cran-modeldata (4 MB, ~2 s) once per session into the
`cache_dir` fixture's temp cache: they are the only proof that the source still works.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax.data import fine_foods
from rlhf_jax.data.fine_foods import Review

# --- cleaning and the R database ------------------------------------------------------------


def test_clean_review():
  raw = ('<span class="tiny"> Length:: 0:36 Mins<br /><br /></span>My dog loves '
         '<a href="http://www.amazon.com/gp/B000">Jerky &amp; Co</a>!  Really.  <br /><br />'
         'Caf&eacute; &quot;crema&quot; &lt;g&gt;<br />  ')
  assert fine_foods.clean_review(raw) == (
      'My dog loves Jerky & Co!  Really.\n\nCafé "crema" <g>')
  assert fine_foods.clean_review("plain text") == "plain text"
  assert fine_foods.clean_review("one<p>two") == "one\ntwo"


@pytest.mark.parametrize("compressed, method, pack", [
    (1, b"", zlib.compress),
    (3, b"1", zlib.compress),
    (3, b"2", bz2.compress),
    (3, b"Z", lambda b: lzma.compress(b, format=lzma.FORMAT_RAW,
                                      filters=[{"id": lzma.FILTER_LZMA2, "preset": 6}])),
    (2, b"0", lambda b: b),
])
def test_decompress_entry(compressed, method, pack):
  payload = b"serialized R object " * 50
  entry = len(payload).to_bytes(4, "big") + method + pack(payload)
  assert fine_foods._decompress_entry(entry, compressed, "x.rdb[obj]") == payload


def test_decompress_entry_errors():
  payload = b"abc"
  with pytest.raises(RuntimeError, match=r"x.rdb\[obj\]: unknown compression method b'Q'"):
    fine_foods._decompress_entry(b"\0\0\0\3Qabc", 3, "x.rdb[obj]")
  with pytest.raises(RuntimeError, match="compression type 7"):
    fine_foods._decompress_entry(b"\0\0\0\3" + payload, 7, "x.rdb[obj]")
  with pytest.raises(RuntimeError, match="decompressed 3 bytes, the entry says 4"):
    fine_foods._decompress_entry(b"\0\0\0\4" + b"0" + payload, 3, "x.rdb[obj]")


# --- pairing (on hand-made reviews) -----------------------------------------------------------

_FAKE = [Review("P1", f"p1 great {i}", True) for i in range(3)] + [
    Review("P1", f"p1 other {i}", False) for i in range(2)] + [
    Review("P2", "p2 great", True), Review("P2", "p2 other 0", False),
    Review("P2", "p2 other 1", False), Review("P3", "p3 great", True)]


def test_pair_reviews_same_product():
  pairs = fine_foods.pair_reviews(_FAKE, seed=0, same_product=True)
  assert len(pairs) == 2 + 1  # min(3, 2) for P1, min(1, 2) for P2, none for P3
  for p in pairs:
    assert p["product"] == p["chosen_product"] == p["rejected_product"]
    assert p["chosen"].startswith(p["product"].lower() + " great")
    assert p["rejected"].startswith(p["product"].lower() + " other")
    assert p["prompt"] == "" and p["labeler"] == "amazon-human"
  texts = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
  assert len(set(texts)) == len(texts)  # disjoint
  capped = fine_foods.pair_reviews(_FAKE, seed=0, same_product=True, max_pairs_per_product=1)
  assert sorted(p["product"] for p in capped) == ["P1", "P2"]


def test_pair_reviews_cross_product_and_seed():
  pairs = fine_foods.pair_reviews(_FAKE, seed=0)
  assert len(pairs) == 4  # min(5 great, 4 other)
  assert all(p["product"] is None and "great" in p["chosen"] and "other" in p["rejected"]
             for p in pairs)
  assert fine_foods.pair_reviews(_FAKE, seed=0) == pairs
  seeds = {json.dumps(fine_foods.pair_reviews(_FAKE, seed=s)) for s in range(10)}
  assert len(seeds) > 1
  assert len(fine_foods.pair_reviews(_FAKE, seed=0, max_pairs=2)) == 2


def test_pair_reviews_errors():
  one_each = [Review("A", "a", True), Review("B", "b", False)]
  with pytest.raises(ValueError, match="same_product=True: no product has both.*same_product=False"):
    fine_foods.pair_reviews(one_each, seed=0, same_product=True)
  with pytest.raises(ValueError, match="max_pairs_per_product: only applies"):
    fine_foods.pair_reviews(one_each, seed=0, max_pairs_per_product=3)
  with pytest.raises(ValueError, match="^max_pairs: expected an integer >= 1"):
    fine_foods.pair_reviews(one_each, seed=0, max_pairs=0)
  with pytest.raises(ValueError, match="^split: expected one of train, test"):
    fine_foods.load("validation")


# --- the real data --------------------------------------------------------------------------


@pytest.mark.network
def test_prepare_counts_and_idempotent(cache_dir):
  path = fine_foods.prepare()
  assert path == Path(cache_dir) / "fine_foods" / "v1"
  assert sorted(p.name for p in path.iterdir()) == ["meta.json", "test.jsonl", "train.jsonl"]
  meta = json.loads((path / "meta.json").read_text())
  assert meta["source"].startswith("r-cran-modeldata=")
  assert meta["splits"]["train"] == {"object": "training_data", "n_reviews": 4000,
                                     "n_great": 2600, "n_products": 4000}
  assert meta["splits"]["test"] == {"object": "testing_data", "n_reviews": 1000,
                                    "n_great": 658, "n_products": 1000}
  mtime = os.stat(path / "train.jsonl").st_mtime_ns
  assert fine_foods.prepare() == path  # second call: nothing is fetched or rewritten
  assert os.stat(path / "train.jsonl").st_mtime_ns == mtime
  assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.network
def test_load_reviews(cache_dir):
  train, test = fine_foods.load("train"), fine_foods.load("test")
  assert (len(train), sum(r.great for r in train)) == (4000, 2600)
  assert (len(test), sum(r.great for r in test)) == (1000, 658)
  # Every review is of its own product (DATA.md's "10 train products" is not what ships).
  assert len({r.product for r in train}) == 4000 and len({r.product for r in test}) == 1000
  assert not {r.product for r in train} & {r.product for r in test}
  assert train[0] == Review("B000J0LSBG",
                            "this stuff is  not stuffing  its  not good at all  save your money",
                            False)
  assert all(r.text and "<br" not in r.text and "&quot;" not in r.text for r in train + test)
  assert 250 < np.median([len(r.text) for r in train]) < 300


@pytest.mark.network
def test_ratings_records(cache_dir):
  records = fine_foods.ratings("test")
  assert len(records) == 1000
  assert set(records[0]) == {"prompt", "response", "rating", "scale", "labeler"}
  assert sum(r["rating"] == 2 for r in records) == 658
  assert {r["rating"] for r in records} == {1, 2}
  assert all(r["scale"] == 2 and r["labeler"] == "amazon-human" and r["prompt"] == ""
             for r in records)


@pytest.mark.network
def test_preference_pairs(cache_dir):
  great = {r.text for r in fine_foods.load("train") if r.great}
  pairs = fine_foods.preference_pairs("train", seed=0)
  assert len(pairs) == 1400  # min(2600 great, 1400 other)
  assert all(p["chosen"] in great and p["rejected"] not in great for p in pairs)
  assert all(p["chosen_product"] != p["rejected_product"] for p in pairs)
  assert pairs == fine_foods.preference_pairs("train", seed=0)
  assert pairs != fine_foods.preference_pairs("train", seed=1)
  assert len(fine_foods.preference_pairs("test", seed=0)) == 342
  assert len(fine_foods.preference_pairs("test", seed=0, max_pairs=10)) == 10
  with pytest.raises(ValueError, match="no product has both a great and an other review"):
    fine_foods.preference_pairs("train", seed=0, same_product=True)
