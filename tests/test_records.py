"""Datasets in TRL's formats (`data.records`): every kind, plain and conversational, in JSONL,
Parquet and CSV; round trips, inference, renames, checks that name the row and field, and the
chat-template rendering of conversations."""

from pathlib import Path

import pytest

from rlhf_jax.data import records
from rlhf_jax.errors import UserError
from rlhf_jax.tokenizers import HFTokenizer

QWEN2 = Path(__file__).parent / "data" / "tiny_hf" / "qwen2"


def user(text):
  return [{"role": "user", "content": text}]


def assistant(text):
  return [{"role": "assistant", "content": text}]


PLAIN = {
    "language_modeling": [{"text": "The sky is blue."}, {"text": "Cats sleep a lot."}],
    "prompt": [{"prompt": "The sky is"}, {"prompt": "Cats"}],
    "prompt_completion": [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "Cats", "completion": " nap."}],
    "preference": [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
                   {"prompt": "Cats", "chosen": " nap.", "rejected": " bark."}],
    "unpaired_preference": [{"prompt": "The sky is", "completion": " blue.", "label": True},
                            {"prompt": "Cats", "completion": " bark.", "label": False}],
    "rating": [{"prompt": "The sky is", "completion": " blue.", "rating": 5.0},
               {"prompt": "Cats", "completion": " bark.", "rating": 1.5}],
}
CONVERSATIONAL = {
    "language_modeling": [{"messages": user("Sky?") + assistant("Blue.")}],
    "prompt": [{"prompt": user("Sky?")}],
    "prompt_completion": [{"prompt": user("Sky?"), "completion": assistant("Blue.")}],
    "preference": [{"prompt": user("Sky?"), "chosen": assistant("Blue."), "rejected": assistant("Green.")}],
    "unpaired_preference": [{"prompt": user("Sky?"), "completion": assistant("Blue."), "label": True}],
    "rating": [{"prompt": user("Sky?"), "completion": assistant("Blue."), "rating": 4.0}],
}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
@pytest.mark.parametrize("form", ["plain", "conversational"])
@pytest.mark.parametrize("kind", records.KINDS)
def test_every_kind_round_trips_through_every_file_format_and_is_inferred(kind, form, suffix, tmp_path):
  rows = (PLAIN if form == "plain" else CONVERSATIONAL)[kind]
  path = tmp_path / f"data{suffix}"
  assert records.write(rows, path) == len(rows)
  dataset = records.load(path)
  assert (dataset.kind, dataset.conversational) == (kind, form == "conversational")
  assert dataset.rows == rows
  records.write(dataset.rows, tmp_path / f"again{suffix}")
  assert (tmp_path / f"again{suffix}").read_bytes() == path.read_bytes()


def test_an_implicit_prompt_is_the_common_start_of_both_sides(tmp_path):
  records.write([{"chosen": "The sky is blue.", "rejected": "The sky is green."},
                 {"chosen": user("Sky?") + assistant("Blue."), "rejected": user("Sky?") + assistant("Green.")}][:1],
                tmp_path / "plain.jsonl")
  assert records.load(tmp_path / "plain.jsonl").rows == [
      {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]
  records.write([{"chosen": user("Sky?") + assistant("Blue."), "rejected": user("Sky?") + assistant("Green.")}],
                tmp_path / "chat.jsonl")
  assert records.load(tmp_path / "chat.jsonl").rows == [
      {"prompt": user("Sky?"), "chosen": assistant("Blue."), "rejected": assistant("Green.")}]


def test_columns_are_renamed_and_a_format_can_be_forced(tmp_path):
  records.write([{"question": "Sky?", "answer": "Blue.", "score": "3"}], tmp_path / "qa.csv")
  dataset = records.load(tmp_path / "qa.csv", fields=("prompt=question", "completion=answer", "rating=score"))
  assert dataset.kind == "rating" and dataset.rows == [{"prompt": "Sky?", "completion": "Blue.", "rating": 3.0}]
  forced = records.load(tmp_path / "qa.csv", kind="prompt", fields=("prompt=question",))
  assert forced.kind == "prompt" and forced.rows[0]["prompt"] == "Sky?"


def test_rows_that_do_not_fit_are_errors_naming_the_file_row_and_field(tmp_path):
  path = tmp_path / "bad.jsonl"
  cases = [
      ([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": 3, "rejected": "c"}],
       "row 1: field 'chosen': expected a string"),
      ([{"prompt": "a", "completion": "b", "rating": "high"}], "row 0: field 'rating': expected a number"),
      ([{"prompt": "a", "completion": "b", "label": "maybe"}], "row 0: field 'label': expected true or false"),
      ([{"prompt": user("a"), "completion": [{"role": "assistant"}]}], "row 0: field 'completion': message 0"),
      ([{"prompt": user("a"), "completion": assistant("b")}, {"prompt": "a", "completion": "b"}],
       "row 1: field 'prompt': expected a non-empty list"),
      ([{"question": "a"}], r"columns \['question'\] fit no format"),
  ]
  for rows, message in cases:
    records.write(rows, path)
    with pytest.raises(UserError, match=f"{path}: {message}" if message.startswith("row") else message):
      records.load(path)
  path.write_text('{"prompt": "a"}\nnot json\n')
  with pytest.raises(UserError, match="bad.jsonl: line 2: not JSON"):
    records.load(path)
  with pytest.raises(UserError, match="expected a .jsonl, .json, .parquet, .csv, .txt file"):
    records.load(tmp_path / "data.xml")
  with pytest.raises(ValueError, match="data.fields: expected OURS=THEIRS"):
    records.DataConfig(path="x.jsonl", fields=("prompt",))


def test_conversations_render_through_the_chat_template_as_trl_renders_them():
  tok = HFTokenizer(QWEN2)  # ChatML
  dataset = records.Dataset("preference", True, CONVERSATIONAL["preference"], "mem")
  (row,) = records.as_text(dataset, tok)
  prompt = tok.apply_chat_template(user("Sky?"), add_generation_prompt=True)
  assert row["prompt"] == prompt and prompt.endswith("<|im_start|>assistant\n")
  assert row["chosen"] == "Blue.<|im_end|>\n" and row["rejected"] == "Green.<|im_end|>\n"
  (lm,) = records.as_text(records.Dataset("language_modeling", True, CONVERSATIONAL["language_modeling"], "mem"), tok)
  assert lm == {"text": tok.apply_chat_template(user("Sky?") + assistant("Blue."))}
  plain = records.Dataset("preference", False, PLAIN["preference"], "mem")
  assert records.as_text(plain, tok) == PLAIN["preference"]


def test_held_out_rows_are_chosen_by_prompt_the_same_way_in_any_set():
  rows = [{"prompt": f"p{i % 50}", "completion": str(i)} for i in range(200)]
  train, test = records.split(rows, 0.2)
  assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in test}) and 0 < len(test) < len(rows)
  _, test_half = records.split(rows[:100], 0.2)
  assert {r["prompt"] for r in test_half} <= {r["prompt"] for r in test}


def test_hugging_face_datasets_load_through_the_datasets_library(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  datasets = pytest.importorskip("datasets")
  for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # if datasets was imported before the env was set
    if hasattr(datasets.config, name):
      monkeypatch.setattr(datasets.config, name, True)
  folder = tmp_path / "my_dataset"
  folder.mkdir()
  records.write(PLAIN["preference"], folder / "train.jsonl")
  dataset = records.load(f"hf:{folder}:train")
  assert dataset.kind == "preference" and dataset.rows == PLAIN["preference"]
  with pytest.raises(UserError, match="hf:no-such-org/no-such-dataset: cannot load it .*name the file instead"):
    records.load("hf:no-such-org/no-such-dataset")
