"""The console labeling loop, driven through stdin like a person at a terminal."""

import io
import json
import subprocess
import sys

from rlhf_jax.feedback import terminal
from rlhf_jax.feedback.store import FeedbackStore


def make_store(path):
  with FeedbackStore(path) as store:
    store.add_samples([{"prompt": "Say hi", "response": r, "model": "m"} for r in ("hello", "hey", "<b>yo</b>")])
  return path


def test_pairs_with_undo_then_quit(tmp_path):
  path = make_store(tmp_path / "f.db")
  out = io.StringIO()
  # First pair: "a"; then undo it; judge it again "b"; an invalid key; "t"; then quit.
  n = terminal.run(str(path), "alice", rate_scale=None, stdin=io.StringIO("a\nu\nb\nx\nt\nq\n"), stdout=out)
  assert n == 3
  text = out.getvalue()
  assert "undid comparison" in text and "please answer a, b, t, s, u or q (got 'x')" in text
  assert "<b>yo</b>" in text or "hello" in text
  with FeedbackStore(path) as store:
    live = store.judgements(kind="comparison")
    assert [c.outcome for c in live] == ["b", "tie"] and all(c.labeler == "alice" for c in live)
    assert len(store.judgements(kind="comparison", include_retracted=True)) == 3
    assert store.progress().pairs_queued == 1  # 3 samples -> 3 pairs, 2 judged


def test_ratings_until_the_queue_is_empty(tmp_path):
  path = make_store(tmp_path / "f.db")
  out = io.StringIO()
  n = terminal.run(str(path), "bob", rate_scale=3, stdin=io.StringIO("3\n7\n1\n2\n"), stdout=out)
  assert n == 3 and "no samples left to rate" in out.getvalue()
  with FeedbackStore(path) as store:
    assert sorted(r["rating"] for r in store.export_ratings()) == [1, 2, 3]


def test_cli_import_label_export(tmp_path):
  samples = tmp_path / "s.jsonl"
  samples.write_text("\n".join(json.dumps({"prompt": "Q", "response": r, "model": "m"}) for r in ("x", "y")) + "\n")
  db, out = tmp_path / "f.db", tmp_path / "prefs.jsonl"
  cli = [sys.executable, "-m", "rlhf_jax"]
  subprocess.run(cli + ["feedback", "import", str(samples), "--store", str(db)], check=True)
  labeled = subprocess.run(cli + ["label", "--terminal", "--store", str(db), "--labeler", "carol"],
                           input="a\n", capture_output=True, text=True, check=True)
  assert "1 judgements saved" in labeled.stdout
  subprocess.run(cli + ["feedback", "export", "preferences", "--store", str(db), "--out", str(out)], check=True)
  (record,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert {record["chosen"], record["rejected"]} == {"x", "y"} and record["labeler"] == "carol"
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "Q", "response": ""}\n')
  failed = subprocess.run(cli + ["feedback", "import", str(bad), "--store", str(db)], capture_output=True, text=True)
  assert failed.returncode == 2 and "bad.jsonl:1" in failed.stderr


ESCAPES = {  # model text that, printed raw, would act on the labeler's terminal
    "fine\x1b[2K\x1b[1Agone": "fine<U+001B>[2K<U+001B>[1Agone",  # erase line, cursor up
    "copy \x1b]52;c;cm0gLXJmIH4=\x07 \x1b]0;title\x07": "copy <U+001B>]52;c;cm0gLXJmIH4=<U+0007> "
                                                       "<U+001B>]0;title<U+0007>",  # OSC 52, 0
    "photo\u202egnp.exe a\x7fb\x9bc": "photo<U+202E>gnp.exe a<U+007F>b<U+009B>c",  # RLO, DEL, C1
}


def test_terminal_escapes_and_bidi_are_shown_not_obeyed(tmp_path):
  path, responses = tmp_path / "f.db", [*ESCAPES, "café 日本\n\tnext line"]
  with FeedbackStore(path) as store:
    ids = store.add_samples([{"prompt": "Say \x1b[31mhi\u2066", "response": r, "model": "m"}
                             for r in responses])
  out = io.StringIO()
  assert terminal.run(str(path), "alice", rate_scale=2, stdin=io.StringIO("1\n" * 4), stdout=out) == 4
  text = out.getvalue()
  for raw in ("\x1b", "\x07", "\x7f", "\x9b", "\u202e", "\u2066"):
    assert raw not in text, f"{raw!r} reached the terminal"
  for shown in [*ESCAPES.values(), "Say <U+001B>[31mhi<U+2066>"]:
    assert shown in text
  assert "  café 日本\n          next line\n" in text  # newline kept; the tab expanded, as before
  with FeedbackStore(path) as store:  # judged against the original samples, text untouched
    assert sorted(r.sample_id for r in store.judgements(kind="rating")) == sorted(ids)
    assert [store.sample(i).text for i in ids] == responses


def test_cli_label_gives_each_labeler_a_url_and_the_terminal_one_labeler(tmp_path, monkeypatch, capsys):
  from rlhf_jax import cli
  from rlhf_jax.feedback import server

  path = make_store(tmp_path / "f.db")
  apps = []
  monkeypatch.setattr(server, "_run_uvicorn", lambda app, sock: apps.append(app))
  assert cli.main(["label", "--store", str(path), "--port", "0", "--labeler", "alice", "--labeler", "bob"]) == 0
  out = capsys.readouterr().out
  assert "  alice  http://127.0.0.1:" in out and "  bob    http://127.0.0.1:" in out and len(apps) == 1
  assert cli.main(["label", "--terminal", "--store", str(path), "--labeler", "a", "--labeler", "b"]) == 2
  assert "--terminal labels as one labeler" in capsys.readouterr().err
