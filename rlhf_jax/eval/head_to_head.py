"""Head-to-head win rates of policy A against policy B on the same prompts.

Judges: a scorer (reward model, lexicon, user function: the higher score wins), a simulated
labeler (Bradley-Terry noise, ties), or people: `push_pairs` puts each prompt's two responses
into the feedback store, where the labeling page shows them in random order without saying which
model wrote which, and `store_outcomes` reads the verdicts back. Every judge gives outcomes per
prompt (1: A wins, 0: B wins, 0.5: tie) and `win_rate` summarizes them with a bootstrap interval.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rlhf_jax.feedback import collect
from rlhf_jax.feedback.store import FeedbackStore

OUTCOME_VALUE = {"a": 1.0, "b": 0.0, "tie": 0.5}


def win_rate(outcomes: Sequence[float], *, num_bootstrap: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
  """{"win_rate", "ci_low", "ci_high", "n", "wins", "losses", "ties"}: ties count half; the
  interval is the percentile bootstrap over judgements (resampled with replacement, seeded)."""
  x = np.asarray(outcomes, np.float64)
  if x.size and not np.isin(x, (0.0, 0.5, 1.0)).all():
    raise ValueError("outcomes: expected 1 (A wins), 0 (B wins) or 0.5 (tie) per judgement")
  out = {"n": int(x.size), "wins": int((x == 1).sum()), "losses": int((x == 0).sum()), "ties": int((x == 0.5).sum())}
  if x.size == 0:
    return {**out, "win_rate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
  means = np.random.default_rng(seed).choice(x, size=(num_bootstrap, x.size), replace=True).mean(axis=1)
  alpha = (1 - level) / 2
  return {**out, "win_rate": float(x.mean()), "ci_low": float(np.quantile(means, alpha)),
          "ci_high": float(np.quantile(means, 1 - alpha))}


def scorer_outcomes(scorer, texts_a: Sequence[str], texts_b: Sequence[str]) -> np.ndarray:
  """1 where the scorer gives A's text the higher score, 0 where B's, 0.5 where equal."""
  if len(texts_a) != len(texts_b):
    raise ValueError(f"texts_a and texts_b: expected as many texts, got {len(texts_a)} and {len(texts_b)}")
  a, b = np.asarray(scorer.score(list(texts_a)), np.float64), np.asarray(scorer.score(list(texts_b)), np.float64)
  return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def labeler_outcomes(labeler, texts_a: Sequence[str], texts_b: Sequence[str]) -> np.ndarray:
  """A `SimulatedLabeler`'s verdicts ('a', 'b', 'tie') as outcomes."""
  return np.asarray([OUTCOME_VALUE[o] for o in labeler.compare(list(texts_a), list(texts_b))])


def push_pairs(store: FeedbackStore, prompts: Sequence[str], texts_a: Sequence[str], texts_b: Sequence[str], *,
               model_a: str, model_b: str, source: str = "head-to-head") -> int:
  """Adds each prompt's two responses to the store in one transaction (`collect.store_round`), so
  the labeling queue offers the pair; returns the number of pairs. Identical or empty responses
  are left out: they are not a choice."""
  if not len(prompts) == len(texts_a) == len(texts_b):
    raise ValueError("prompts, texts_a and texts_b: expected the same number of entries")
  if model_a == model_b:
    raise ValueError(f"model_a and model_b must differ (both {model_a!r}): the verdicts are read back by model")
  return collect.store_round(store, prompts, [texts_a, texts_b], [model_a, model_b], source=source)


def store_outcomes(store: FeedbackStore, *, model_a: str, model_b: str, labeler: str | None = None) -> np.ndarray:
  """Every live verdict between a sample of `model_a` and one of `model_b` (optionally by one
  labeler), as outcomes for A; skips are not verdicts."""
  out = []
  for r in store.export_preferences():
    if {r["chosen_model"], r["rejected_model"]} == {model_a, model_b} and labeler in (None, r["labeler"]):
      out.append(1.0 if r["chosen_model"] == model_a else 0.0)
  for r in store.export_ties():
    if {r["model_a"], r["model_b"]} == {model_a, model_b} and labeler in (None, r["labeler"]):
      out.append(0.5)
  return np.asarray(out)
