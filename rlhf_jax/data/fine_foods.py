"""Real human labels: Amazon fine-food reviews rated great/other (`small_fine_foods`).

The R package modeldata ships a sample of the Amazon fine-food reviews (McAuley & Leskovec 2013)
whose star ratings were binarized to "great" (5 stars) or "other"; Debian packages it as
`r-cran-modeldata`, so it can be had without a dataset hub. `prepare()` downloads the package
(`apt-get download` + `dpkg -x`, nothing is installed), reads the objects `training_data` and
`testing_data` from its R lazy-load database, cleans the review text (`clean_review`) and writes

    cache_dir()/fine_foods/v1/train.jsonl   one {"product", "text", "great"} per line
    cache_dir()/fine_foods/v1/test.jsonl
    cache_dir()/fine_foods/v1/meta.json     source package and version, counts per split

through `files.atomic_directory`, so a second call returns at once and a killed one leaves
nothing half-written.

What the data holds (modeldata 1.1.0, checked): train 4,000 reviews (2,600 great), test 1,000
reviews (658 great); every review is of a different product (4,000 and 1,000 distinct ASINs, none
shared between the splits). So no product has two reviews, and the labels are per-text ratings:
`ratings(split)` exports them in the feedback store's ratings shape, and `preference_pairs`
builds great-vs-other pairs across products (see there). `rlhf_jax.eval.reward_metrics.roc_auc` measures
how well a scorer separates great from other.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import json
import lzma
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from rlhf_jax import files
from rlhf_jax.data import corpora

FORMAT_VERSION = 1  # bump when the cleaning or the record layout changes
PACKAGE = "r-cran-modeldata"
RDB_PREFIX = "usr/lib/R/site-library/modeldata/data/Rdata"
OBJECTS = {"train": "training_data", "test": "testing_data"}  # the only list of split names
META_FILE = "meta.json"
LABELER = "amazon-human"  # the labeler name stored with these judgements
RATING_SCALE = 2  # rating 1 = other, 2 = great


@dataclasses.dataclass(frozen=True)
class Review:
  product: str  # Amazon ASIN, e.g. "B000J0LSBG"
  text: str  # cleaned by `clean_review`
  great: bool  # the reviewer gave 5 stars


def fine_foods_dir(cache: Path | None = None) -> Path:
  return (cache or files.cache_dir()) / "fine_foods" / f"v{FORMAT_VERSION}"


# ---------------------------------------------------------------------------------------------
# Reading the R lazy-load database.


def _decompress_entry(entry: bytes, compressed: int, where: str) -> bytes:
  """One `.rdb` entry: a 4-byte big-endian length, then the compressed serialized object.

  R's `lazyLoadDBinsertValue` writes compression type 1 as plain zlib; types 2 and 3 add a
  byte naming the method of that entry (R's serialize.c, R_decompress2/3): '0' stored, '1' zlib,
  '2' bzip2, 'Z' raw LZMA2 (xz without its container). modeldata uses type 3.
  """
  size = int.from_bytes(entry[:4], "big")
  if compressed == 1:
    data = zlib.decompress(entry[4:])
  elif compressed in (2, 3):
    method, body = entry[4:5], entry[5:]
    if method == b"0":
      data = body
    elif method == b"1":
      data = zlib.decompress(body)
    elif method == b"2":
      import bz2

      data = bz2.decompress(body)
    elif method == b"Z":
      # The decoder needs a dictionary at least as large as the encoder's: preset 9 (64 MiB)
      # covers every preset R can use.
      data = lzma.decompress(body, format=lzma.FORMAT_RAW,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}])
    else:
      raise RuntimeError(f"{where}: unknown compression method {method!r}; expected one of "
                         "b'0', b'1', b'2', b'Z'")
  else:
    raise RuntimeError(f"{where}: compression type {compressed}; expected 1, 2 or 3")
  if len(data) != size:
    raise RuntimeError(f"{where}: decompressed {len(data)} bytes, the entry says {size}")
  return data


def read_r_objects(prefix: Path, names: Sequence[str]) -> dict[str, Any]:
  """Reads the named objects of an R lazy-load database (`prefix.rdb` + `prefix.rdx`).

  `corpora.read_r_lazyload` reads zlib databases only (compression type 1) and every object in
  them; modeldata's database is xz-compressed (type 3) and holds 41 data sets, of which two are
  needed. The index and the parsing follow that function: the `.rdx` is an RDS list mapping
  each name to (offset, length) in the `.rdb`, and each entry parses like an RDS file.
  """
  import warnings

  import rdata

  index = rdata.read_rds(prefix.with_suffix(".rdx"))
  compressed = int(np.asarray(index["compressed"]).ravel()[0])
  variables = {str(k): v for k, v in index["variables"].items()}
  missing = [n for n in names if n not in variables]
  if missing:
    raise RuntimeError(f"{prefix}.rdb: no object(s) {missing}; it holds {sorted(variables)}")
  blob = prefix.with_suffix(".rdb").read_bytes()
  objects = {}
  for name in names:
    offset, length = (int(x) for x in variables[name])
    raw = _decompress_entry(blob[offset:offset + length], compressed, f"{prefix}.rdb[{name}]")
    parsed = rdata.parser.parse_data(raw, extension=".rds")
    with warnings.catch_warnings():
      # tibbles have no rdata constructor; rdata says so and falls back to a data.frame.
      warnings.filterwarnings("ignore", message="Missing constructor for R class")
      objects[name] = rdata.conversion.convert(parsed)
  return objects


# ---------------------------------------------------------------------------------------------
# Cleaning and preparing.

_VIDEO_NOTE = re.compile(r'<span class="tiny">.*?</span>', re.DOTALL)
_LINE_BREAK = re.compile(r"<br\s*/?>|<p>", re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")


def clean_review(text: str) -> str:
  """The review as a reader saw it, with as little change as possible.

  In order: Amazon's video-length note (`<span class="tiny"> Length:: 0:36 Mins ...</span>`,
  not the reviewer's words) is dropped; `<br />` and `<p>` become newlines (two `<br />` in a row
  are the paragraph breaks); any other tag is removed and its text kept (`<a href=...>Name</a>`
  -> `Name`); then HTML entities are decoded (`&quot;` -> `"`, `&eacute;` -> `é`), after the
  tags so that an escaped `&lt;` cannot become a tag; trailing spaces of each line and leading or
  trailing blank space of the review are stripped. Spacing inside lines (reviewers often put
  two spaces after a full stop) and case are kept.
  """
  text = _VIDEO_NOTE.sub("", text)
  text = _LINE_BREAK.sub("\n", text)
  text = _TAG.sub("", text)
  text = html.unescape(text)
  text = "\n".join(line.rstrip() for line in text.split("\n"))
  return text.strip()


def _frame_reviews(frame: Any, where: str) -> list[Review]:
  """Reviews from a data frame with columns product, review and score (great/other)."""
  columns = list(frame.columns)
  for column in ("product", "review", "score"):
    if column not in columns:
      raise RuntimeError(f"{where}: no column {column!r}; columns are {columns}")
  levels = {str(s) for s in frame["score"]}
  if not levels <= {"great", "other"}:
    raise RuntimeError(f"{where}: score levels {sorted(levels)}; expected great and other")
  return [Review(str(p), clean_review(str(r)), str(s) == "great")
          for p, r, s in zip(frame["product"], frame["review"], frame["score"])]


def _write_reviews(path: Path, reviews: Iterable[Review]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in reviews:
      record = {"product": r.product, "text": r.text, "great": r.great}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def prepare(*, cache: Path | None = None) -> Path:
  """Downloads and prepares both splits once; returns their directory (see module docstring)."""
  final = fine_foods_dir(cache)
  if (final / META_FILE).exists():
    return final
  fetch = corpora.apt_download(
      [PACKAGE], "or use simulated labels (rlhf_jax.feedback.labelers) instead")
  with files.atomic_directory(final) as building:
    raw = building / "raw"
    raw.mkdir()
    source = fetch(raw)
    frames = read_r_objects(raw / "root" / RDB_PREFIX, list(OBJECTS.values()))
    splits = {}
    for split, obj in OBJECTS.items():
      reviews = _frame_reviews(frames[obj], f"{source} {obj}")
      if not reviews:
        raise RuntimeError(f"{source}: {obj} has no reviews")
      _write_reviews(building / f"{split}.jsonl", reviews)
      splits[split] = {"object": obj, "n_reviews": len(reviews),
                       "n_great": sum(r.great for r in reviews),
                       "n_products": len({r.product for r in reviews})}
    shutil.rmtree(raw)
    meta = {"name": "fine_foods", "source": source, "format_version": FORMAT_VERSION,
            "labeler": LABELER, "splits": splits}
    (building / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  return final


def meta(*, cache: Path | None = None) -> dict[str, Any]:
  """meta.json of the prepared data (preparing it first if needed)."""
  return json.loads((prepare(cache=cache) / META_FILE).read_text())


def _check_split(split: str) -> str:
  if split not in OBJECTS:
    raise ValueError(f"split: expected one of {', '.join(OBJECTS)}, got {split!r}")
  return split


def load(split: str, *, cache: Path | None = None) -> list[Review]:
  """The reviews of `split` ("train" or "test"), in the package's order."""
  _check_split(split)
  path = prepare(cache=cache) / f"{split}.jsonl"
  reviews = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      try:
        record = json.loads(line)
        reviews.append(Review(str(record["product"]), str(record["text"]), bool(record["great"])))
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{lineno}: expected an object with product, text and great "
                         f"({e!r}); delete {path.parent} to prepare it again") from None
  return reviews


# ---------------------------------------------------------------------------------------------
# Exports in the feedback store's record shapes.


def ratings(split: str, *, cache: Path | None = None) -> list[dict[str, Any]]:
  """One rating record per review: rating 2 = great, 1 = other, on a 2-point scale.

  The shape of a feedback-store ratings export (prompt, response, rating, scale, labeler); the
  prompt is empty because the reviews answer no prompt.
  """
  return [{"prompt": "", "response": r.text, "rating": 2 if r.great else 1,
           "scale": RATING_SCALE, "labeler": LABELER} for r in load(split, cache=cache)]


def pair_reviews(
    reviews: Sequence[Review],
    *,
    seed: int,
    same_product: bool = False,
    max_pairs_per_product: int | None = None,
    max_pairs: int | None = None,
) -> list[dict[str, Any]]:
  """Great-vs-other preference pairs: {"prompt", "chosen", "rejected", "labeler", "product",
  "chosen_product", "rejected_product"}, chosen = the great review.

  Pairs are disjoint: within a group the great and the other reviews are shuffled and zipped,
  so a review is in at most one pair, min(n_great, n_other) pairs per group. Disjoint pairs are
  independent samples, and splitting pairs later never puts one text on both sides of a split.
  A group is one product when `same_product` (then `product` is that product and
  `max_pairs_per_product` caps each group), or the whole list otherwise (then `product` is None:
  the two reviews are of different products, and the pair says only that one reviewer was
  happier than the other). The pairs are shuffled at the end and cut to `max_pairs`.
  One `np.random.default_rng(seed)` drives every shuffle, over products in sorted order, so the
  pairs depend only on the reviews and the seed.
  """
  for field, value in (("max_pairs_per_product", max_pairs_per_product),
                       ("max_pairs", max_pairs)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ValueError(f"{field}: expected an integer >= 1 or None, got {value!r}")
  if max_pairs_per_product is not None and not same_product:
    raise ValueError("max_pairs_per_product: only applies with same_product=True; "
                     "use max_pairs to cap cross-product pairs")
  groups: dict[str | None, list[Review]] = collections.defaultdict(list)
  for r in reviews:
    groups[r.product if same_product else None].append(r)
  rng = np.random.default_rng(seed)
  pairs = []
  for product in sorted(groups, key=lambda p: p or ""):
    great = [r for r in groups[product] if r.great]
    other = [r for r in groups[product] if not r.great]
    great = [great[i] for i in rng.permutation(len(great))]
    other = [other[i] for i in rng.permutation(len(other))]
    zipped = list(zip(great, other))[:max_pairs_per_product]
    pairs.extend({"prompt": "", "chosen": g.text, "rejected": o.text, "labeler": LABELER,
                  "product": product, "chosen_product": g.product, "rejected_product": o.product}
                 for g, o in zipped)
  if not pairs:
    n_products = len({r.product for r in reviews})
    where = "no product has" if same_product else "the reviews do not have"
    raise ValueError(
        f"same_product={same_product}: {where} both a great and an other review ({len(reviews)} "
        f"reviews of {n_products} products)"
        + ("; every product of small_fine_foods has one review: use same_product=False"
           if same_product else ""))
  return [pairs[i] for i in rng.permutation(len(pairs))][:max_pairs]


def preference_pairs(
    split: str,
    *,
    seed: int,
    same_product: bool = False,
    max_pairs_per_product: int | None = None,
    max_pairs: int | None = None,
    cache: Path | None = None,
) -> list[dict[str, Any]]:
  """Great-vs-other pairs of `split`'s reviews, deterministic given `seed` (see `pair_reviews`).

  Same-product pairs would hold the item fixed and leave only the reviewer's taste, but every
  product in this data has exactly one review, so `same_product=True` raises; the default pairs
  across products: 1,400 pairs from train and 342 from test.
  """
  return pair_reviews(load(split, cache=cache), seed=seed, same_product=same_product,
                      max_pairs_per_product=max_pairs_per_product, max_pairs=max_pairs)
