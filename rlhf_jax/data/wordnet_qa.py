"""Questions with checkable answers, from WordNet's relations (Debian `wordnet-base`), offline.

Version `wordnet-qa-v1` has two kinds of question, each about one word and each with every right
answer WordNet knows (a word in several synsets gathers the answers of all of them):

- kind "hypernym": "What kind of thing is a dog?" for each noun lemma, answered by any lemma of a
  hypernym (or instance hypernym) of its synsets: canine, domestic animal, ...;
- kind "synonym": "What is another word for quick?" for each lemma of a noun, verb, adjective or
  adverb synset with other lemmas, answered by any of them.

Lemmas are lower-case words without digits (proper names and codes left out), questions ordered by
a stable hash of their text (so the first N are a fair sample: `data.max_rows=N`), and a question is held out when a stable hash of its text falls under
`test_fraction` (`corpora.is_validation`), so the split does not depend on which other questions
exist. `rows(split)` gives prompt-completion rows in TRL's format (`data.records`): the prompt is
`PROMPT` around the question, the completion one right answer (the first, in WordNet's order) and
`answers` every one; `is_correct(response, answers)` checks an answer. The questions are prepared
once into the cache (`<cache>/wordnet_qa/v1/questions.jsonl`), next to the corpora.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from rlhf_jax import files
from rlhf_jax.data import corpora

VERSION = "wordnet-qa-v1"
PROMPT = "Question: {question}\nAnswer:"
TEST_FRACTION = 0.1
_POS_LETTER = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
_WORD = re.compile(r"[a-z][a-z' -]*[a-z]")


def _usable(word: str) -> bool:
  return bool(_WORD.fullmatch(word))


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def build(synsets: Iterable[corpora.Synset]) -> list[dict]:
  """Questions `{"id", "kind", "word", "question", "answers"}` of `synsets` (module docstring)."""
  synsets = list(synsets)
  by_offset = {(_POS_LETTER[s.pos], s.offset): s for s in synsets}
  hypernyms: dict[str, list[str]] = {}
  synonyms: dict[str, list[str]] = {}
  for s in synsets:
    words = [w for w in s.words if _usable(w)]
    if s.pos == "noun":
      parents = [by_offset.get((pos, offset)) for symbol, offset, pos in s.pointers if symbol in ("@", "@i")]
      answers = [w for parent in parents if parent is not None for w in parent.words if _usable(w)]
      for word in words:
        hypernyms.setdefault(word, []).extend(a for a in answers if a != word)
    for word in words:
      synonyms.setdefault(word, []).extend(w for w in words if w != word)
  questions = []
  for kind, table, template in (("hypernym", hypernyms, "What kind of thing is {article} {word}?"),
                                ("synonym", synonyms, "What is another word for {word}?")):
    for word, answers in table.items():
      answers = list(dict.fromkeys(answers))  # distinct, in WordNet's order
      if answers:
        questions.append({"id": f"{VERSION}/{kind}/{word}", "kind": kind, "word": word,
                          "question": template.format(article=_article(word), word=word), "answers": answers})
  # In the order of a stable hash of the text: any first N questions are a sample of all kinds and words.
  return sorted(questions, key=lambda q: (corpora.hash_fraction(q["question"]), q["question"]))


def prepare(*, cache: Path | None = None) -> Path:
  """Fetches WordNet once and writes the questions; returns their file."""
  final = (cache or files.cache_dir()) / "wordnet_qa" / "v1"
  path = final / "questions.jsonl"
  if path.exists():
    return path
  with files.atomic_directory(final) as building:
    raw = building / "raw"
    raw.mkdir()
    source = corpora.apt_download(["wordnet-base"], "the QA task needs WordNet")(raw)
    questions = build(corpora.read_synsets(raw))
    (building / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (building / "meta.json").write_text(json.dumps({"version": VERSION, "source": source,
                                                    "questions": len(questions)}, indent=2) + "\n")
    shutil.rmtree(raw)
  return path


def load(*, cache: Path | None = None) -> list[dict]:
  """Every question (read once per process: a QA experiment's stages, its gold judge and its
  evaluation each ask for them, and parsing the file takes about a second). Do not modify them."""
  path = prepare(cache=cache)
  return list(_read(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=2)
def _read(path: str, mtime_ns: int) -> tuple[dict, ...]:
  return tuple(json.loads(line) for line in Path(path).read_text().splitlines())


def split(questions: Sequence[dict], test_fraction: float = TEST_FRACTION) -> tuple[list[dict], list[dict]]:
  test = [corpora.is_validation(q["question"], test_fraction) for q in questions]
  return [q for q, t in zip(questions, test) if not t], [q for q, t in zip(questions, test) if t]


def rows(split_name: str = "train", *, cache: Path | None = None, kinds: Sequence[str] = ("hypernym", "synonym"),
         test_fraction: float = TEST_FRACTION) -> list[dict]:
  """Prompt-completion rows of one split ("train" or "test"), with every right answer in `answers`."""
  if split_name not in ("train", "test"):
    raise ValueError(f"{VERSION}: split must be 'train' or 'test', got {split_name!r}")
  train, test = split([q for q in load(cache=cache) if q["kind"] in kinds], test_fraction)
  return [{"prompt": PROMPT.format(question=q["question"]), "completion": f" {q['answers'][0]}.",
           "answers": q["answers"], "kind": q["kind"]} for q in (train if split_name == "train" else test)]


def normalize(text: str) -> str:
  return " ".join(re.sub(r"[^a-z' -]", " ", text.lower()).split())


def is_correct(response: str, answers: Sequence[str]) -> bool:
  """Whether the response's first line, up to its first period, comma or semicolon, is one of
  `answers` (case, articles and punctuation aside): "A canine." answers "What kind of thing is a dog?"."""
  first = re.split(r"[\n.,;]", response.strip(), maxsplit=1)[0]
  words = normalize(first).split()
  while words and words[0] in ("a", "an", "the"):
    words = words[1:]
  return " ".join(words) in {normalize(a) for a in answers}
