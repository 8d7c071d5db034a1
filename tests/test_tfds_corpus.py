"""Tests for rlhf_jax.data.tfds_corpus and the `tfds:` spec: offline, without TensorFlow."""

from __future__ import annotations

import sys

import pytest
import tensorflow_datasets as tfds

import data_fixtures
from rlhf_jax.data import corpora, tfds_corpus


@pytest.fixture
def synth(monkeypatch, tmp_path):
  """A registered corpus of 200 synthetic documents, cached in a temp dir."""
  monkeypatch.setenv("RLHF_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setitem(corpora.CORPORA, "synth", data_fixtures.synthetic_corpus("synth", 200))
  return "synth"


def test_builder_splits_by_document_and_reads_without_tensorflow(synth, tmp_path):
  data_dir = tmp_path / "tfds"
  train = tfds_corpus.data_source(synth, "train", data_dir)
  val = tfds_corpus.data_source(synth, "validation", data_dir)
  docs = corpora.load_documents(synth)
  expected_train, expected_val = corpora.split_documents(docs, tfds_corpus.DEFAULT_VAL_FRACTION)

  train_records, val_records = list(train), list(val)
  assert all(isinstance(r["id"], str) and isinstance(r["text"], str) for r in train_records)
  train_ids, val_ids = {r["id"] for r in train_records}, {r["id"] for r in val_records}
  assert train_ids.isdisjoint(val_ids)
  assert train_ids == {d.id for d in expected_train}
  assert val_ids == {d.id for d in expected_val}
  assert len(val_ids) > 0
  by_id = {d.id: d.text for d in docs}
  assert all(r["text"] == by_id[r["id"]] for r in train_records + val_records)
  assert val[len(val) - 1]["id"] in val_ids  # random access
  assert "tensorflow" not in sys.modules
  files = sorted(p.name for p in (data_dir / "rlhf_corpus" / "synth").rglob("*array_record*"))
  assert files == ["rlhf_corpus-train.array_record-00000-of-00001",
                   "rlhf_corpus-validation.array_record-00000-of-00001"]


def test_builder_is_prepared_once(synth, tmp_path):
  tfds_corpus.data_source(synth, "train", tmp_path)
  (record_file,) = (tmp_path / "rlhf_corpus" / "synth").rglob("*train.array_record*")
  mtime = record_file.stat().st_mtime_ns
  assert len(tfds_corpus.data_source(synth, "train", tmp_path)) > 0
  assert record_file.stat().st_mtime_ns == mtime


def test_other_val_fraction_is_another_config(synth, tmp_path):
  small = tfds_corpus.data_source(synth, "validation", tmp_path)
  large = tfds_corpus.data_source(synth, "validation", tmp_path, val_fraction=0.3)
  assert len(large) > len(small)
  assert {r["id"] for r in small} <= {r["id"] for r in large}  # same hash, higher threshold
  assert (tmp_path / "rlhf_corpus" / "synth-val0_3").is_dir()


def test_bad_split_and_unknown_corpus(synth, tmp_path):
  with pytest.raises(ValueError, match="split: expected one of"):
    tfds_corpus.data_source(synth, "test", tmp_path)
  with pytest.raises(ValueError, match="did you mean 'synth'"):
    tfds_corpus.data_source("synht", "train", tmp_path)


def test_registered_configs_match_the_registry():
  assert tfds.builder_cls("rlhf_corpus") is tfds_corpus.RlhfCorpus
  assert set(tfds_corpus.RlhfCorpus.builder_configs) == set(corpora.CORPORA)


# --- the generic tfds:NAME spec, on a catalog-style dataset built here ----------------------


class TinyReviews(tfds.core.GeneratorBasedBuilder):
  """A stand-in for a TFDS catalog dataset: a label, then two text features."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None  # see RlhfCorpus.code_path: avoids TFDS importing importlib_resources

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "label": tfds.features.ClassLabel(num_classes=2),
        "body": tfds.features.Text(),
        "title": tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 6), "validation": self._generate_examples(6, 9)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, {"label": i % 2, "body": f"review body {i} \u00e9", "title": f"title {i}"}


@pytest.fixture
def tiny_reviews(tmp_path):
  TinyReviews(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  return tmp_path


def test_tfds_spec_reads_the_first_text_feature(tiny_reviews):
  docs = corpora.load_documents("tfds:tiny_reviews:validation", tfds_data_dir=tiny_reviews)
  assert sorted(d.text for d in docs) == [f"review body {i} \u00e9" for i in (6, 7, 8)]
  assert sorted(d.id for d in docs) == [f"tiny_reviews/validation/{i}" for i in range(3)]
  train = corpora.load_documents("tfds:tiny_reviews", tfds_data_dir=tiny_reviews)
  assert len(train) == 6


def test_tfds_spec_with_field_and_bad_field(tiny_reviews):
  docs = corpora.load_documents("tfds:tiny_reviews:train#title", tfds_data_dir=tiny_reviews)
  assert sorted(d.text for d in docs) == [f"title {i}" for i in range(6)]
  with pytest.raises(ValueError, match="no feature 'text'"):
    corpora.load_documents("tfds:tiny_reviews#text", tfds_data_dir=tiny_reviews)


def test_a_tfds_dataset_is_a_dataset_of_rows_too(tiny_reviews):
  from rlhf_jax.data import records
  spec = dict(fields=("prompt=title", "completion=body"), tfds_data_dir=tiny_reviews)
  unpaired = records.load("tfds:tiny_reviews:validation", **spec)  # a 0/1 label: KTO's unpaired preferences
  assert unpaired.kind == "unpaired_preference"
  assert sorted((r["prompt"], r["completion"], r["label"]) for r in unpaired.rows) == [
      (f"title {i}", f"review body {i} \u00e9", bool(i % 2)) for i in (6, 7, 8)]
  demos = records.load("tfds:tiny_reviews:validation", kind="prompt_completion", **spec)
  assert demos.kind == "prompt_completion" and len(demos) == 3
