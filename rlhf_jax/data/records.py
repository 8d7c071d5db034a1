"""Datasets in the formats people already have: TRL's dataset types, from files, TFDS or the Hub.

Each kind is a set of columns, plain (strings) or conversational (lists of `{"role", "content"}`
messages, rendered by the model's chat template), as TRL documents them, so files move between the
two projects:

  kind                  columns                        conversational form
  language_modeling     text                           messages
  prompt                prompt                         prompt: messages
  prompt_completion     prompt, completion             both messages
  preference            [prompt,] chosen, rejected     all messages; without prompt, chosen and
                                                       rejected share it as their common start
  unpaired_preference   prompt, completion, label      (KTO: label true = desirable)
  rating                prompt, completion, rating     (a number; rlhf_jax's, not TRL's)

`load(source)` reads `PATH.jsonl` (or `.json` lines), `PATH.parquet`, `PATH.csv`, `PATH.txt` (a
prompt a line), a packaged dataset (`wordnet-qa-v1[:train|test]`: `data.wordnet_qa`),
`tfds:NAME[/CONFIG][:SPLIT]` (array_record data sources, no TensorFlow) or
`hf:ORG/NAME[/CONFIG][:SPLIT]` (the `datasets` library, only when named: nothing downloads by
default). The kind is inferred from the columns (`kind=` forces one), and `fields` maps our column
names to the file's (`("prompt=question", "completion=answer")`). Every row is checked before
anything trains; a row that does not fit is a `UserError` naming the source, the row and the field.
`write(rows, path)` writes rows back in any of the file formats, so an import then an export is
the input again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from rlhf_jax import files
from rlhf_jax.data import corpora, wordnet_qa
from rlhf_jax.errors import UserError

COLUMNS: dict[str, tuple[str, ...]] = {
    "language_modeling": ("text",),
    "prompt": ("prompt",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"),
    "rating": ("prompt", "completion", "rating"),
}
KINDS = tuple(COLUMNS)
TEXT_COLUMNS = ("text", "messages", "prompt", "completion", "chosen", "rejected")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """A dataset in one of `KINDS`: `data.path=FILE_OR_DATASET`, with `data.format=` and `data.fields=`."""
  path: str = ""  # PATH.jsonl / .parquet / .csv, tfds:NAME[/CONFIG][:SPLIT], hf:ORG/NAME[/CONFIG][:SPLIT]
  format: str = ""  # one of KINDS; "" infers it from the columns
  fields: tuple[str, ...] = ()  # "OURS=THEIRS" column renames, e.g. "prompt=question"
  test_fraction: float = 0.05  # rows held out for evaluation, chosen by a stable hash of the prompt
  max_rows: int = 0  # read at most this many rows (0: all)

  def __post_init__(self):
    if self.format and self.format not in KINDS:
      raise ValueError(f"data.format must be one of {KINDS} or empty (infer it), got {self.format!r}")
    parse_fields(self.fields)
    if not 0 <= self.test_fraction < 1:
      raise ValueError(f"data.test_fraction must be in [0, 1), got {self.test_fraction}")
    if self.max_rows < 0:
      raise ValueError(f"data.max_rows must be >= 0, got {self.max_rows}")


@dataclasses.dataclass(frozen=True)
class Dataset:
  kind: str  # one of KINDS
  conversational: bool  # text columns are lists of messages
  rows: list[dict]  # our column names; a preference row always has its prompt
  source: str

  def __len__(self) -> int:
    return len(self.rows)


def parse_fields(fields: Sequence[str]) -> dict[str, str]:
  """("prompt=question", ...) -> {"question": "prompt", ...}: the file's column -> ours."""
  out = {}
  for item in fields:
    ours, sep, theirs = item.partition("=")
    if not sep or not ours or not theirs:
      raise ValueError(f"data.fields: expected OURS=THEIRS (e.g. 'prompt=question'), got {item!r}")
    out[theirs] = ours
  return out


def load(source: str | Path, *, kind: str = "", fields: Sequence[str] = (), max_rows: int = 0,
         tfds_data_dir: str | Path | None = None) -> Dataset:
  """The rows of `source` as a checked `Dataset` (module docstring)."""
  source = str(source)
  rename = parse_fields(fields)
  raw = []
  for row in read_rows(source, tfds_data_dir=tfds_data_dir):
    raw.append({rename.get(k, k): v for k, v in row.items()})
    if max_rows and len(raw) >= max_rows:
      break
  if not raw:
    raise UserError(f"{source}: no rows")
  kind = kind or infer_kind(raw[0], source)
  if kind not in KINDS:
    raise UserError(f"{source}: unknown format {kind!r}; expected one of {KINDS}")
  conversational = _is_conversational(raw[0])
  rows = [_checked(row, i, kind, conversational, source) for i, row in enumerate(raw)]
  return Dataset(kind=kind, conversational=conversational, rows=rows, source=source)


def from_config(config: DataConfig) -> Dataset:
  if not config.path:
    raise UserError("data.path is empty: name a dataset file (.jsonl, .parquet, .csv), tfds:NAME or hf:ORG/NAME")
  return load(config.path, kind=config.format, fields=config.fields, max_rows=config.max_rows)


def infer_kind(row: dict, source: str = "") -> str:
  """The kind whose columns `row` has (the one with the most columns, so a preference row is not
  read as a prompt row); TRL's conversational language modeling column is `messages`."""
  columns = set(row)
  if "messages" in columns:
    return "language_modeling"
  if {"chosen", "rejected"} <= columns:
    return "preference"
  for kind in ("rating", "unpaired_preference", "prompt_completion", "prompt", "language_modeling"):
    if set(COLUMNS[kind]) <= columns:
      return kind
  raise UserError(f"{source}: columns {sorted(columns)} fit no format: expected one of "
                  + "; ".join(f"{k} ({', '.join(c)})" for k, c in COLUMNS.items())
                  + ". Rename columns with data.fields=OURS=THEIRS or name the format with data.format=")


def _is_conversational(row: dict) -> bool:
  """Whether the first text column of `row` is a list of messages (TRL's conversational form)."""
  name = next(c for c in ("messages", "chosen", "completion", "prompt", "text") if c in row)
  return isinstance(row[name], list)


def _text_columns(kind: str, conversational: bool) -> tuple[str, ...]:
  if kind == "language_modeling":
    return ("messages",) if conversational else ("text",)
  return tuple(c for c in COLUMNS[kind] if c in TEXT_COLUMNS)


def _checked(row: dict, i: int, kind: str, conversational: bool, source: str) -> dict:
  where = f"{source}: row {i}"
  out = dict(row)
  if kind == "preference" and "prompt" not in out:
    for name in ("chosen", "rejected"):
      _check_text(out.get(name), conversational, f"{where}: field {name!r}")
    out["prompt"], out["chosen"], out["rejected"] = split_implicit_prompt(out["chosen"], out["rejected"])
  for name in _text_columns(kind, conversational):
    if name not in out:
      raise UserError(f"{where}: no field {name!r} (a {kind} row has {', '.join(_text_columns(kind, conversational))})")
    _check_text(out[name], conversational, f"{where}: field {name!r}")
  if kind == "unpaired_preference":
    label = out.get("label")
    if isinstance(label, str) and label.lower() in ("true", "false"):  # CSV
      label = label.lower() == "true"
    if not isinstance(label, bool) and label not in (0, 1):
      raise UserError(f"{where}: field 'label': expected true or false, got {label!r}")
    out["label"] = bool(label)
  if kind == "rating":
    try:
      rating = float(out.get("rating"))
    except (TypeError, ValueError):
      rating = math.nan
    if not math.isfinite(rating):
      raise UserError(f"{where}: field 'rating': expected a number, got {out.get('rating')!r}")
    out["rating"] = rating
  return out


def _check_text(value: Any, conversational: bool, where: str) -> None:
  if not conversational:
    if not isinstance(value, str):
      raise UserError(f"{where}: expected a string (the dataset is plain text), got {type(value).__name__}")
    return
  if not isinstance(value, list) or not value:
    raise UserError(f"{where}: expected a non-empty list of {{\"role\", \"content\"}} messages (the dataset is "
                    f"conversational), got {type(value).__name__}")
  for j, message in enumerate(value):
    if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
        or not isinstance(message.get("content"), str)):
      raise UserError(f"{where}: message {j}: expected {{\"role\": str, \"content\": str}}, got {message!r}")


def split_implicit_prompt(chosen, rejected):
  """(prompt, chosen, rejected) of a preference row whose prompt is the common start of both
  sides: the leading messages they share, or for text their common prefix (a space at the cut
  stays with the responses, as TRL's `extract_prompt` leaves it)."""
  n = 0
  for a, b in zip(chosen, rejected):
    if a != b:
      break
    n += 1
  if isinstance(chosen, str) and 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
    n -= 1
  return chosen[:n], chosen[n:], rejected[n:]


def as_text(dataset: Dataset, tokenizer) -> list[dict]:
  """The rows with every text column a string. A conversational dataset is rendered by the
  tokenizer's chat template as TRL renders it: the prompt with the generation prompt (where the
  assistant's turn begins), and each response as what the whole conversation adds after it."""
  if not dataset.conversational:
    return dataset.rows
  if not getattr(tokenizer, "chat_template", None):
    raise UserError(f"{dataset.source}: the dataset is conversational, but the model's tokenizer has no chat "
                    "template to render its messages with")
  out = []
  for i, row in enumerate(dataset.rows):
    text = dict(row)
    if dataset.kind == "language_modeling":
      text["text"] = tokenizer.apply_chat_template(row["messages"])
      del text["messages"]
    else:
      prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)
      text["prompt"] = prompt
      for name in ("completion", "chosen", "rejected"):
        if name in row:
          whole = tokenizer.apply_chat_template(row["prompt"] + row[name])
          if not whole.startswith(prompt):
            raise UserError(f"{dataset.source}: row {i}: field {name!r}: the chat template renders the conversation "
                            "with a different start than its prompt, so the response cannot be cut from it")
          text[name] = whole[len(prompt):]
    out.append(text)
  return out


def prompts(dataset: Dataset, tokenizer) -> list[str]:
  """The distinct prompts of any dataset with a prompt column, in order of first appearance
  (conversational ones rendered by the chat template, ending where the assistant's turn begins)."""
  if dataset.kind == "language_modeling":
    raise UserError(f"{dataset.source}: language-modeling rows have no prompts (expected a prompt column)")
  if dataset.conversational:
    if not getattr(tokenizer, "chat_template", None):
      raise UserError(f"{dataset.source}: the prompts are conversations, but the model's tokenizer has no chat "
                      "template to render them with")
    texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True) for r in dataset.rows]
  else:
    texts = [r["prompt"] for r in dataset.rows]
  return list(dict.fromkeys(texts))


def split(rows: Sequence[dict], test_fraction: float, *, key: str = "prompt") -> tuple[list[dict], list[dict]]:
  """(train, held-out) rows, a row's side chosen by a stable hash of its `key` column (its prompt:
  every row of a prompt lands on the same side, so no held-out prompt is trained on). A text key
  is hashed as `prompts.split_prompts` hashes a prompt, so both put a prompt on the same side."""
  def name(row):
    value = row.get(key, row)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
  test = [corpora.is_validation(name(r), test_fraction) for r in rows]
  return [r for r, t in zip(rows, test) if not t], [r for r, t in zip(rows, test) if t]


def builtin(source: str) -> tuple[Any, str] | None:
  """(rows function, split) of a packaged dataset named `NAME[:SPLIT]`, or None."""
  builtins = {wordnet_qa.VERSION: wordnet_qa.rows}
  name, _, split_name = source.partition(":")
  return (builtins[name], split_name or "train") if name in builtins else None


def is_file(source: str) -> bool:
  """Whether `source` names a file on this machine (not a packaged, tfds: or hf: dataset)."""
  return builtin(source) is None and not source.startswith(("tfds:", "hf:"))


def read_rows(source: str, *, tfds_data_dir: str | Path | None = None) -> Iterator[dict]:
  """The raw rows of `source`, as dicts of the file's columns."""
  if (packaged := builtin(source)) is not None:
    rows_fn, split_name = packaged
    yield from rows_fn(split_name)
  elif source.startswith("tfds:"):
    yield from _tfds_rows(source[5:], tfds_data_dir)
  elif source.startswith("hf:"):
    yield from _hf_rows(source[3:])
  else:  # is_file(source)
    path = Path(source)
    if path.suffix not in FILE_SUFFIXES:
      raise UserError(f"{source}: expected a {', '.join(FILE_SUFFIXES)} file, tfds:NAME, hf:ORG/NAME or "
                      "wordnet-qa-v1[:SPLIT]")
    if not path.is_file():
      raise FileNotFoundError(f"{source}: no such file")
    yield from _FILE_READERS[path.suffix](path)


def _jsonl_rows(path: Path) -> Iterator[dict]:
  with path.open(encoding="utf-8") as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {i + 1}: not JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise UserError(f"{path}: line {i + 1}: expected a JSON object, got {type(row).__name__}")
      yield row


def _parquet_rows(path: Path) -> Iterator[dict]:
  import pyarrow.parquet as pq
  yield from pq.read_table(path).to_pylist()


def _csv_rows(path: Path) -> Iterator[dict]:
  with path.open(encoding="utf-8", newline="") as f:
    for row in csv.DictReader(f):
      # A conversational column in CSV is its JSON.
      yield {k: json.loads(v) if v.startswith("[{") else v for k, v in row.items()}


def _txt_rows(path: Path) -> Iterator[dict]:
  with path.open(encoding="utf-8") as f:
    for line in f:
      if line.strip():
        yield {"prompt": line.rstrip("\n")}


_FILE_READERS = {".jsonl": _jsonl_rows, ".json": _jsonl_rows, ".parquet": _parquet_rows, ".csv": _csv_rows,
                 ".txt": _txt_rows}


def _decoded(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if hasattr(value, "tolist"):  # numpy scalars and arrays from TFDS
    return _decoded(value.tolist())
  if isinstance(value, list):
    return [_decoded(v) for v in value]
  if isinstance(value, dict):
    return {k: _decoded(v) for k, v in value.items()}
  return value


def _tfds_rows(spec: str, data_dir: str | Path | None) -> Iterator[dict]:
  import tensorflow_datasets as tfds
  name, split, _ = corpora.parse_tfds_spec(spec)
  for record in tfds.data_source(name, split=split, data_dir=data_dir):
    yield {k: _decoded(v) for k, v in record.items()}


def _hf_rows(spec: str) -> Iterator[dict]:
  """`ORG/NAME[/CONFIG][:SPLIT]` through `datasets.load_dataset`; a local folder of data files
  (`hf:PATH[:SPLIT]`) loads the same way."""
  rest, _, split = spec.partition(":")
  parts = rest.split("/")
  name, config = ("/".join(parts[:2]), parts[2] if len(parts) > 2 else None)
  if Path(rest).is_dir():
    name, config = rest, None
  try:
    import datasets
  except ModuleNotFoundError:
    raise UserError(f"hf:{spec}: reading Hugging Face datasets needs the `datasets` package "
                    "(pip install datasets)") from None
  try:
    dataset = datasets.load_dataset(name, config, split=split or "train")
  except Exception as e:  # no network, an unknown dataset or split: all end the same way
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"hf:{spec}: cannot load it ({reason}). Without a network, export it to a file elsewhere "
                    "(dataset.to_json('data.jsonl')) and name the file instead") from None
  yield from dataset


def write(rows: Iterable[dict], path: str | Path) -> int:
  """Writes `rows` to `path` (.jsonl, .parquet or .csv, atomically); returns how many."""
  path, rows = Path(path), list(rows)
  if path.suffix in (".jsonl", ".json"):
    files.atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
  elif path.suffix == ".parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    files.atomic_write_bytes(path, buffer.getvalue().to_pybytes())
  elif path.suffix == ".csv":
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()})
    files.atomic_write_text(path, out.getvalue())
  else:
    raise UserError(f"{path}: expected a .jsonl, .parquet or .csv file to write")
  return len(rows)
