"""Judgements as training arrays: preference pairs and scored responses, split by prompt.

Records are what the feedback store exports (`FeedbackStore.export_preferences`: `{"prompt",
"chosen", "rejected", "prompt_id", ...}`, TRL's preference schema) or any list of such dicts.
Two layouts, one per kind of model that trains on them:
- a reward model reads prompt and response as one row (`reward_model_pairs`: `chosen`,
  `rejected` [N, seq_len], right-padded, with their masks);
- a policy (DPO, ILQL) continues a left-padded prompt [N, prompt_len] with a right-padded response
  [N, response_len] (`policy_pairs`, `scored_responses`), the sampler's own layout.
`split_by_prompt` holds out whole prompts, so no pair of a held-out prompt leaks into training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rlhf_jax.data import corpora, fine_foods
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.data import rows
from rlhf_jax.feedback.store import FeedbackStore


def split_by_prompt(records: Sequence[dict], test_fraction: float, *,
                    key: str = "prompt_id") -> tuple[list[dict], list[dict]]:
  """(train, held-out) records, a prompt's side chosen by a stable hash of `record[key]`
  (`corpora.is_validation`): the same whatever other records are in the set."""
  test = [r for r in records if corpora.is_validation(str(r[key]), test_fraction)]
  held = {id(r) for r in test}
  return [r for r in records if id(r) not in held], test


def responses(tokenizer, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded int32 tokens [N, length] and mask of responses, each cut to its first `length`
  tokens; an empty response becomes a lone EOS, so that every row scores a real token."""
  ids = [t or [tokenizer.eos_id] for t in tokenizer.encode_batch(list(texts))]
  return rows.pad_rows(ids, length, tokenizer.pad_id)


def reward_model_pairs(records: Sequence[dict], tokenizer, seq_len: int,
                       with_prompt: bool = True) -> dict[str, np.ndarray]:
  """Tokens of the chosen and rejected sides (after their prompt when `with_prompt`), right-padded."""
  arrays = {}
  for side in ("chosen", "rejected"):
    texts = [(r["prompt"] if with_prompt else "") + r[side] for r in records]
    arrays[side], arrays[f"{side}_mask"] = rows.pad_rows(tokenizer.encode_batch(texts), seq_len, tokenizer.pad_id)
  return arrays


def policy_pairs(records: Sequence[dict], tokenizer, prompt_len: int, response_len: int) -> dict[str, np.ndarray]:
  """Left-padded prompts [N, prompt_len] and right-padded chosen/rejected responses [N, response_len]."""
  prompt, prompt_mask = prompts_lib.encode_prompts(tokenizer, [r["prompt"] for r in records], prompt_len)
  out = {"prompt": prompt, "prompt_mask": prompt_mask}
  for side in ("chosen", "rejected"):
    out[side], out[f"{side}_mask"] = responses(tokenizer, [r[side] for r in records], response_len)
  return out


def scored_responses(records: Sequence[dict], tokenizer, prompt_len: int, response_len: int) -> dict[str, np.ndarray]:
  """Left-padded prompts [N, prompt_len], right-padded responses [N, response_len] and rewards [N]
  of `{"prompt", "response", "reward"}` records."""
  prompt, prompt_mask = prompts_lib.encode_prompts(tokenizer, [r["prompt"] for r in records], prompt_len)
  response, response_mask = responses(tokenizer, [r["response"] for r in records], response_len)
  return {"prompt": prompt, "prompt_mask": prompt_mask, "response": response, "response_mask": response_mask,
          "reward": np.asarray([r["reward"] for r in records], np.float32)}


def preference_records(source: str, *, seed: int) -> list[dict]:
  """The preference pairs `source` (an experiment's `data.source`) names: "store:PATH", every live
  comparison with a winner in that feedback store; or "fine_foods", the fine-food reviews' 1,400
  human train pairs (a 5-star review preferred to a lower-rated one, no prompt)."""
  if source == "fine_foods":
    return fine_foods.preference_pairs("train", seed=seed)
  if not source.startswith("store:"):
    raise ValueError(f"data.source: expected 'store:PATH' or 'fine_foods', got {source!r}")
  path = source[len("store:"):]
  if not Path(path).is_file():
    raise FileNotFoundError(f"data.source store {path} not found: expected a feedback store (feedback.db)")
  with FeedbackStore(path) as store:
    return store.export_preferences()
