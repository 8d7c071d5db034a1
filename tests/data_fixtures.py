"""Offline stand-ins for the data tests: fake Brown files, synthetic documents, fake corpora."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf_jax.data import corpora

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more who can said what its into them then other time some could these two may first only "
    "new people very about over after any good many well way where much through before long down "
    "house river garden letter morning evening sister father mother friend window road city "
    "winter summer music paper doctor engine forest island market village answer question"
).split()

# Two Brown-format files: `word/TAG` tokens, one sentence a line, paragraphs split by blank lines.
FAKE_BROWN = {
    "ca01": (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.\n"
        "It/pps did/dod n't/* matter/vb ,/, he/pps said/vbd ;/. ;/.\n\n\n"
        "\tMr./np Allen/np Jr./np ./.\n"
    ),
    "ck01": (
        "\n\n\t(/( Scotty/np 's/$ dog/nn )/) barked/vbd !/.\n\n\n"
        "\tWe/ppss want/vb '/' pro/jj '/' letters/nns ,/, 1/2/cd of/in them/ppo ?/.\n"
    ),
}
FAKE_CATS = "ca01 news\nck01 fiction\n"


def write_fake_brown(root: Path) -> str:
  package = root / "package"
  package.mkdir(parents=True)
  for name, text in FAKE_BROWN.items():
    (package / name).write_text(text)
  (package / "cats.txt").write_text(FAKE_CATS)
  (package / "README").write_text("not a corpus file\n")
  return "fake-brown@0.0.0"


def fake_brown_corpus(name: str = "fakebrown") -> corpora.Corpus:
  return corpora.Corpus(name, "two fake Brown files", write_fake_brown, corpora.read_brown)


def synthetic_texts(n_docs: int, seed: int = 0, words_per_doc: int = 120) -> list[str]:
  """English-looking documents of random common words, sentences ending in full stops."""
  rng = np.random.default_rng(seed)
  texts = []
  for _ in range(n_docs):
    words = rng.choice(WORDS, size=words_per_doc)
    sentences = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
    texts.append(" ".join(sentences))
  return texts


def synthetic_corpus(name: str, n_docs: int, seed: int = 0) -> corpora.Corpus:
  """A registered-style corpus with `n_docs` synthetic documents whose ids carry their index."""

  def fetch(root: Path) -> str:
    return "synthetic"

  def read(root: Path):
    for i, text in enumerate(synthetic_texts(n_docs, seed)):
      yield corpora.Document(f"{name}/{i:04d}", f"doc{i:04d} {text}")

  return corpora.Corpus(name, "synthetic documents", fetch, read)
