"""The durable store of everything people (and simulated labelers) judge: one SQLite file.

RLHF data is expensive: an hour of a person's ratings cannot be regenerated, so every judgement
goes to disk before the caller hears back. The store is one SQLite file in WAL mode with
`synchronous=FULL`; each write is one transaction, and a method returns only after its COMMIT, so
anything acknowledged survives `kill -9` (and a power cut). Judgements are never deleted: "undo"
sets `retracted_at`, and exports skip retracted rows, so what a person once said stays auditable.

Several labelers can work at once, each process or thread with its own `FeedbackStore` on the same
file (or threads sharing one, which a lock serializes). Writers take the database lock up front
(`BEGIN IMMEDIATE`) and wait up to `busy_timeout` seconds for each other. The work queue hands out
short leases: `next_pair(labeler)` claims a pair of samples of one prompt that this labeler has not
judged and nobody else holds, so two people never see the same pair at once, and a pair whose
labeler walked away comes back when the lease expires. A lease binds the judgement too: `compare`
and `rate` refuse (`LeaseHeldError`) a pair or sample leased to another labeler until that lease
expires, so one labeler cannot answer the task another is looking at. A task nobody holds can be
judged without a lease (simulated labelers write whole batches that way).

Schema (version 2; times are Unix seconds as REAL; a version-1 store gains `scores` when opened):

    meta(key, value)              app = "rlhf_jax.feedback", schema_version, created
    prompts(id, text, source, created)                       text is unique: a prompt is its text
    samples(id, prompt_id, text, model, meta, created,       model: "workdir@step", "human", ...;
            claimed_by, claimed_until)                       meta: a JSON object; the lease columns
                                                             belong to the rating queue
    pairs(id, prompt_id, sample_a, sample_b,                 every two samples of one prompt,
          claimed_by, claimed_until)                         sample_a < sample_b; the pair queue
    ratings(id, sample_id, labeler, value, scale,            1 <= value <= scale
            created, retracted_at)
    comparisons(id, prompt_id, pair_id, sample_a, sample_b,  sample_a/sample_b as the labeler saw
                outcome, labeler, created, retracted_at)     them; outcome in a, b, tie, skip
    scores(id, judgement, sample_id, labeler, criterion,     a rubric judgement: one row per
           value, scale, created, retracted_at)              criterion, sharing `judgement`

A labeler has at most one live judgement per pair and per sample (a partial unique index), so a
double submit is an error instead of a doubled vote. Adding the same prompt text, or the same
(prompt, model, text) sample, again returns the existing id: re-importing a file adds nothing.

Samples come in through `add_samples` or `import_samples_jsonl`, one record per sample:

    {"prompt": "...", "response": "...", "model": "workdir@1000", "meta": {"temperature": 0.7}}

`prompt`, `response` and `model` are required non-empty strings; `meta` is an optional JSON object
for anything else (sampling settings, seeds). Any other field is an error, so a misspelled field is
not silently dropped. Text is stored exactly as given (any Unicode, `<script>` included: escaping is
the web page's job); empty or whitespace-only text is an error.

Trainers read `export_preferences` ({"prompt", "chosen", "rejected", "labeler", ...}) and
`export_ratings` ({"prompt", "response", "rating", "scale", "labeler", ...}), one record per live
judgement: two labelers who judged one pair give two records, so disagreement stays visible.
Left/right order is the web page's business: it should show a pair in random order and pass the
sample ids to `compare` in the order it showed them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

from rlhf_jax import files
from rlhf_jax.errors import UserError

APP_NAME = "rlhf_jax.feedback"
SCHEMA_VERSION = 2  # 2: rubric scores (a version-1 store gains the table when opened)
OUTCOMES = ("a", "b", "tie", "skip")
RECORD_FIELDS = ("prompt", "response", "model", "meta")
_REQUIRED_FIELDS = ("prompt", "response", "model")
_SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE prompts (
         id INTEGER PRIMARY KEY,
         text TEXT NOT NULL UNIQUE CHECK (text <> ''),
         source TEXT NOT NULL,
         created REAL NOT NULL)""",
    """CREATE TABLE samples (
         id INTEGER PRIMARY KEY,
         prompt_id INTEGER NOT NULL REFERENCES prompts(id),
         text TEXT NOT NULL CHECK (text <> ''),
         model TEXT NOT NULL CHECK (model <> ''),
         meta TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(meta)),
         created REAL NOT NULL,
         claimed_by TEXT,
         claimed_until REAL,
         UNIQUE (prompt_id, model, text))""",
    """CREATE TABLE pairs (
         id INTEGER PRIMARY KEY,
         prompt_id INTEGER NOT NULL REFERENCES prompts(id),
         sample_a INTEGER NOT NULL REFERENCES samples(id),
         sample_b INTEGER NOT NULL REFERENCES samples(id),
         claimed_by TEXT,
         claimed_until REAL,
         CHECK (sample_a < sample_b),
         UNIQUE (sample_a, sample_b))""",
    """CREATE TABLE ratings (
         id INTEGER PRIMARY KEY,
         sample_id INTEGER NOT NULL REFERENCES samples(id),
         labeler TEXT NOT NULL CHECK (labeler <> ''),
         value INTEGER NOT NULL,
         scale INTEGER NOT NULL,
         created REAL NOT NULL,
         retracted_at REAL,
         CHECK (scale >= 2 AND value BETWEEN 1 AND scale))""",
    """CREATE TABLE comparisons (
         id INTEGER PRIMARY KEY,
         prompt_id INTEGER NOT NULL REFERENCES prompts(id),
         pair_id INTEGER NOT NULL REFERENCES pairs(id),
         sample_a INTEGER NOT NULL REFERENCES samples(id),
         sample_b INTEGER NOT NULL REFERENCES samples(id),
         outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie', 'skip')),
         labeler TEXT NOT NULL CHECK (labeler <> ''),
         created REAL NOT NULL,
         retracted_at REAL)""",
    "CREATE INDEX samples_by_prompt ON samples(prompt_id)",
    "CREATE INDEX pairs_by_prompt ON pairs(prompt_id)",
    "CREATE UNIQUE INDEX ratings_live ON ratings(sample_id, labeler) WHERE retracted_at IS NULL",
    "CREATE INDEX ratings_by_labeler ON ratings(labeler, created)",
    "CREATE UNIQUE INDEX comparisons_live ON comparisons(pair_id, labeler) "
    "WHERE retracted_at IS NULL",
    "CREATE INDEX comparisons_by_labeler ON comparisons(labeler, created)",
)
# Version 2: a rubric judgement scores one sample on several criteria; its rows share `judgement`
# (the id of its first row), so undo retracts them together.
_SCHEMA_V2 = (
    """CREATE TABLE scores (
         id INTEGER PRIMARY KEY,
         judgement INTEGER NOT NULL,
         sample_id INTEGER NOT NULL REFERENCES samples(id),
         labeler TEXT NOT NULL CHECK (labeler <> ''),
         criterion TEXT NOT NULL CHECK (criterion <> ''),
         value INTEGER NOT NULL,
         scale INTEGER NOT NULL,
         created REAL NOT NULL,
         retracted_at REAL,
         CHECK (scale >= 2 AND value BETWEEN 1 AND scale))""",
    "CREATE UNIQUE INDEX scores_live ON scores(sample_id, labeler, criterion) WHERE retracted_at IS NULL",
    "CREATE INDEX scores_by_labeler ON scores(labeler, created)",
)
_TABLES = frozenset({"meta", "prompts", "samples", "pairs", "ratings", "comparisons"})


class FeedbackError(UserError):
  """A file that is not a usable feedback store, or a judgement or record that cannot be stored.

  The message names the file (and line and field) or the argument, and what was expected.
  """


class LeaseHeldError(FeedbackError):
  """A judgement of a pair or sample that another labeler holds a live lease on.

  Nothing was stored; the task is free to judge once `until` (Unix seconds) has passed, or once
  `holder` has judged it or moved on.
  """

  def __init__(self, what: str, holder: str, until: float, labeler: str):
    super().__init__(f"{what} is leased to labeler {holder!r} until {until:.0f} (Unix seconds); "
                     f"labeler {labeler!r} may judge it after that lease expires")
    self.holder = holder
    self.until = until


# ---------------------------------------------------------------------------------------------
# What the store hands out.


@dataclasses.dataclass(frozen=True)
class Prompt:
  id: int
  text: str
  source: str


@dataclasses.dataclass(frozen=True)
class Sample:
  id: int
  prompt_id: int
  text: str
  model: str
  meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Rating:
  id: int
  sample_id: int
  value: int
  scale: int
  labeler: str
  created: float
  retracted_at: float | None


@dataclasses.dataclass(frozen=True)
class Comparison:
  id: int
  prompt_id: int
  sample_a: int
  sample_b: int
  outcome: str  # "a": sample_a is better; "b": sample_b is better; "tie"; "skip" (no judgement)
  labeler: str
  created: float
  retracted_at: float | None


@dataclasses.dataclass(frozen=True)
class Scores:
  """One rubric judgement: a labeler's score of a sample on each criterion."""
  id: int  # the judgement (its first row's id)
  sample_id: int
  values: dict[str, int]  # criterion -> 1..scale
  scales: dict[str, int]
  labeler: str
  created: float
  retracted_at: float | None


Judgement = Rating | Comparison | Scores


@dataclasses.dataclass(frozen=True)
class PairTask:
  """A pair to compare, leased to one labeler until `lease_until` (Unix seconds)."""

  prompt: Prompt
  a: Sample
  b: Sample
  lease_until: float


@dataclasses.dataclass(frozen=True)
class RatingTask:
  """A sample to rate, leased to one labeler until `lease_until` (Unix seconds)."""

  prompt: Prompt
  sample: Sample
  lease_until: float


@dataclasses.dataclass(frozen=True)
class Progress:
  """Queue counts; with a labeler, "judged"/"queued" are that labeler's, otherwise anyone's.

  A pair is judged once it has a live comparison (a skip counts: that labeler is done with it).
  """

  pairs_judged: int
  pairs_queued: int
  pairs_claimed: int  # leased right now, by anyone
  comparisons: int  # live comparisons, skips included
  samples_rated: int
  samples_queued: int
  samples_claimed: int
  ratings: int  # live ratings
  samples_scored: int = 0  # with a live rubric judgement
  samples_to_score: int = 0


# ---------------------------------------------------------------------------------------------
# Validation.


def _check_text(text: Any, what: str) -> str:
  if not isinstance(text, str):
    raise FeedbackError(f"{what}: expected a string, got {type(text).__name__}")
  if not text.strip():
    raise FeedbackError(f"{what}: expected non-empty text, got {text!r}")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise FeedbackError(f"{what}: not encodable as UTF-8 (a lone surrogate at character "
                        f"{e.start})") from None
  return text


def _check_scores(labeler: str, values: Mapping[str, int], scales: Mapping[str, int]) -> None:
  """A rubric judgement's fields: a labeler, and one int in 1..scales[c] for each criterion c."""
  _check_labeler(labeler)
  if not values:
    raise FeedbackError("values: expected a score for at least one criterion")
  for criterion, value in values.items():
    _check_text(criterion, "criterion")
    if criterion not in scales:
      raise FeedbackError(f"scales: no scale for criterion {criterion!r}")
    if _check_int(scales[criterion], f"scales[{criterion!r}]") < 2:
      raise FeedbackError(f"scales[{criterion!r}]: expected an int >= 2, got {scales[criterion]}")
    if not 1 <= _check_int(value, f"values[{criterion!r}]") <= scales[criterion]:
      raise FeedbackError(f"values[{criterion!r}]: expected an int in 1..{scales[criterion]}, got {value}")


def _checked_outcomes(comparisons: Iterable[tuple[Any, Any, str]], *, single: bool = True) -> list:
  """`comparisons` as a list, each outcome one of OUTCOMES, or a FeedbackError naming the first
  that is not (as "outcome" alone when `single` and there is one comparison)."""
  comparisons = list(comparisons)
  for i, (_, _, outcome) in enumerate(comparisons):
    if outcome not in OUTCOMES:
      what = "outcome" if single and len(comparisons) == 1 else f"outcome of comparison {i}"
      raise FeedbackError(f"{what}: expected one of {list(OUTCOMES)}, got {outcome!r}")
  return comparisons


def _check_labeler(labeler: Any) -> str:
  return _check_text(labeler, "labeler")


def _check_int(value: Any, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise FeedbackError(f"{what}: expected an int, got {value!r}")
  return value


def _meta_json(meta: Any, what: str) -> str:
  if meta is None:
    return "{}"
  if not isinstance(meta, Mapping):
    raise FeedbackError(f"{what}: expected a JSON object (dict), got {type(meta).__name__}")
  try:
    return json.dumps(dict(meta), ensure_ascii=False, sort_keys=True, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise FeedbackError(f"{what}: not storable as JSON ({e})") from None


def parse_record(record: Any, where: str) -> tuple[str, str, str, str]:
  """(prompt, response, model, meta JSON) of one sample record, or a FeedbackError naming `where`
  (e.g. "samples.jsonl:3") and the field."""
  if not isinstance(record, Mapping):
    raise FeedbackError(f"{where}: expected a JSON object with fields {list(_REQUIRED_FIELDS)}, "
                        f"got {type(record).__name__}")
  for key in record:
    if key not in RECORD_FIELDS:
      close = difflib.get_close_matches(str(key), RECORD_FIELDS, n=1)
      hint = f"did you mean {close[0]!r}? " if close else ""
      raise FeedbackError(f"{where}: field {key!r}: unknown field; {hint}expected "
                          f"{list(RECORD_FIELDS)} (put anything else under 'meta')")
  for key in _REQUIRED_FIELDS:
    if key not in record:
      raise FeedbackError(f"{where}: field {key!r}: missing; expected a non-empty string")
  prompt, response, model = (_check_text(record[k], f"{where}: field {k!r}")
                             for k in _REQUIRED_FIELDS)
  return prompt, response, model, _meta_json(record.get("meta"), f"{where}: field 'meta'")


def _field_with_bad_bytes(raw: bytes) -> str:
  """"field 'x': " for the top-level field whose string holds the invalid UTF-8 of `raw`, or ""."""
  try:
    record = json.loads(raw.decode("utf-8", errors="surrogateescape"))
  except json.JSONDecodeError:
    return ""
  if isinstance(record, dict):
    for key, value in record.items():
      if any("\udc80" <= ch <= "\udcff" for ch in f"{key}{json.dumps(value, ensure_ascii=False)}"):
        return f"field {key!r}: "
  return ""


def _read_jsonl_records(path: Path) -> list[tuple[str, str, str, str]]:
  """Parses every line of a samples file before anything is stored; blank lines are skipped."""
  try:
    data = path.read_bytes()
  except OSError as e:
    raise FeedbackError(f"{path}: cannot read ({e.strerror})") from None
  records = []
  for lineno, raw in enumerate(data.split(b"\n"), start=1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      field = _field_with_bad_bytes(raw)
      raise FeedbackError(f"{path}:{lineno}: {field}not valid UTF-8 (byte {e.start} of the "
                          "line)") from None
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise FeedbackError(
          f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits; nesting too deep
      reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
      raise FeedbackError(f"{path}:{lineno}: not a usable JSON record ({reason})") from None
    records.append(parse_record(record, f"{path}:{lineno}"))
  return records


# ---------------------------------------------------------------------------------------------
# Opening a file.


def _schema_version(conn: sqlite3.Connection, path: Path) -> int | None:
  """The schema version of the store in `conn`, None for an empty database, or a FeedbackError.

  Only reads, so a file that is refused is left as it was.
  """
  expected = f"expected a feedback store written by {APP_NAME}, or a path that does not exist yet"
  try:
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    if not tables:
      return None
    if "meta" not in tables:
      raise FeedbackError(f"{path}: an SQLite database but not a feedback store (tables "
                          f"{', '.join(sorted(tables))}; no 'meta' table); {expected}")
    meta = dict(conn.execute("SELECT key, value FROM meta"))
  except sqlite3.DatabaseError as e:
    raise FeedbackError(f"{path}: cannot read as SQLite ({e}); {expected}") from None
  if meta.get("app") != APP_NAME:
    raise FeedbackError(f"{path}: an SQLite database but not a feedback store (meta app = "
                        f"{meta.get('app')!r}); {expected}")
  try:
    version = int(meta.get("schema_version", ""))
  except ValueError:
    raise FeedbackError(f"{path}: meta schema_version = {meta.get('schema_version')!r}; expected "
                        "an integer") from None
  if version > SCHEMA_VERSION:
    raise FeedbackError(f"{path}: written by a newer rlhf_jax (schema version {version}; this "
                        f"code reads up to version {SCHEMA_VERSION}); upgrade rlhf_jax to open it")
  if version < 1:
    raise FeedbackError(
        f"{path}: schema version {version} is unknown; expected 1..{SCHEMA_VERSION}")
  missing = (_TABLES | ({"scores"} if version >= 2 else set())) - tables
  if missing:
    raise FeedbackError(f"{path}: feedback store without tables {', '.join(sorted(missing))}; "
                        "the file is damaged")
  return version


def _check_file(path: Path) -> None:
  """Refuses, before SQLite touches it, a path that is a directory or not an SQLite file."""
  if path.is_dir():
    raise FeedbackError(f"{path}: is a directory; expected the path of a feedback store file")
  if not path.exists():
    return
  with open(path, "rb") as f:
    header = f.read(len(_SQLITE_HEADER))
  if header and header != _SQLITE_HEADER:  # SQLite treats an empty file as an empty database
    raise FeedbackError(f"{path}: not an SQLite file; expected a feedback store written by "
                        f"{APP_NAME}, or a path that does not exist yet")


# ---------------------------------------------------------------------------------------------
# The store.


class FeedbackStore:
  """Prompts, samples, ratings and comparisons in one SQLite file (see the module docstring).

  `FeedbackStore(path)` creates the file (and its parent directories) when it does not exist, and
  refuses, without changing it, a file that is not a feedback store or was written by a newer
  schema. One instance may be shared by threads (a lock serializes its calls); processes open
  their own. `lease_seconds` is how long a task from `next_pair`/`next_sample_to_rate` stays
  reserved for its labeler; `clock` (Unix seconds) exists for tests.
  """

  def __init__(
      self,
      path: str | os.PathLike[str],
      *,
      lease_seconds: float = 600.0,
      busy_timeout: float = 30.0,
      clock: Callable[[], float] = time.time,
      create: bool = True,
  ):
    self.path = Path(path).expanduser()
    self.lease_seconds = float(lease_seconds)
    self._clock = clock
    self._lock = threading.RLock()
    if not create and not self.path.exists():  # a reader: a mistyped path must not become an empty store
      raise FeedbackError(f"{self.path}: no feedback store there (expected an existing store to read)")
    _check_file(self.path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), one per write.
    self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                 check_same_thread=False)
    try:
      if _schema_version(self._conn, self.path) is None:
        self._set_pragmas()
        with self._write() as c:
          # Another process may have created the store since the check above: check again.
          if _schema_version(c, self.path) is None:
            self._create(c)
      else:
        self._set_pragmas()
        if _schema_version(self._conn, self.path) < SCHEMA_VERSION:
          self._upgrade()
    except BaseException:
      self._conn.close()
      raise

  def _upgrade(self) -> None:
    """Brings an older store to SCHEMA_VERSION in one transaction, adding tables and touching no
    row that is there (version 1 -> 2: the rubric scores table)."""
    with self._write() as c:
      if _schema_version(c, self.path) == 1:  # another process may have upgraded it meanwhile
        for statement in _SCHEMA_V2:
          c.execute(statement)
        c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

  def _set_pragmas(self) -> None:
    mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
      raise FeedbackError(f"{self.path}: SQLite could not switch to WAL mode (got {mode!r}); "
                          "put the store on a local filesystem")
    self._conn.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives a power cut
    self._conn.execute("PRAGMA foreign_keys=ON")

  def _create(self, c: sqlite3.Connection) -> None:
    for statement in _SCHEMA + _SCHEMA_V2:
      c.execute(statement)
    c.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                  [("app", APP_NAME), ("schema_version", str(SCHEMA_VERSION)),
                   ("created", repr(self._clock()))])

  # --- plumbing ---------------------------------------------------------------------------

  @contextlib.contextmanager
  def _write(self) -> Iterator[sqlite3.Connection]:
    """One write transaction; returns only after COMMIT, rolls back on any exception."""
    with self._lock:
      conn = self._connection()
      conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock on upgrade
      try:
        yield conn
      except BaseException:
        conn.execute("ROLLBACK")
        raise
      conn.execute("COMMIT")

  def _connection(self) -> sqlite3.Connection:
    if self._conn is None:
      raise FeedbackError(f"{self.path}: the store is closed")
    return self._conn

  def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple]:
    with self._lock:
      return self._connection().execute(sql, params).fetchall()

  def close(self) -> None:
    with self._lock:
      if self._conn is not None:
        self._conn.close()
        self._conn = None

  def __enter__(self) -> FeedbackStore:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  # --- prompts and samples ----------------------------------------------------------------

  def _insert_prompt(self, c: sqlite3.Connection, text: str, source: str) -> int:
    row = c.execute("SELECT id FROM prompts WHERE text = ?", (text,)).fetchone()
    if row:
      return row[0]
    return c.execute("INSERT INTO prompts (text, source, created) VALUES (?, ?, ?)",
                     (text, source, self._clock())).lastrowid

  def _insert_sample(self, c: sqlite3.Connection, prompt_id: int, text: str, model: str,
                     meta_json: str) -> tuple[int, bool]:
    """(sample id, whether it is new); a new sample is paired with every sample of its prompt."""
    row = c.execute("SELECT id FROM samples WHERE prompt_id = ? AND model = ? AND text = ?",
                    (prompt_id, model, text)).fetchone()
    if row:
      return row[0], False
    sample_id = c.execute(
        "INSERT INTO samples (prompt_id, text, model, meta, created) VALUES (?, ?, ?, ?, ?)",
        (prompt_id, text, model, meta_json, self._clock())).lastrowid
    c.execute("INSERT INTO pairs (prompt_id, sample_a, sample_b) "
              "SELECT ?, id, ? FROM samples WHERE prompt_id = ? AND id < ?",
              (prompt_id, sample_id, prompt_id, sample_id))
    return sample_id, True

  def add_prompt(self, text: str, source: str = "") -> int:
    """The id of prompt `text` (the existing one when this text was added before)."""
    _check_text(text, "prompt text")
    if not isinstance(source, str):
      raise FeedbackError(f"source: expected a string, got {type(source).__name__}")
    with self._write() as c:
      return self._insert_prompt(c, text, source)

  def add_sample(self, prompt_id: int, text: str, *, model: str,
                 meta: Mapping[str, Any] | None = None) -> int:
    """Stores one response to prompt `prompt_id`; `model` says what wrote it ("workdir@step")."""
    _check_text(text, "sample text")
    _check_text(model, "model")
    meta_json = _meta_json(meta, "meta")
    with self._write() as c:
      self._prompt_row(c, _check_int(prompt_id, "prompt_id"))
      return self._insert_sample(c, prompt_id, text, model, meta_json)[0]

  def add_samples(self, records: Iterable[Mapping[str, Any]], *, source: str = "") -> list[int]:
    """Stores sample records (see the module docstring) in one transaction; returns their ids.

    Prompts are created as needed with `source`. Every record is checked before anything is
    stored, so a bad record stores nothing.
    """
    parsed = [parse_record(r, f"add_samples record {i}") for i, r in enumerate(records)]
    return [sample_id for sample_id, _ in self._store_records(parsed, source)]

  def _store_records(self, records: Sequence[tuple[str, str, str, str]],
                     source: str) -> list[tuple[int, bool]]:
    with self._write() as c:
      return [self._insert_sample(c, self._insert_prompt(c, prompt, source), response, model, meta)
              for prompt, response, model, meta in records]

  def add_round(self, records: Sequence[Mapping[str, Any]], comparisons: Iterable[tuple[int, int, str]] = (), *,
                labeler: str | None = None, source: str = "", collection: str | None = None,
                round_index: int | None = None, pairs: int | None = None,
                scores: Iterable[tuple[int, str, Mapping[str, int]]] = (),
                scales: Mapping[str, int] | None = None) -> list[int]:
    """Stores sample records and `labeler`'s comparisons of them (`(i, j, outcome)`, indices into
    `records`) in one transaction; returns the samples' ids. A round of collection is stored whole
    or not at all: an interrupted one leaves no samples waiting for verdicts that never come.
    `scores` are rubric judgements in the same transaction: `(i, labeler, {criterion: value})` of
    record i, each value in 1..`scales[criterion]`.

    With `collection` and `round_index`, the same transaction records that the collection's rounds
    up to `round_index` are stored, with their comparisons and the `pairs` they offer for judging
    (default: as many as the comparisons; `collection_progress`), so an interrupted collection
    resumes exactly.
    """
    parsed = [parse_record(r, f"add_round record {i}") for i, r in enumerate(records)]
    comparisons = _checked_outcomes(comparisons, single=False)
    if comparisons:
      _check_labeler(labeler)
    for k, (i, j, _) in enumerate(comparisons):
      if not (0 <= i < len(parsed) and 0 <= j < len(parsed)):
        raise FeedbackError(f"comparison {k}: expected indices into the {len(parsed)} records, got ({i}, {j})")
    scores = list(scores)
    for k, (i, scorer, values) in enumerate(scores):
      if not 0 <= i < len(parsed):
        raise FeedbackError(f"scores {k}: expected an index into the {len(parsed)} records, got {i}")
      _check_scores(scorer, values, scales or {})
    with self._write() as c:
      ids = [self._insert_sample(c, self._insert_prompt(c, prompt, source), response, model, meta)[0]
             for prompt, response, model, meta in parsed]
      for i, j, outcome in comparisons:
        self._insert_comparison(c, ids[i], ids[j], outcome, labeler)
      for i, scorer, values in scores:
        self._insert_scores(c, ids[i], values, scales, scorer)
      if collection is not None:
        row = c.execute("SELECT value FROM meta WHERE key = ?", (f"collection:{collection}",)).fetchone()
        done = json.loads(row[0]) if row else {"rounds": 0, "comparisons": 0, "pairs": 0}
        done = {"rounds": round_index + 1, "comparisons": done["comparisons"] + len(comparisons),
                "pairs": done["pairs"] + (len(comparisons) if pairs is None else pairs)}
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                  (f"collection:{collection}", json.dumps(done)))
    return ids

  def collection_progress(self, collection: str) -> tuple[int, int, int]:
    """(rounds, comparisons, pairs) of `collection` that `add_round` has stored; zeros for a new one."""
    rows = self._read("SELECT value FROM meta WHERE key = ?", (f"collection:{collection}",))
    done = json.loads(rows[0][0]) if rows else {"rounds": 0, "comparisons": 0, "pairs": 0}
    return done["rounds"], done["comparisons"], done["pairs"]

  def import_samples_jsonl(self, path: str | os.PathLike[str], *, source: str | None = None) -> int:
    """Stores the sample records of a JSON-lines file in one transaction; returns how many are new.

    Each non-blank line is one record (module docstring). The whole file is checked first: any
    bad line (invalid UTF-8 or JSON, a missing, unknown or mistyped field, empty text) is a
    FeedbackError naming the file, the line and the field, and nothing from the file is stored.
    Prompts get `source` (default: the file's path). Records already in the store are not added
    again, so importing a file twice adds nothing the second time.
    """
    path = Path(path)
    records = _read_jsonl_records(path)
    return sum(new for _, new in self._store_records(records, str(path) if source is None
                                                      else source))

  def _prompt_row(self, c: sqlite3.Connection, prompt_id: int) -> Prompt:
    row = c.execute("SELECT id, text, source FROM prompts WHERE id = ?", (prompt_id,)).fetchone()
    if row is None:
      raise FeedbackError(f"prompt_id: no prompt with id {prompt_id}")
    return Prompt(*row)

  def _sample_row(self, c: sqlite3.Connection, sample_id: int, what: str = "sample_id") -> Sample:
    row = c.execute("SELECT id, prompt_id, text, model, meta FROM samples WHERE id = ?",
                    (_check_int(sample_id, what),)).fetchone()
    if row is None:
      raise FeedbackError(f"{what}: no sample with id {sample_id}")
    return Sample(*row[:4], json.loads(row[4]))

  def prompt(self, prompt_id: int) -> Prompt:
    with self._lock:
      return self._prompt_row(self._connection(), _check_int(prompt_id, "prompt_id"))

  def sample(self, sample_id: int) -> Sample:
    with self._lock:
      return self._sample_row(self._connection(), sample_id)

  # --- judgements -------------------------------------------------------------------------

  def rate(self, sample_id: int, value: int, *, scale: int, labeler: str) -> int:
    """Records `labeler`'s rating `value` in 1..`scale` of a sample; returns the rating id.

    LeaseHeldError (nothing stored) while another labeler holds the sample's lease.
    """
    _check_labeler(labeler)
    _check_int(scale, "scale")
    if scale < 2:
      raise FeedbackError(f"scale: expected an int >= 2, got {scale}")
    if not 1 <= _check_int(value, "value") <= scale:
      raise FeedbackError(f"value: expected an int in 1..{scale}, got {value}")
    with self._write() as c:
      self._sample_row(c, sample_id)
      self._check_lease(c, "samples", sample_id, f"sample {sample_id}", labeler)
      row = c.execute("SELECT id FROM ratings WHERE sample_id = ? AND labeler = ? AND "
                      "retracted_at IS NULL", (sample_id, labeler)).fetchone()
      if row:
        raise FeedbackError(f"labeler {labeler!r} already rated sample {sample_id} (rating "
                            f"{row[0]}); undo it first to change it")
      rating_id = c.execute("INSERT INTO ratings (sample_id, labeler, value, scale, created) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (sample_id, labeler, value, scale, self._clock())).lastrowid
      c.execute("UPDATE samples SET claimed_by = NULL, claimed_until = NULL "
                "WHERE id = ? AND claimed_by = ?", (sample_id, labeler))
      return rating_id

  def compare(self, sample_a: int, sample_b: int, outcome: str, *, labeler: str) -> int:
    """Records `labeler`'s comparison of two samples of one prompt; returns the comparison id.

    `outcome` is "a" (sample_a is better), "b", "tie" or "skip" (seen, not judged). Pass the
    samples in the order the labeler saw them; exports turn "a"/"b" into chosen/rejected.
    LeaseHeldError (nothing stored) while another labeler holds the pair's lease.
    """
    return self.compare_many([(sample_a, sample_b, outcome)], labeler=labeler)[0]

  def compare_many(self, comparisons: Iterable[tuple[int, int, str]], *, labeler: str) -> list[int]:
    """Records `labeler`'s comparisons `(sample_a, sample_b, outcome)` (as in `compare`) in one
    transaction; returns their ids. A batch is stored whole or not at all: a bad comparison, or a
    process killed midway, stores none of it, so a labelling round is never half-recorded."""
    _check_labeler(labeler)
    comparisons = _checked_outcomes(comparisons)
    with self._write() as c:
      return [self._insert_comparison(c, a, b, outcome, labeler) for a, b, outcome in comparisons]

  def score(self, sample_id: int, values: Mapping[str, int], *, scales: Mapping[str, int], labeler: str) -> int:
    """Records `labeler`'s rubric judgement of a sample, one score in 1..scales[c] for each
    criterion c of `values`, in one transaction; returns the judgement's id.

    LeaseHeldError (nothing stored) while another labeler holds the sample's lease; an error if
    the labeler already scored the sample on one of these criteria (undo it first)."""
    _check_scores(labeler, values, scales)
    with self._write() as c:
      self._sample_row(c, sample_id)
      self._check_lease(c, "samples", sample_id, f"sample {sample_id}", labeler)
      return self._insert_scores(c, sample_id, values, scales, labeler)

  def _insert_scores(self, c: sqlite3.Connection, sample_id: int, values: Mapping[str, int],
                     scales: Mapping[str, int], labeler: str) -> int:
    """Inserts one rubric judgement (checked by `_check_scores`) and frees the sample's lease."""
    done = c.execute(f"SELECT criterion FROM scores WHERE sample_id = ? AND labeler = ? AND retracted_at IS NULL "
                     f"AND criterion IN ({', '.join('?' * len(values))})",
                     (sample_id, labeler, *values)).fetchone()
    if done:
      raise FeedbackError(f"labeler {labeler!r} already scored sample {sample_id} on {done[0]!r}; undo it first "
                          "to change it")
    now, judgement = self._clock(), None
    for criterion, value in values.items():
      row_id = c.execute("INSERT INTO scores (judgement, sample_id, labeler, criterion, value, scale, created) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (judgement or 0, sample_id, labeler, criterion, value, scales[criterion], now)).lastrowid
      judgement = judgement or row_id
    c.execute("UPDATE scores SET judgement = ? WHERE id = ?", (judgement, judgement))
    c.execute("UPDATE samples SET claimed_by = NULL, claimed_until = NULL WHERE id = ? AND claimed_by = ?",
              (sample_id, labeler))
    return judgement

  def _scores(self, c: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[Scores]:
    rows = c.execute(f"SELECT judgement, sample_id, criterion, value, scale, labeler, created, retracted_at "
                     f"FROM scores WHERE {where} ORDER BY judgement, id", params).fetchall()
    out: dict[int, Scores] = {}
    for judgement, sample_id, criterion, value, scale, labeler, created, retracted in rows:
      if judgement not in out:
        out[judgement] = Scores(judgement, sample_id, {}, {}, labeler, created, retracted)
      out[judgement].values[criterion] = value
      out[judgement].scales[criterion] = scale
    return list(out.values())

  def _insert_comparison(self, c: sqlite3.Connection, sample_a: int, sample_b: int, outcome: str,
                         labeler: str) -> int:
    a = self._sample_row(c, sample_a, "sample_a")
    b = self._sample_row(c, sample_b, "sample_b")
    if a.id == b.id:
      raise FeedbackError(f"sample_a, sample_b: expected two different samples, got {a.id} twice")
    if a.prompt_id != b.prompt_id:
      raise FeedbackError(f"sample_a, sample_b: expected samples of one prompt; sample {a.id} "
                          f"answers prompt {a.prompt_id}, sample {b.id} prompt {b.prompt_id}")
    low, high = min(a.id, b.id), max(a.id, b.id)
    c.execute("INSERT OR IGNORE INTO pairs (prompt_id, sample_a, sample_b) VALUES (?, ?, ?)",
              (a.prompt_id, low, high))  # every pair exists already unless added by hand
    (pair_id,) = c.execute("SELECT id FROM pairs WHERE sample_a = ? AND sample_b = ?",
                           (low, high)).fetchone()
    self._check_lease(c, "pairs", pair_id, f"the pair of samples {low} and {high}", labeler)
    row = c.execute("SELECT id FROM comparisons WHERE pair_id = ? AND labeler = ? AND "
                    "retracted_at IS NULL", (pair_id, labeler)).fetchone()
    if row:
      raise FeedbackError(f"labeler {labeler!r} already compared samples {a.id} and {b.id} "
                          f"(comparison {row[0]}); undo it first to change it")
    comparison_id = c.execute(
        "INSERT INTO comparisons (prompt_id, pair_id, sample_a, sample_b, outcome, labeler, "
        "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (a.prompt_id, pair_id, a.id, b.id, outcome, labeler, self._clock())).lastrowid
    c.execute("UPDATE pairs SET claimed_by = NULL, claimed_until = NULL "
              "WHERE id = ? AND claimed_by = ?", (pair_id, labeler))
    return comparison_id

  def _check_lease(self, c: sqlite3.Connection, table: Literal["pairs", "samples"], row_id: int,
                   what: str, labeler: str) -> None:
    """Raises LeaseHeldError when someone other than `labeler` holds a live lease on the row.

    Read inside the caller's write transaction, so no lease can be taken between this check and
    the insert; the raise rolls the whole transaction back.
    """
    holder, until = c.execute(f"SELECT claimed_by, claimed_until FROM {table} WHERE id = ?",
                              (row_id,)).fetchone()
    if holder is not None and holder != labeler and until is not None and until > self._clock():
      raise LeaseHeldError(what, holder, until, labeler)

  def undo_last(self, labeler: str) -> Judgement | None:
    """Retracts `labeler`'s most recent live judgement (rating, comparison or rubric scores) and
    returns it.

    Nothing is deleted: the row gets `retracted_at`. The pair or sample goes back to the queue,
    leased to this labeler (unless someone else holds it), so their next task is the one they
    undid. None when the labeler has nothing left to undo.
    """
    _check_labeler(labeler)
    with self._write() as c:
      candidates = [kind(*row) for kind, row in (
          (Rating, c.execute(f"SELECT {_RATING_COLUMNS} FROM ratings WHERE labeler = ? AND "
                               "retracted_at IS NULL ORDER BY created DESC, id DESC LIMIT 1",
                               (labeler,)).fetchone()),
          (Comparison, c.execute(f"SELECT {_COMPARISON_COLUMNS} FROM comparisons WHERE "
                                   "labeler = ? AND retracted_at IS NULL "
                                   "ORDER BY created DESC, id DESC LIMIT 1",
                                   (labeler,)).fetchone())) if row]
      latest = c.execute("SELECT judgement FROM scores WHERE labeler = ? AND retracted_at IS NULL "
                         "ORDER BY created DESC, id DESC LIMIT 1", (labeler,)).fetchone()
      if latest:
        candidates += self._scores(c, "judgement = ?", latest)
      if not candidates:
        return None
      last = max(candidates, key=lambda j: j.created)
      now = self._clock()
      until = now + self.lease_seconds
      if isinstance(last, (Rating, Scores)):
        table = "ratings" if isinstance(last, Rating) else "scores"
        column = "id" if isinstance(last, Rating) else "judgement"
        c.execute(f"UPDATE {table} SET retracted_at = ? WHERE {column} = ?", (now, last.id))
        c.execute("UPDATE samples SET claimed_by = NULL, claimed_until = NULL "
                  "WHERE claimed_by = ?", (labeler,))
        c.execute("UPDATE samples SET claimed_by = ?, claimed_until = ? WHERE id = ? AND "
                  "(claimed_until IS NULL OR claimed_until <= ?)",
                  (labeler, until, last.sample_id, now))
      else:
        c.execute("UPDATE comparisons SET retracted_at = ? WHERE id = ?", (now, last.id))
        c.execute("UPDATE pairs SET claimed_by = NULL, claimed_until = NULL "
                  "WHERE claimed_by = ?", (labeler,))
        c.execute("UPDATE pairs SET claimed_by = ?, claimed_until = ? WHERE sample_a = ? AND "
                  "sample_b = ? AND (claimed_until IS NULL OR claimed_until <= ?)",
                  (labeler, until, min(last.sample_a, last.sample_b),
                   max(last.sample_a, last.sample_b), now))
      return dataclasses.replace(last, retracted_at=now)

  def judgements(
      self,
      *,
      labeler: str | None = None,
      kind: Literal["rating", "comparison"] | None = None,
      include_retracted: bool = False,
  ) -> list[Judgement]:
    """Ratings and comparisons, oldest first; live ones only unless `include_retracted`."""
    if kind not in (None, "rating", "comparison"):
      raise FeedbackError(f"kind: expected 'rating', 'comparison' or None, got {kind!r}")
    where = ["1"]
    params: list[Any] = []
    if labeler is not None:
      where.append("labeler = ?")
      params.append(labeler)
    if not include_retracted:
      where.append("retracted_at IS NULL")
    condition = " AND ".join(where)
    out: list[Judgement] = []
    if kind in (None, "rating"):
      out += [Rating(*r) for r in self._read(
          f"SELECT {_RATING_COLUMNS} FROM ratings WHERE {condition}", params)]
    if kind in (None, "comparison"):
      out += [Comparison(*r) for r in self._read(
          f"SELECT {_COMPARISON_COLUMNS} FROM comparisons WHERE {condition}", params)]
    return sorted(out, key=lambda j: (j.created, isinstance(j, Comparison), j.id))

  # --- the work queue ---------------------------------------------------------------------

  def next_pair(self, labeler: str) -> PairTask | None:
    """Leases to `labeler` a pair they have not judged and nobody else holds; None when done.

    A labeler holds one pair at a time: asking again returns the pair they hold (with a fresh
    lease), so reloading a page does not skip a pair. Pairs with the fewest live judgements
    come first, so several labelers cover the pool before anyone judges a pair twice.
    """
    return self._lease_next(
        labeler, "pairs", "comparisons", "pair_id", "prompt_id, sample_a, sample_b",
        lambda c, row, until: PairTask(self._prompt_row(c, row[1]), self._sample_row(c, row[2]),
                                       self._sample_row(c, row[3]), until))

  def next_sample_to_rate(self, labeler: str) -> RatingTask | None:
    """Leases to `labeler` a sample they have not rated and nobody else holds; None when done.

    Same rules as `next_pair`: one held sample per labeler, least-rated samples first.
    """
    return self._lease_next(
        labeler, "samples", "ratings", "sample_id", "prompt_id",
        lambda c, row, until: RatingTask(self._prompt_row(c, row[1]),
                                         self._sample_row(c, row[0]), until))

  def next_sample_to_score(self, labeler: str) -> RatingTask | None:
    """Leases to `labeler` a sample they have not scored on a rubric; the rules of `next_pair`."""
    return self._lease_next(
        labeler, "samples", "scores", "sample_id", "prompt_id",
        lambda c, row, until: RatingTask(self._prompt_row(c, row[1]), self._sample_row(c, row[0]), until))

  def _lease_next(
      self,
      labeler: str,
      table: str,
      judgements: str,
      task_column: str,
      columns: str,
      make_task: Callable[[sqlite3.Connection, tuple, float], Any],
  ) -> Any:
    """The one queue rule behind `next_pair` and `next_sample_to_rate`, so the two cannot drift.

    Picks from `table` the row (`id` then `columns`) that `labeler` already holds, else the one
    with the fewest live `judgements` that nobody else holds and `labeler` has not judged (the
    judgements point at it through `task_column`); moves the labeler's lease onto it and returns
    `make_task(connection, row, lease_until)`, or None when nothing is left.
    """
    _check_labeler(labeler)
    with self._write() as c:
      now = self._clock()
      row = c.execute(
          f"""SELECT t.id, {columns} FROM {table} t
              WHERE (t.claimed_by IS NULL OR t.claimed_by = :who OR t.claimed_until <= :now)
                AND NOT EXISTS (SELECT 1 FROM {judgements} j WHERE j.{task_column} = t.id
                                AND j.labeler = :who AND j.retracted_at IS NULL)
              ORDER BY CASE WHEN t.claimed_by = :who AND t.claimed_until > :now
                            THEN t.claimed_until ELSE 0 END DESC,
                       (SELECT count(*) FROM {judgements} j WHERE j.{task_column} = t.id
                        AND j.retracted_at IS NULL),
                       t.id
              LIMIT 1""", {"who": labeler, "now": now}).fetchone()
      if row is None:
        return None
      until = now + self.lease_seconds
      c.execute(f"UPDATE {table} SET claimed_by = NULL, claimed_until = NULL "
                "WHERE claimed_by = ? AND id != ?", (labeler, row[0]))
      c.execute(f"UPDATE {table} SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                (labeler, until, row[0]))
      return make_task(c, row, until)

  def progress(self, labeler: str | None = None) -> Progress:
    """Counts for a progress bar (see `Progress`)."""
    who = "" if labeler is None else "AND labeler = :who"
    with self._lock:
      c = self._connection()
      c.execute("BEGIN")  # one snapshot for all counts
      try:
        def count(sql: str) -> int:
          return c.execute(sql, {"who": labeler, "now": self._clock()}).fetchone()[0]

        pairs = count("SELECT count(*) FROM pairs")
        pairs_judged = count("SELECT count(*) FROM pairs p WHERE EXISTS (SELECT 1 FROM "
                             f"comparisons WHERE pair_id = p.id AND retracted_at IS NULL {who})")
        samples = count("SELECT count(*) FROM samples")
        samples_rated = count("SELECT count(*) FROM samples s WHERE EXISTS (SELECT 1 FROM "
                              f"ratings WHERE sample_id = s.id AND retracted_at IS NULL {who})")
        samples_scored = count("SELECT count(*) FROM samples s WHERE EXISTS (SELECT 1 FROM "
                               f"scores WHERE sample_id = s.id AND retracted_at IS NULL {who})")
        return Progress(
            pairs_judged=pairs_judged,
            pairs_queued=pairs - pairs_judged,
            pairs_claimed=count("SELECT count(*) FROM pairs WHERE claimed_until > :now"),
            comparisons=count(f"SELECT count(*) FROM comparisons WHERE retracted_at IS NULL {who}"),
            samples_rated=samples_rated,
            samples_queued=samples - samples_rated,
            samples_claimed=count("SELECT count(*) FROM samples WHERE claimed_until > :now"),
            ratings=count(f"SELECT count(*) FROM ratings WHERE retracted_at IS NULL {who}"),
            samples_scored=samples_scored,
            samples_to_score=samples - samples_scored,
        )
      finally:
        c.execute("COMMIT")

  # --- datasets in and out ----------------------------------------------------------------

  def import_dataset(self, dataset: Any, *, labeler: str, scale: int = 5, model: str = "imported") -> tuple[int, int]:
    """Stores a preference or rating dataset (`data.records.Dataset`: existing human labels, in
    TRL's formats) as `labeler`'s judgements, in one transaction; returns (judgements added,
    judgements it already held). Each row's prompt and responses become samples of `model`; a
    preference row becomes the comparison "chosen over rejected", a rating row a rating in
    1..`scale`. Conversations are kept as their messages (JSON text, marked in the sample's meta),
    so an export gives them back as they came. Importing the same file again adds nothing."""
    _check_labeler(labeler)
    if dataset.kind not in ("preference", "rating"):
      raise FeedbackError(f"{dataset.source}: the store takes preference or rating rows, not {dataset.kind}")
    meta = json.dumps({"conversational": True}) if dataset.conversational else "{}"
    text = (lambda v: json.dumps(v, ensure_ascii=False)) if dataset.conversational else (lambda v: v)
    for i, row in enumerate(dataset.rows):
      for name in ("prompt", "chosen", "rejected", "completion"):
        if name in row:
          _check_text(text(row[name]), f"{dataset.source}: row {i}: field {name!r}")
      if dataset.kind == "rating" and not (float(row["rating"]).is_integer() and 1 <= row["rating"] <= scale):
        raise FeedbackError(f"{dataset.source}: row {i}: field 'rating': expected an integer in 1..{scale} "
                            f"(--scale), got {row['rating']}")
    added = held = 0
    with self._write() as c:
      for row in dataset.rows:
        prompt_id = self._insert_prompt(c, text(row["prompt"]), dataset.source)
        if dataset.kind == "preference":
          chosen, _ = self._insert_sample(c, prompt_id, text(row["chosen"]), model, meta)
          rejected, _ = self._insert_sample(c, prompt_id, text(row["rejected"]), model, meta)
          if chosen == rejected:
            raise FeedbackError(f"{dataset.source}: a row's chosen and rejected responses are the same text")
          done = c.execute("SELECT 1 FROM comparisons WHERE labeler = ? AND retracted_at IS NULL AND "
                           "sample_a IN (?, ?) AND sample_b IN (?, ?)", (labeler, chosen, rejected, chosen,
                                                                         rejected)).fetchone()
          if not done:
            self._insert_comparison(c, chosen, rejected, "a", labeler)
        else:
          sample, _ = self._insert_sample(c, prompt_id, text(row["completion"]), model, meta)
          done = c.execute("SELECT 1 FROM ratings WHERE sample_id = ? AND labeler = ? AND retracted_at IS NULL",
                           (sample, labeler)).fetchone()
          if not done:
            c.execute("INSERT INTO ratings (sample_id, labeler, value, scale, created) VALUES (?, ?, ?, ?, ?)",
                      (sample, labeler, int(row["rating"]), scale, self._clock()))
        added, held = added + (not done), held + bool(done)
    return added, held

  def export_dataset(self, kind: str, *, conversational: bool | None = None,
                     criterion: str = "") -> list[dict[str, Any]]:
    """The live judgements in TRL's columns: "preference" -> {"prompt", "chosen", "rejected"},
    "rating" -> {"prompt", "completion", "rating"} (with `criterion`: the rubric scores of that
    criterion). Imported conversations come back as messages; `conversational=True` also turns
    plain text into a user turn and an assistant turn, False keeps every text as it is stored."""
    if kind == "preference":
      rows = [(r["prompt"], {"chosen": r["chosen"], "rejected": r["rejected"]}, r["chosen_id"])
              for r in self.export_preferences()]
    elif kind == "rating" and criterion:
      rows = [(r["prompt"], {"completion": r["response"], "rating": r["scores"][criterion]}, r["sample_id"])
              for r in self.export_scores() if criterion in r["scores"]]
    elif kind == "rating":
      rows = [(r["prompt"], {"completion": r["response"], "rating": r["rating"]}, r["sample_id"])
              for r in self.export_ratings()]
    else:
      raise FeedbackError(f"kind: expected 'preference' or 'rating', got {kind!r}")
    stored_as_messages = {sample_id for sample_id, meta in self._read("SELECT id, meta FROM samples")
                          if json.loads(meta or "{}").get("conversational")}
    out = []
    for prompt, fields, sample_id in rows:
      messages = sample_id in stored_as_messages
      if messages and conversational is not False:
        row = {"prompt": json.loads(prompt), **{k: json.loads(v) if k != "rating" else v for k, v in fields.items()}}
      elif conversational and not messages:
        row = {"prompt": [{"role": "user", "content": prompt}],
               **{k: [{"role": "assistant", "content": v}] if k != "rating" else v for k, v in fields.items()}}
      else:
        row = {"prompt": prompt, **fields}
      out.append(row)
    return out

  # --- exports ----------------------------------------------------------------------------

  def export_preferences(self, path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One record per live comparison with a winner, in the order they were made.

        {"prompt", "chosen", "rejected", "labeler", "chosen_model", "rejected_model",
         "prompt_id", "chosen_id", "rejected_id", "comparison_id", "created"}

    Ties and skips are left out (`export_ties` has the ties). With `path`, the records are also
    written there as JSON lines, atomically.
    """
    rows = self._read(
        """SELECT p.text, w.text, l.text, c.labeler, w.model, l.model, p.id, w.id, l.id, c.id,
                  c.created
           FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
           JOIN samples w ON w.id = CASE c.outcome WHEN 'a' THEN c.sample_a ELSE c.sample_b END
           JOIN samples l ON l.id = CASE c.outcome WHEN 'a' THEN c.sample_b ELSE c.sample_a END
           WHERE c.retracted_at IS NULL AND c.outcome IN ('a', 'b') ORDER BY c.id""")
    keys = ("prompt", "chosen", "rejected", "labeler", "chosen_model", "rejected_model",
            "prompt_id", "chosen_id", "rejected_id", "comparison_id", "created")
    return _export(path, [dict(zip(keys, row)) for row in rows])

  def export_ties(self, path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One record per live tie: {"prompt", "response_a", "response_b", "labeler", "model_a",
    "model_b", "prompt_id", "sample_a", "sample_b", "comparison_id", "created"}."""
    rows = self._read(
        """SELECT p.text, a.text, b.text, c.labeler, a.model, b.model, p.id, a.id, b.id, c.id,
                  c.created
           FROM comparisons c JOIN prompts p ON p.id = c.prompt_id
           JOIN samples a ON a.id = c.sample_a JOIN samples b ON b.id = c.sample_b
           WHERE c.retracted_at IS NULL AND c.outcome = 'tie' ORDER BY c.id""")
    keys = ("prompt", "response_a", "response_b", "labeler", "model_a", "model_b", "prompt_id",
            "sample_a", "sample_b", "comparison_id", "created")
    return _export(path, [dict(zip(keys, row)) for row in rows])

  def export_scores(self, path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One record per live rubric judgement, in the order they were made:

        {"prompt", "response", "scores": {criterion: value}, "scales": {criterion: scale},
         "labeler", "model", "prompt_id", "sample_id", "judgement_id", "created"}
    """
    with self._lock:
      judgements = self._scores(self._connection(), "retracted_at IS NULL", ())
    samples = {row[0]: row[1:] for row in self._read(
        "SELECT s.id, p.text, s.text, s.model, p.id FROM samples s JOIN prompts p ON p.id = s.prompt_id")}
    records = []
    for j in sorted(judgements, key=lambda j: j.id):
      prompt, response, model, prompt_id = samples[j.sample_id]
      records.append({"prompt": prompt, "response": response, "scores": j.values, "scales": j.scales,
                      "labeler": j.labeler, "model": model, "prompt_id": prompt_id, "sample_id": j.sample_id,
                      "judgement_id": j.id, "created": j.created})
    return _export(path, records)

  def export_ratings(self, path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One record per live rating, in the order they were made:

        {"prompt", "response", "rating", "scale", "labeler", "model", "prompt_id", "sample_id",
         "rating_id", "created"}
    """
    rows = self._read(
        """SELECT p.text, s.text, r.value, r.scale, r.labeler, s.model, p.id, s.id, r.id,
                  r.created
           FROM ratings r JOIN samples s ON s.id = r.sample_id JOIN prompts p ON p.id = s.prompt_id
           WHERE r.retracted_at IS NULL ORDER BY r.id""")
    keys = ("prompt", "response", "rating", "scale", "labeler", "model", "prompt_id", "sample_id",
            "rating_id", "created")
    return _export(path, [dict(zip(keys, row)) for row in rows])


_RATING_COLUMNS = "id, sample_id, value, scale, labeler, created, retracted_at"
_COMPARISON_COLUMNS = "id, prompt_id, sample_a, sample_b, outcome, labeler, created, retracted_at"


def _export(path: str | os.PathLike[str] | None,
            records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  if path is not None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    files.atomic_write_bytes(Path(path), text.encode("utf-8"))
  return records
