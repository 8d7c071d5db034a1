"""The WordNet question-answering data (`data.wordnet_qa`): questions built from relations,
every right answer kept, a stable split, and the answer check."""

from pathlib import Path

import pytest

from rlhf_jax.data import corpora, records, wordnet_qa

LINES = [  # wndb(5) lines: offset lex_filenum ss_type w_cnt (word lex_id)* p_cnt (ptr offset pos src/tgt)* | gloss
    ("noun", "00000001 05 n 02 dog 0 domestic_dog 0 001 @ 00000002 n 0000 | a member of the genus Canis"),
    ("noun", "00000002 05 n 02 canine 0 canid 0 000 | a mammal"),
    ("noun", "00000003 05 n 01 dog 1 001 @ 00000004 n 0000 | a dull unattractive unpleasant girl"),
    ("noun", "00000004 05 n 01 unpleasant_woman 0 000 | a woman"),
    ("noun", "00000005 05 n 02 Paris 0 R2D2 0 001 @i 00000002 n 0000 | names and codes are left out"),
    ("adj", "00000006 00 a 02 quick 0 fast 0 000 | moving quickly"),
]


def test_questions_gather_every_right_answer_of_every_sense():
  synsets = [corpora.parse_wordnet_line(pos, line) for pos, line in LINES]
  by_question = {q["question"]: q["answers"] for q in wordnet_qa.build(synsets)}
  assert by_question["What kind of thing is a dog?"] == ["canine", "canid", "unpleasant woman"]
  assert by_question["What kind of thing is a domestic dog?"] == ["canine", "canid"]
  assert by_question["What is another word for dog?"] == ["domestic dog"]
  assert by_question["What is another word for quick?"] == ["fast"]
  assert not any("Paris" in q or "R2D2" in q for q in by_question)  # proper names and codes
  assert "What kind of thing is a canine?" not in by_question  # no hypernym, no question
  assert list(by_question) == sorted(by_question, key=lambda q: (corpora.hash_fraction(q), q))


def test_the_split_is_stable_and_answers_are_checked_leniently():
  questions = [{"question": f"What is another word for w{i}?"} for i in range(400)]
  train, test = wordnet_qa.split(questions, 0.1)
  assert 10 < len(test) < 80 and len(train) + len(test) == 400
  assert wordnet_qa.split(questions[:200], 0.1)[1] == [q for q in test if q in questions[:200]]
  answers = ["canine", "domestic animal"]
  for response, right in [(" canine.", True), ("A Domestic animal, surely", True), ("the canine\nmore", True),
                          (" a dog.", False), ("canines", False), ("", False)]:
    assert wordnet_qa.is_correct(response, answers) == right, response


@pytest.mark.slow
@pytest.mark.network
def test_wordnet_qa_from_debian(cache_dir):
  rows = wordnet_qa.rows("test", cache=Path(cache_dir))
  train = wordnet_qa.rows("train", cache=Path(cache_dir))
  assert len(train) > 100_000 and len(rows) > 10_000
  assert {r["prompt"] for r in rows}.isdisjoint({r["prompt"] for r in train})
  dog = next(r for r in train + rows if r["prompt"] == wordnet_qa.PROMPT.format(question="What kind of thing is a dog?"))
  assert "canine" in dog["answers"] and wordnet_qa.is_correct(dog["completion"], dog["answers"])
  assert records.builtin("wordnet-qa-v1:test") is not None
