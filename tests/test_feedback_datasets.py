"""Existing human labels in and out of the feedback store, in TRL's formats (`feedback import` /
`feedback export --trl`): import then export gives the file back, plain or conversational."""

import json

import pytest

from rlhf_jax import cli
from rlhf_jax.data import records
from rlhf_jax.feedback.store import FeedbackError, FeedbackStore

PREFERENCES = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
               {"prompt": "The sky is", "chosen": " clear.", "rejected": " green."},
               {"prompt": "Cats", "chosen": " nap.", "rejected": " bark."}]
RATINGS = [{"prompt": "The sky is", "completion": " blue.", "rating": 5},
           {"prompt": "Cats", "completion": " bark.", "rating": 1}]
CHAT = [{"prompt": [{"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "assistant", "content": "Green."}]}]


@pytest.mark.parametrize("rows,kind,suffix", [(PREFERENCES, "preferences", ".jsonl"), (RATINGS, "ratings", ".csv"),
                                              (CHAT, "preferences", ".parquet")])
def test_import_then_export_is_the_input(rows, kind, suffix, tmp_path, capsys):
  data, out, db = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}", tmp_path / "feedback.db"
  records.write(rows, data)
  assert cli.main(["feedback", "import", str(data), "--store", str(db), "--labeler", "team-a"]) == 0
  assert f"{len(rows)} " in capsys.readouterr().out
  assert cli.main(["feedback", "import", str(data), "--store", str(db), "--labeler", "team-a"]) == 0
  assert f"0 {'preference' if kind == 'preferences' else 'rating'} judgements" in capsys.readouterr().out  # again: nothing
  assert cli.main(["feedback", "export", kind, "--store", str(db), "--out", str(out), "--trl"]) == 0
  assert records.load(out).rows == records.load(data).rows
  with FeedbackStore(db) as store:  # attributed to the labeler named, like any judgement
    judged = store.export_preferences() if kind == "preferences" else store.export_ratings()
    assert {r["labeler"] for r in judged} == {"team-a"}


def test_exports_turn_plain_text_into_conversations_and_back(tmp_path):
  with FeedbackStore(tmp_path / "f.db", create=True) as store:
    store.import_dataset(records.Dataset("preference", False, PREFERENCES, "mem"), labeler="x")
    store.import_dataset(records.Dataset("preference", True, CHAT, "chat"), labeler="x")
    chat = store.export_dataset("preference", conversational=True)
    assert chat[0] == {"prompt": [{"role": "user", "content": "The sky is"}],
                       "chosen": [{"role": "assistant", "content": " blue."}],
                       "rejected": [{"role": "assistant", "content": " green."}]}
    assert chat[-1] == CHAT[0]
    assert store.export_dataset("preference")[:3] == PREFERENCES
    assert json.loads(store.export_dataset("preference", conversational=False)[-1]["prompt"]) == CHAT[0]["prompt"]


def test_judgement_files_need_a_labeler_and_ratings_on_the_scale(tmp_path, capsys):
  data, db = tmp_path / "r.jsonl", tmp_path / "f.db"
  records.write(RATINGS, data)
  assert cli.main(["feedback", "import", str(data), "--store", str(db)]) == 2
  assert "name who made them with --labeler" in capsys.readouterr().err
  assert cli.main(["feedback", "import", str(data), "--store", str(db), "--labeler", "a", "--scale", "4"]) == 2
  assert "row 0: field 'rating': expected an integer in 1..4" in capsys.readouterr().err
  with FeedbackStore(db) as store:
    assert store.export_ratings() == []  # a bad file stores nothing
    with pytest.raises(FeedbackError, match="takes preference or rating rows"):
      store.import_dataset(records.Dataset("prompt", False, [{"prompt": "x"}], "p"), labeler="a")
