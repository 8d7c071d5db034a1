"""Tokenizers: the `Tokenizer` protocol and a SentencePiece BPE tokenizer trained on our corpora.

`SentencePieceTokenizer.train(texts, vocab_size, path)` trains a byte-fallback BPE model from an
iterator of documents (no temp text file) and saves `path` (e.g. `<workdir>/tokenizer.model`), so
a run keeps the exact vocabulary it was trained with; `SentencePieceTokenizer.load(path)` reads it.

Special ids are fixed: pad=0, unk=1, bos=2, eos=3. Pad differs from eos so that padding can be
masked out by id while EOS stays a real, trained-on token between packed documents.

Normalization is `identity` with extra whitespace kept and no dummy prefix, so that
`decode(encode(s)) == s` for any string (unseen characters go through the UTF-8 byte pieces) and
decoding a continuation on its own keeps its leading space: `decode(a + b) == decode(a) +
decode(b)` at word boundaries, which is what a sampler that decodes new tokens needs. NFKC would
fold full-width forms and ligatures, so the text scored by a reward model could differ from the
text the policy produced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence, runtime_checkable

import sentencepiece as spm

from rlhf_jax import files
from rlhf_jax.errors import UserError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# SentencePiece skips training sentences longer than this many bytes; our lines are paragraphs.
MAX_SENTENCE_BYTES = 1 << 16


@runtime_checkable
class Tokenizer(Protocol):
  """What the data pipeline, samplers and reward models need from a tokenizer."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def bos_id(self) -> int: ...

  @property
  def unk_id(self) -> int: ...

  @property
  def fingerprint(self) -> str:
    """A hash of the vocabulary: caches of token ids are keyed on it."""
    ...

  def encode(self, text: str) -> list[int]: ...

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


def _lines(texts: Iterable[str]) -> Iterator[str]:
  """Training sentences: the non-empty lines (paragraphs) of each document."""
  for text in texts:
    for line in text.split("\n"):
      if line.strip():
        yield line


class SentencePieceTokenizer:
  """A `Tokenizer` backed by a SentencePiece model."""

  def __init__(self, processor: spm.SentencePieceProcessor):
    self._sp = processor

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> SentencePieceTokenizer:
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer model {path}: no such file")
    return cls(spm.SentencePieceProcessor(model_file=str(path)))

  @classmethod
  def train(
      cls,
      texts: Iterable[str],
      vocab_size: int,
      path: str | os.PathLike[str],
      *,
      num_threads: int = 0,
      character_coverage: float = 0.9995,
      input_sentence_size: int = 2_000_000,
      seed: int = 0,
      user_defined_symbols: Sequence[str] = (),
  ) -> SentencePieceTokenizer:
    """Trains a byte-fallback BPE model on the lines of `texts` and saves it to `path`.

    `input_sentence_size` caps the number of lines SentencePiece keeps (sampled with `seed` when
    the corpus has more); 2M lines is far above the ~150k lines of a 5-10 MB corpus, so for those
    every line is used and the model depends only on the input. `character_coverage` 0.9995 keeps
    rare characters out of the vocabulary: they are encoded as UTF-8 bytes instead. Digits are
    split into single pieces. `num_threads` <= 0 uses every core. `user_defined_symbols` (e.g.
    control tokens such as `<|good|>`) get ids right after the special ids and are always one piece.
    """
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=character_coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=MAX_SENTENCE_BYTES,
        num_threads=num_threads if num_threads > 0 else os.cpu_count() or 1,
        user_defined_symbols=list(user_defined_symbols),
        minloglevel=2,  # errors only: training logs a line per merge round otherwise
    )
    files.atomic_write_bytes(Path(path), model.getvalue())
    return cls.load(path)

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes the model file, e.g. into a run's workdir."""
    files.atomic_write_bytes(Path(path), self._sp.serialized_model_proto())

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def fingerprint(self) -> str:
    return hashlib.sha256(self._sp.serialized_model_proto()).hexdigest()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
    """Encodes many texts in SentencePiece's own thread pool (num_threads <= 0: all cores)."""
    return self._sp.encode(list(texts), num_threads=num_threads if num_threads > 0 else -1)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))

  def piece_to_id(self, piece: str) -> int:
    """The id of a piece that is in the vocabulary (e.g. a user-defined control token)."""
    token_id = self._sp.piece_to_id(piece)
    if token_id == UNK_ID and piece != "<unk>":
      raise KeyError(f"{piece!r} is not a piece of this tokenizer's vocabulary (train it with "
                     f"user_defined_symbols=[{piece!r}, ...])")
    return token_id


# GPT-2's pre-tokenization pattern (tiktoken's r50k_base / gpt2) and its end-of-text token.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_END_OF_TEXT = "<|endoftext|>"
GPT2_RANKS_SOURCE = ("openai-whisper", "20250625", "whisper/assets/gpt2.tiktoken")


def gpt2_ranks_file(cache: Path | None = None) -> Path:
  """GPT-2's BPE ranks (`gpt2.tiktoken`), taken from PyPI's openai-whisper sdist and cached.

  No package ships them on their own; the whisper sdist carries them as an asset. `pip download`
  fetches the sdist (no install, no dependencies), and the file lands atomically in the cache.
  """
  final = (cache or files.cache_dir()) / "gpt2_bpe"
  path = final / "gpt2.tiktoken"
  if path.exists():
    return path
  package, version, member = GPT2_RANKS_SOURCE
  with files.atomic_directory(final) as building:
    files.run_download([sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps", "--no-binary",
                  ":all:", "-q", "-d", str(building)], building, f"{package}=={version}",
                 "check that PyPI is reachable, or pass the path of a gpt2.tiktoken ranks file")
    (sdist,) = building.glob(f"{package.replace('-', '_')}-*.tar.gz") or building.glob(f"{package}-*.tar.gz")
    with tarfile.open(sdist) as tar:
      found = [m for m in tar.getmembers() if m.name.endswith("/" + member)]
      if not found:
        raise RuntimeError(f"{sdist.name} has no {member}: the GPT-2 ranks moved; pass a ranks file path")
      (building / "gpt2.tiktoken").write_bytes(tar.extractfile(found[0]).read())
    sdist.unlink()
  return path


class TiktokenTokenizer:
  """GPT-2's byte-level BPE (via tiktoken) as a `Tokenizer`, for imported GPT-2 weights.

  Ids are GPT-2's (50,257: "Hello world" -> [15496, 995]). GPT-2 has one special token,
  `<|endoftext|>` (50256), which serves as EOS, BOS and padding: padding is always masked by the
  masks that travel with it, never found by id. Byte-level BPE never needs an unknown token, so
  `unk_id` is that id too. Text that spells `<|endoftext|>` is encoded as ordinary text.
  """

  def __init__(self, ranks_file: str | os.PathLike[str]):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    self._path = Path(ranks_file)
    if not self._path.is_file():
      raise FileNotFoundError(f"{self._path} not found: expected a tiktoken ranks file (gpt2.tiktoken)")
    ranks = load_tiktoken_bpe(str(self._path))
    self._fingerprint = hashlib.sha256(self._path.read_bytes() + GPT2_PATTERN.encode()).hexdigest()[:16]
    self._eot = len(ranks)
    self._enc = tiktoken.Encoding(name=f"gpt2:{self._path.name}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={GPT2_END_OF_TEXT: self._eot})

  @classmethod
  def gpt2(cls, cache: Path | None = None) -> TiktokenTokenizer:
    return cls(gpt2_ranks_file(cache))

  @property
  def vocab_size(self) -> int:
    return self._enc.n_vocab

  @property
  def pad_id(self) -> int:
    return self._eot

  @property
  def eos_id(self) -> int:
    return self._eot

  @property
  def bos_id(self) -> int:
    return self._eot

  @property
  def unk_id(self) -> int:
    return self._eot

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def encode(self, text: str) -> list[int]:
    return self._enc.encode_ordinary(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
    return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads if num_threads > 0 else 8)

  def decode(self, ids: Sequence[int]) -> str:
    return self._enc.decode([int(i) for i in ids])


def _token_text(value) -> str | None:
  """A special token of tokenizer_config.json: a string, or an AddedToken dict with "content"."""
  if isinstance(value, dict):
    return value.get("content")
  return value


class HFTokenizer:
  """A Hugging Face `tokenizer.json` (through the `tokenizers` library) as a `Tokenizer`, with the
  special tokens and the chat template of the folder's `tokenizer_config.json`.

  Text is encoded without the special tokens a post-processor would add (a BOS, say): prompts and
  continuations are pieces of a sequence, and a chat template writes its own BOS into the text, as
  `apply_chat_template(tokenize=True)` does. A model without a pad token pads with EOS; padding is
  always masked by the masks that travel with it, never found by id (as with GPT-2's tokenizer).
  """

  def __init__(self, folder: str | os.PathLike[str]):
    from tokenizers import Tokenizer as HFTokenizerFile
    self.folder = Path(folder)
    path = self.folder / "tokenizer.json"
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: expected a Hugging Face tokenizer (tokenizer.json)")
    self._tok = HFTokenizerFile.from_file(str(path))
    self._fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    config_path = self.folder / "tokenizer_config.json"
    self.config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    self.special_tokens = {name: _token_text(self.config.get(name))
                           for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    if self.special_tokens["eos_token"] is None:
      raise UserError(f"{config_path}: no eos_token (expected the end-of-sequence token a sampler stops at)")
    self._ids = {}
    for name, text in self.special_tokens.items():
      if text is not None:
        token_id = self._tok.token_to_id(text)
        if token_id is None:
          raise UserError(f"{config_path}: {name} {text!r} is not in {path.name}'s vocabulary")
        self._ids[name] = token_id
    template_file = self.folder / "chat_template.jinja"
    template = self.config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
      template = next((t["template"] for t in template if t.get("name") == "default"), None)
    self.chat_template = template_file.read_text() if template_file.is_file() else template

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def eos_id(self) -> int:
    return self._ids["eos_token"]

  @property
  def pad_id(self) -> int:
    return self._ids.get("pad_token", self.eos_id)

  @property
  def bos_id(self) -> int:
    return self._ids.get("bos_token", self.eos_id)

  @property
  def unk_id(self) -> int:
    return self._ids.get("unk_token", self.pad_id)

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def apply_chat_template(self, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
    """The conversation as the model was trained to read it (`render_chat_template`)."""
    if not self.chat_template:
      raise UserError(f"{self.folder}: the tokenizer has no chat template (tokenizer_config.json's chat_template "
                       "or chat_template.jinja)")
    return render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                **{k: v for k, v in self.special_tokens.items() if v is not None})


def render_chat_template(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = False,
                         **special_tokens: str) -> str:
  """Renders a Hugging Face chat template the way transformers' `apply_chat_template(tokenize=False)`
  does: a sandboxed Jinja environment with trim_blocks and lstrip_blocks, the loop-control extension,
  a `tojson` filter that does not escape HTML, and `raise_exception` / `strftime_now`; the template
  sees `messages`, `add_generation_prompt`, `tools=None`, `documents=None` and the special tokens
  (`bos_token`, `eos_token`, ...). A template's `raise_exception` is a UserError with its message."""
  import jinja2

  try:
    return _compiled_template(template).render(messages=[dict(m) for m in messages], tools=None, documents=None,
                                               add_generation_prompt=add_generation_prompt, **special_tokens)
  except jinja2.exceptions.TemplateError as e:
    raise UserError(f"chat template: {e}") from None


@functools.lru_cache(maxsize=8)
def _compiled_template(template: str):
  """The template compiled once (rendering a dataset renders it for every row)."""
  import datetime

  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(template)
  except jinja2.exceptions.TemplateError as e:
    raise UserError(f"chat template: {e}") from None
