"""Tests for rlhf_jax.feedback.store: round trip, durability under kill -9, concurrent labelers,
undo, refusing files that are not stores, and all-or-nothing imports."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from rlhf_jax.feedback import store as store_lib
from rlhf_jax.feedback.store import FeedbackError, FeedbackStore


class Clock:
  """A settable clock, so lease expiry is tested without sleeping."""

  def __init__(self, now: float = 1_000_000.0):
    self.now = now

  def __call__(self) -> float:
    return self.now

  def advance(self, seconds: float = 1.0) -> None:
    self.now += seconds


def _dump(path) -> list[str]:
  """Every row of the database as SQL: equal dumps mean equal contents."""
  conn = sqlite3.connect(path)
  try:
    return list(conn.iterdump())
  finally:
    conn.close()


def _pair_key(task) -> tuple[int, int]:
  return tuple(sorted((task.a.id, task.b.id)))


@pytest.fixture
def clock():
  return Clock()


@pytest.fixture
def db(tmp_path, clock):
  """A store with two prompts: three samples of the first (3 pairs), two of the second (1 pair)."""
  with FeedbackStore(tmp_path / "feedback.db", clock=clock, lease_seconds=60) as s:
    s.add_samples([
        {"prompt": "Tell me a joke.", "response": "Knock knock.", "model": "run@100"},
        {"prompt": "Tell me a joke.", "response": "Why did the chicken...", "model": "run@200"},
        {"prompt": "Tell me a joke.", "response": "<script>alert(1)</script> é ✓",
         "model": "human", "meta": {"temperature": 0.7}},
        {"prompt": "Say hi.", "response": "Hi!", "model": "run@100"},
        {"prompt": "Say hi.", "response": "Hello there.", "model": "run@200"},
    ], source="test")
    yield s


# --- round trip -----------------------------------------------------------------------------


def test_round_trip_and_exports(db, clock, tmp_path):
  joke = db.add_prompt("Tell me a joke.")  # same text: same prompt
  assert db.prompt(joke).source == "test"
  knock, chicken, script = (db.add_sample(joke, t, model=m) for t, m in [
      ("Knock knock.", "run@100"), ("Why did the chicken...", "run@200"),
      ("<script>alert(1)</script> é ✓", "human")])
  assert db.sample(script).text == "<script>alert(1)</script> é ✓"  # stored as given
  assert db.sample(script).meta == {"temperature": 0.7}
  hi = db.add_prompt("Say hi.")
  hi_a, hi_b = db.add_samples([{"prompt": "Say hi.", "response": r, "model": "run@100"}
                               for r in ("Hi!", "Hey!")])
  assert db.sample(hi_b).prompt_id == hi and db.progress().pairs_queued == 3 + 3

  c1 = db.compare(chicken, knock, "a", labeler="ana")  # chicken (shown as a) wins
  clock.advance()
  c2 = db.compare(knock, script, "b", labeler="vader(beta=5)")  # script wins
  clock.advance()
  db.compare(hi_a, hi_b, "tie", labeler="ana")
  clock.advance()
  db.compare(knock, script, "skip", labeler="ana")
  clock.advance()
  c3 = db.compare(knock, script, "a", labeler="bob")
  clock.advance()
  db.undo_last("bob")  # retracted: not exported
  r1 = db.rate(knock, 4, scale=5, labeler="ana")
  clock.advance()
  r2 = db.rate(script, 1, scale=7, labeler="bob")
  clock.advance()
  db.undo_last("bob")
  clock.advance()
  with pytest.raises(FeedbackError, match=r"value: expected an int in 1\.\.5, got 6"):
    db.rate(knock, 6, scale=5, labeler="cy")
  with pytest.raises(FeedbackError, match="one prompt"):
    db.compare(knock, hi_a, "a", labeler="ana")
  with pytest.raises(FeedbackError, match="already compared"):
    db.compare(knock, chicken, "b", labeler="ana")
  with pytest.raises(FeedbackError, match="outcome"):
    db.compare(knock, chicken, "A", labeler="cy")
  with pytest.raises(FeedbackError, match="empty"):
    db.add_sample(joke, "  \n", model="run@1")

  path = tmp_path / "out" / "prefs.jsonl"
  prefs = db.export_preferences(path)
  assert [(p["chosen"], p["rejected"], p["labeler"], p["comparison_id"]) for p in prefs] == [
      ("Why did the chicken...", "Knock knock.", "ana", c1),
      ("<script>alert(1)</script> é ✓", "Knock knock.", "vader(beta=5)", c2)]
  assert c3 not in [p["comparison_id"] for p in prefs]
  assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == prefs
  assert [(t["response_a"], t["response_b"]) for t in db.export_ties()] == [("Hi!", "Hey!")]
  ratings = db.export_ratings(tmp_path / "ratings.jsonl")
  assert ratings == [{"prompt": "Tell me a joke.", "response": "Knock knock.", "rating": 4,
                      "scale": 5, "labeler": "ana", "model": "run@100", "prompt_id": joke,
                      "sample_id": knock, "rating_id": r1, "created": ratings[0]["created"]}]
  assert r2 not in [r["rating_id"] for r in ratings]
  assert len(db.judgements(labeler="bob", include_retracted=True)) == 2
  assert db.judgements(labeler="bob") == []
  assert [j.id for j in db.judgements(kind="comparison", labeler="ana")] == [c1, c1 + 2, c1 + 3]


def test_reopen_keeps_everything(tmp_path):
  path = tmp_path / "a" / "b" / "store.db"  # parent dirs are created
  with FeedbackStore(path) as s:
    (x, y) = s.add_samples([{"prompt": "p", "response": r, "model": "m"} for r in "xy"])
    s.compare(x, y, "b", labeler="ana")
  with FeedbackStore(path) as s:
    assert [(p["chosen"], p["rejected"]) for p in s.export_preferences()] == [("y", "x")]
    pragma = lambda name: s._conn.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    # WAL for concurrent readers; FULL so a power cut (which kill -9 does not test) loses nothing.
    assert (pragma("journal_mode"), pragma("synchronous"), pragma("foreign_keys")) == ("wal", 2, 1)


# --- durability -----------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    from rlhf_jax.feedback.store import FeedbackStore
    store = FeedbackStore(sys.argv[1])
    sample = int(sys.argv[2])
    i = 0
    while True:
      print(store.rate(sample, 1 + i % 5, scale=5, labeler=f"sim{i}"), flush=True)
      i += 1
""")


def test_acknowledged_writes_survive_kill_9(tmp_path):
  path = tmp_path / "store.db"
  with FeedbackStore(path) as s:
    (sample,) = s.add_samples([{"prompt": "p", "response": "r", "model": "m"}])
  child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(sample)],
                           stdout=subprocess.PIPE, text=True)
  acknowledged = []
  try:
    for line in child.stdout:
      acknowledged.append(int(line))
      if len(acknowledged) == 40:
        break
  finally:
    child.send_signal(signal.SIGKILL)  # mid-stream: it is writing the next one
    child.wait()
  assert child.returncode == -signal.SIGKILL and len(acknowledged) == 40
  conn = sqlite3.connect(path)
  assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
  conn.close()
  with FeedbackStore(path) as s:
    stored = {j.id for j in s.judgements()}
  assert set(acknowledged) <= stored


# --- concurrency ----------------------------------------------------------------------------


def test_concurrent_labelers_never_share_a_pair(tmp_path):
  path = tmp_path / "store.db"
  with FeedbackStore(path) as s:
    s.add_samples([{"prompt": f"prompt {p}", "response": f"response {r}", "model": "m"}
                   for p in range(3) for r in range(3)])  # 3 prompts x 3 pairs
  labelers = ["ana", "bob", "cy", "dee"]
  barrier = threading.Barrier(len(labelers))
  rounds: dict[str, list] = {name: [] for name in labelers}
  errors = []

  def work(name):
    try:
      with FeedbackStore(path) as mine:  # its own connection
        for _ in range(9):
          barrier.wait()
          task = mine.next_pair(name)
          rounds[name].append(None if task is None else _pair_key(task))
          barrier.wait()  # every labeler holds its pair before anyone judges
          if task is not None:
            mine.compare(task.a.id, task.b.id, "a", labeler=name)
    except BaseException as e:  # noqa: BLE001 - reported by the main thread
      errors.append(e)
      barrier.abort()

  threads = [threading.Thread(target=work, args=(name,)) for name in labelers]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  for i in range(9):
    held = [rounds[name][i] for name in labelers if rounds[name][i] is not None]
    assert len(held) == len(set(held)), f"round {i}: two labelers got the same pair: {held}"
  for name in labelers:  # each labeler judges every pair once, never one already judged
    got = [pair for pair in rounds[name] if pair is not None]
    assert len(got) == len(set(got))
  with FeedbackStore(path) as s:
    assert s.progress().comparisons == sum(
        pair is not None for name in labelers for pair in rounds[name])


def test_leases_expire_and_labelers_never_get_a_judged_pair(tmp_path, clock):
  path = tmp_path / "store.db"
  ana = FeedbackStore(path, clock=clock, lease_seconds=60)
  bob = FeedbackStore(path, clock=clock, lease_seconds=60)
  (x, y) = ana.add_samples([{"prompt": "p", "response": r, "model": "m"} for r in "xy"])
  task = ana.next_pair("ana")
  assert _pair_key(task) == (x, y) and task.prompt.text == "p"
  assert bob.next_pair("bob") is None  # held by ana
  assert ana.next_pair("ana").a.id == x  # asking again: the same pair
  assert ana.progress().pairs_claimed == 1
  clock.advance(61)  # ana walked away
  assert _pair_key(bob.next_pair("bob")) == (x, y)
  assert ana.next_pair("ana") is None  # now held by bob
  bob.compare(y, x, "a", labeler="bob")  # judging releases the lease
  assert bob.next_pair("bob") is None  # bob never gets a pair he judged
  assert _pair_key(ana.next_pair("ana")) == (x, y)
  ana.compare(x, y, "skip", labeler="ana")
  assert ana.next_pair("ana") is None
  assert ana.progress() == store_lib.Progress(
      pairs_judged=1, pairs_queued=0, pairs_claimed=0, comparisons=2, samples_rated=0,
      samples_queued=2, samples_claimed=0, ratings=0, samples_scored=0, samples_to_score=2)
  assert ana.progress("cy").pairs_queued == 1

  rated = ana.next_sample_to_rate("ana")
  assert bob.next_sample_to_rate("bob").sample.id != rated.sample.id
  ana.rate(rated.sample.id, 3, scale=3, labeler="ana")
  assert ana.next_sample_to_rate("ana") is None  # rated one, bob holds the other
  clock.advance(61)
  assert ana.next_sample_to_rate("ana").sample.id != rated.sample.id
  ana.close()
  bob.close()


def test_a_task_leased_to_another_labeler_is_refused_until_the_lease_expires(db, clock, tmp_path):
  pair = db.next_pair("bob")
  sample = db.next_sample_to_rate("bob").sample.id
  free = db.next_pair("carol")
  before = _dump(tmp_path / "feedback.db")
  for a, b in ((pair.a.id, pair.b.id), (pair.b.id, pair.a.id)):  # either order names the pair
    with pytest.raises(store_lib.LeaseHeldError, match="leased to labeler 'bob'") as refused:
      db.compare(a, b, "a", labeler="alice")
    assert refused.value.holder == "bob" and refused.value.until == pair.lease_until
  with pytest.raises(store_lib.LeaseHeldError):
    # A batch with one held pair is refused whole; the pair carol holds is free to carol only.
    db.compare_many([(free.a.id, free.b.id, "a"), (pair.a.id, pair.b.id, "b")], labeler="carol")
  with pytest.raises(store_lib.LeaseHeldError, match=f"sample {sample} is leased to labeler 'bob'"):
    db.rate(sample, 2, scale=3, labeler="alice")
  assert db.judgements(include_retracted=True) == []
  assert _dump(tmp_path / "feedback.db") == before  # no row written, no lease moved

  clock.advance(60)  # bob's leases run out at exactly lease_until
  db.compare(pair.a.id, pair.b.id, "a", labeler="alice")
  db.rate(sample, 2, scale=3, labeler="alice")
  # The holder judges the task it holds, as before.
  held = db.next_pair("bob")
  db.compare(held.a.id, held.b.id, "b", labeler="bob")
  assert sorted((j.labeler, type(j).__name__) for j in db.judgements()) == [
      ("alice", "Comparison"), ("alice", "Rating"), ("bob", "Comparison")]


# --- undo -----------------------------------------------------------------------------------


def test_undo_retracts_only_that_labelers_last_judgement(db, clock):
  first = db.next_pair("ana")
  db.compare(first.a.id, first.b.id, "a", labeler="ana")
  clock.advance()
  second = db.next_pair("ana")
  db.compare(second.b.id, second.a.id, "a", labeler="ana")
  clock.advance()
  bob_task = db.next_pair("bob")
  bob_id = db.compare(bob_task.a.id, bob_task.b.id, "b", labeler="bob")
  clock.advance()
  db.next_pair("ana")  # ana is looking at a third pair when she presses undo

  undone = db.undo_last("ana")
  assert isinstance(undone, store_lib.Comparison) and undone.labeler == "ana"
  assert (undone.sample_a, undone.sample_b) == (second.b.id, second.a.id)
  assert undone.retracted_at == clock.now
  assert [j.id for j in db.judgements(labeler="bob")] == [bob_id]  # bob's untouched
  assert len(db.judgements(labeler="ana")) == 1
  assert len(db.judgements(labeler="ana", include_retracted=True)) == 2
  assert _pair_key(db.next_pair("ana")) == _pair_key(second)  # the undone pair comes back
  assert len(db.export_preferences()) == 2

  sample = db.next_sample_to_rate("ana").sample.id
  clock.advance()
  db.rate(sample, 2, scale=5, labeler="ana")
  assert isinstance(db.undo_last("ana"), store_lib.Rating)  # the newest judgement of any kind
  assert db.next_sample_to_rate("ana").sample.id == sample
  assert isinstance(db.undo_last("ana"), store_lib.Comparison)
  assert db.undo_last("ana") is None
  assert db.undo_last("nobody") is None


# --- refusing files -------------------------------------------------------------------------


def _snapshot(path):
  stat = os.stat(path)
  return path.read_bytes(), stat.st_mtime_ns, sorted(os.listdir(path.parent))


def test_newer_schema_is_refused_unchanged(tmp_path):
  path = tmp_path / "store.db"
  FeedbackStore(path).close()
  conn = sqlite3.connect(path)
  conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
               (str(store_lib.SCHEMA_VERSION + 1),))
  conn.commit()
  conn.close()
  before = _snapshot(path)
  with pytest.raises(FeedbackError, match=rf"{path}: .*newer.*schema version "
                     rf"{store_lib.SCHEMA_VERSION + 1}"):
    FeedbackStore(path)
  assert _snapshot(path) == before


def test_foreign_sqlite_file_is_refused_unchanged(tmp_path):
  path = tmp_path / "other.sqlite"
  conn = sqlite3.connect(path)
  conn.execute("CREATE TABLE users (name TEXT)")
  conn.commit()
  conn.close()
  before = _snapshot(path)
  with pytest.raises(FeedbackError, match=rf"{path}: an SQLite database but not a feedback store "
                     r"\(tables users"):
    FeedbackStore(path)
  assert _snapshot(path) == before


def test_non_sqlite_file_is_refused_unchanged(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("labels: a, b, a\n" * 20)
  before = _snapshot(path)
  with pytest.raises(FeedbackError, match=rf"{path}: not an SQLite file"):
    FeedbackStore(path)
  assert _snapshot(path) == before


# --- import ---------------------------------------------------------------------------------


def test_import_good_file(tmp_path):
  path = tmp_path / "samples.jsonl"
  lines = [{"prompt": "p1", "response": "a", "model": "run@1"},
           {"prompt": "p1", "response": "b", "model": "run@2", "meta": {"seed": 3}},
           {"prompt": "p2 ünïcode", "response": "<b>bold</b>", "model": "run@1"}]
  path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n\n",
                  encoding="utf-8")
  with FeedbackStore(tmp_path / "store.db") as s:
    assert s.import_samples_jsonl(path) == 3
    assert s.import_samples_jsonl(path) == 0  # already there: nothing doubled
    task = s.next_pair("ana")
    assert task.prompt.source == str(path) and {task.a.text, task.b.text} == {"a", "b"}
    assert s.sample(task.b.id).meta == {"seed": 3}
    assert s.progress().samples_queued == 3 and s.progress().pairs_queued == 1


_GOOD = b'{"prompt": "p", "response": "r2", "model": "m"}'


@pytest.mark.parametrize("bad_line, message", [
    (b'{"prompt": "p", "response": "r", ', r"not valid JSON"),
    (b'{"prompt": "p", "model": "m"}', r"field 'response': missing"),
    (b'{"prompt": "p", "response": 3, "model": "m"}', r"field 'response': expected a string"),
    (b'{"prompt": ["p"], "response": "r", "model": "m"}', r"field 'prompt': expected a string"),
    (b'{"prompt": "p", "response": "r", "model": "m", "meta": [1]}', r"field 'meta': expected"),
    (b'{"prompt": "p", "respones": "r", "model": "m"}', r"field 'respones'.*'response'"),
    (b'{"prompt": "caf\xe9", "response": "r", "model": "m"}', r"field 'prompt': not valid UTF-8"),
    (b'{"prompt": "p", "response": "", "model": "m"}', r"field 'response': expected non-empty"),
    (b'{"prompt": " \\t\\n", "response": "r", "model": "m"}',
     r"field 'prompt': expected non-empty"),
    (b'{"prompt": "p", "response": "\\ud800", "model": "m"}', r"field 'response': .*surrogate"),
    (b'["p", "r", "m"]', r"expected a JSON object"),
    (b'{"prompt": "p", "response": "r", "model": "m", "meta": {"n": ' + b"9" * 5000 + b'}}',
     r"not a usable JSON record \(Exceeds the limit"),  # Python's int digit limit, not a traceback
    (b'{"prompt": "p", "response": "r", "model": "m", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b'}',
     r"not a usable JSON record \(nested too deeply\)"),
])
def test_import_rejects_bad_line_and_stores_nothing(tmp_path, bad_line, message):
  store_path = tmp_path / "store.db"
  with FeedbackStore(store_path) as s:
    (x, y) = s.add_samples([{"prompt": "p", "response": r, "model": "m"} for r in "xy"])
    s.compare(x, y, "a", labeler="ana")
  before = _dump(store_path)
  path = tmp_path / "samples.jsonl"
  path.write_bytes(b"\n".join([_GOOD, b'{"prompt": "new", "response": "r", "model": "m"}',
                               bad_line, _GOOD]) + b"\n")
  with FeedbackStore(store_path) as s:
    with pytest.raises(FeedbackError, match=rf"{path}:3: {message}"):
      s.import_samples_jsonl(path)
  assert _dump(store_path) == before


def test_compare_many_stores_a_batch_whole_or_not_at_all(db, tmp_path):
  ids = [s.id for s in (db.sample(i) for i in range(1, 6))]
  before = _dump(tmp_path / "feedback.db")
  bad_batches = [
      ([(ids[0], ids[1], "a"), (ids[1], ids[2], "best")], "outcome of comparison 1: expected one of"),
      ([(ids[0], ids[1], "a"), (ids[0], ids[3], "b")], "expected samples of one prompt"),  # checked mid-transaction
      ([(ids[0], ids[1], "a"), (ids[1], ids[0], "b")], "already compared"),  # the same pair twice in one batch
  ]
  for batch, message in bad_batches:
    with pytest.raises(FeedbackError, match=message):
      db.compare_many(batch, labeler="sim")
    assert _dump(tmp_path / "feedback.db") == before  # the first, good comparison was rolled back too
  got = db.compare_many([(ids[0], ids[1], "a"), (ids[3], ids[4], "b")], labeler="sim")
  assert [(j.id, j.outcome) for j in db.judgements(kind="comparison")] == list(zip(got, ["a", "b"]))
  assert [(r["chosen"], r["rejected"]) for r in db.export_preferences()] == [
      ("Knock knock.", "Why did the chicken..."), ("Hello there.", "Hi!")]


def test_export_refuses_a_store_that_does_not_exist(tmp_path, capsys):
  from rlhf_jax import cli
  missing = tmp_path / "typo.db"
  code = cli.main(["feedback", "export", "preferences", "--store", str(missing), "--out", str(tmp_path / "p.jsonl")])
  assert code == 2 and "no feedback store there" in capsys.readouterr().err
  assert not missing.exists()  # not silently created empty
