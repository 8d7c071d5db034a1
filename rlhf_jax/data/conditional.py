"""Preference-conditioned pretraining data (Korbak et al. 2023, "Pretraining Language Models with
Human Preferences"): documents are cut into segments (sentences), a labeler scores every segment,
and the token stream is built in one of four ways at the same tokenization:

- `plain`: the segments as they are (maximum likelihood on everything).
- `filter`: segments the labeler scores below the threshold are dropped (the paper's filtering).
- `token`: each segment is prefixed with a control token, `<|good|>` if its score is at least the
  threshold and `<|bad|>` otherwise (the paper's conditional training, its section 3); a random
  `unconditioned_fraction` of segments gets no token, so the model can also be sampled without one.
  Generation then starts from `<|good|>` with `<|bad|>` suppressed.
- `embedding`: the same tags travel as a per-token preference id that the model adds to its input
  embedding (`ModelConfig.n_preferences`), instead of a token in the text.

Preference ids: 0 unconditioned, 1 good, 2 bad. The preference of input position i is the tag of
the segment of token i + 1 (the one it predicts), so the token before a segment (or the EOS before
a document) already carries that segment's preference, exactly where a control token would sit.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

NONE, GOOD, BAD = 0, 1, 2
N_PREFERENCES = 3
FLIP = (NONE, BAD, GOOD)  # FLIP[id]: the opposite preference (for a contrastive loss); none stays none
CONTROL_TOKENS = ("<|good|>", "<|bad|>")  # the pieces for GOOD and BAD
MODES = ("plain", "filter", "token", "embedding")

# A sentence ends at . ! or ? (optionally followed by closing quotes or brackets) before whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])['\")\]]*(?=\s)")


def split_segments(text: str) -> list[str]:
  """Sentences of `text` whose concatenation is `text`; whitespace starts the next sentence.

  Keeping the space at the start of a segment (" The cat") is what makes segment-by-segment
  tokenization match whole-text tokenization: the tokenizer's word pieces carry their leading space.
  """
  cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
  bounds = [0, *cuts, len(text)]
  return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if text[a:b]]


def tag_segments(scores_S: np.ndarray, threshold: float, unconditioned_fraction: float,
                 rng: np.random.Generator) -> np.ndarray:
  """int32 tags [S]: GOOD where score >= threshold, else BAD; a random fraction NONE."""
  if not 0.0 <= unconditioned_fraction <= 1.0:
    raise ValueError(f"unconditioned_fraction must be in [0, 1], got {unconditioned_fraction}")
  scores_S = np.asarray(scores_S, np.float64)
  tags_S = np.where(scores_S >= threshold, GOOD, BAD).astype(np.int32)
  tags_S[rng.random(scores_S.shape) < unconditioned_fraction] = NONE
  return tags_S


@dataclasses.dataclass(frozen=True)
class Stream:
  tokens_N: np.ndarray  # int32
  preference_N: np.ndarray  # int32 preference id of each input position (see the module docstring)
  control_N: np.ndarray  # bool: the token is a control token (not text; masked out of evaluation)


def build_stream(segment_ids: Sequence[Sequence[Sequence[int]]], tags: Sequence[np.ndarray], *, mode: str,
                 control_ids: tuple[int, int], eos_id: int) -> Stream:
  """One packed stream of documents, given each document's segment token ids and segment tags.

  Args:
    segment_ids: per document, per segment, the token ids.
    tags: per document, int tags [S] (NONE / GOOD / BAD), as from `tag_segments`.
    mode: one of `MODES`. `filter` drops BAD segments (and a document left empty); `token` puts
      `control_ids[tag - 1]` before every tagged segment; `plain` and `embedding` keep the text as
      is (embedding mode's conditioning is in `preference_N`; the other modes get all zeros).
    control_ids: the ids of `<|good|>` and `<|bad|>`.
    eos_id: appended after every document.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if len(segment_ids) != len(tags):
    raise ValueError(f"tags: expected one array per document ({len(segment_ids)}), got {len(tags)}")
  tokens, target_tags, control = [], [], []
  for doc, doc_tags in zip(segment_ids, tags):
    if len(doc) != len(doc_tags):
      raise ValueError(f"tags: a document has {len(doc)} segments but {len(doc_tags)} tags")
    n_before = len(tokens)
    for ids, tag in zip(doc, doc_tags):
      tag = int(tag)
      if mode == "filter" and tag == BAD:
        continue
      if mode == "token" and tag != NONE:
        tokens.append(control_ids[tag - 1])
        target_tags.append(tag)
        control.append(True)
      tokens.extend(ids)
      target_tags.extend([tag] * len(ids))
      control.extend([False] * len(ids))
    if len(tokens) > n_before:
      tokens.append(eos_id)
      target_tags.append(target_tags[-1])  # the EOS ends the last segment
      control.append(False)
  tokens_N = np.asarray(tokens, np.int32)
  preference_N = np.zeros_like(tokens_N)
  if mode == "embedding" and tokens_N.size:
    preference_N[:-1] = np.asarray(target_tags[1:], np.int32)
  return Stream(tokens_N, preference_N, np.asarray(control, bool))


def mask_targets(batches: list[dict[str, np.ndarray]], ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
  """The batches with `loss_mask` 0 where the target is one of `ids` (e.g. control tokens), so a
  conditional model's perplexity counts the same text tokens as an unconditional one's."""
  ids = np.asarray(list(ids), np.int32)
  return [{**b, "loss_mask": b["loss_mask"] * ~np.isin(b["targets"], ids)} for b in batches]


def strip_control(text: str) -> str:
  """The text without control tokens (what a labeler should see of a sample)."""
  for piece in CONTROL_TOKENS:
    text = text.replace(piece, "")
  return text
