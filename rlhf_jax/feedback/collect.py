"""Feedback collection: sample from a policy, label, store each round in one transaction, resume.

A round is a batch of prompts. The policy writes K responses to each; every pair of a prompt's
distinct, non-empty responses is a comparison (all K(K-1)/2 of them, as InstructGPT collects
rankings: Ouyang et al. 2022, sec. 3.5; labels are cheap next to sampling). A simulated labeler
judges the pairs at once, and the round's samples and verdicts are stored in one transaction
(`FeedbackStore.add_round`). Without a labeler the pairs wait in the store's queue for people on
the labeling page (`rlhf-jax label`), and `wait_for_comparisons` waits for their verdicts.
`collect_scores` is the same for rubric scores: simulated experts score each answer on every
criterion (`feedback.rubric`), as people do on the labeling page with `--rubric`.

Each round's keys depend only on its index, and the store records the rounds (and comparisons) it
holds in the same transaction as their data, so `collect_comparisons` on an interrupted
collection's store skips the stored rounds, advances the labeler's noise past their comparisons,
and stores what an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from rlhf_jax.feedback.labelers import SimulatedLabeler
from rlhf_jax.feedback.rubric import SimulatedExpert
from rlhf_jax.feedback.store import FeedbackStore

# (prompts, key) -> one response per prompt
SampleTexts = Callable[[list[str], jax.Array], list[str]]


def comparable_pairs(responses_KxB: Sequence[Sequence[str]]) -> list[tuple[int, int, int]]:
  """`(i, a, b)` with a < b for every two distinct, non-empty responses of prompt i among its K; a
  response equal to an earlier one of its prompt is left out (the store keeps one sample per
  text, and a pair is judged once)."""
  K = len(responses_KxB)
  B = len(responses_KxB[0]) if K else 0
  pairs = []
  for i in range(B):
    texts = [responses_KxB[k][i] for k in range(K)]
    firsts = [k for k in range(K) if texts[k].strip() and texts[k] not in texts[:k]]
    pairs += [(i, a, b) for n, a in enumerate(firsts) for b in firsts[n + 1:]]
  return pairs


def store_round(store: FeedbackStore, prompts: Sequence[str], responses_KxB: Sequence[Sequence[str]],
                models: Sequence[str], labeler: SimulatedLabeler | None = None, *, source: str = "",
                collection: str | None = None, round_index: int | None = None) -> int:
  """Stores the responses that take part in a comparison (response k by `models[k]`) and, with a
  `labeler`, its verdict on every pair, in one transaction; returns the number of pairs."""
  pairs = comparable_pairs(responses_KxB)
  used = sorted({(i, k) for i, a, b in pairs for k in (a, b)})
  index = {ik: n for n, ik in enumerate(used)}
  records = [{"prompt": prompts[i], "response": responses_KxB[k][i], "model": models[k]} for i, k in used]
  comparisons = []
  if labeler is not None and pairs:
    outcomes = labeler.compare([responses_KxB[a][i] for i, a, _ in pairs], [responses_KxB[b][i] for i, _, b in pairs])
    comparisons = [(index[i, a], index[i, b], o) for (i, a, b), o in zip(pairs, outcomes)]
  store.add_round(records, comparisons, labeler=labeler.name if labeler is not None else None, source=source,
                  collection=collection, round_index=round_index, pairs=len(pairs))
  return len(pairs)


def collect_comparisons(store: FeedbackStore, sample_texts: SampleTexts, prompts: Sequence[str],
                        labeler: SimulatedLabeler | None, *, samples_per_prompt: int, batch_size: int, model: str,
                        key: jax.Array, source: str = "", collection: str = "comparisons") -> int:
  """K = `samples_per_prompt` responses of `model` to each prompt, round by round of `batch_size`
  prompts (response k of the round starting at prompt s with key `fold_in(key, K s + k)`), compared
  pairwise by `labeler` or left for people (module docstring). Rounds the store already holds for
  `collection` are skipped; returns the number of pairs stored by this call."""
  K = samples_per_prompt
  if K < 2:
    raise ValueError(f"samples_per_prompt={K}: a comparison needs at least 2 samples per prompt")
  starts = list(range(0, len(prompts), batch_size))
  done, compared, _ = store.collection_progress(collection)
  if labeler is not None:
    labeler.skip_comparisons(compared)  # its noise draws for the stored rounds
  stored = 0
  for r in tqdm(range(done, len(starts)), desc="sample+label", leave=False, initial=done, total=len(starts)):
    start = starts[r]
    batch = list(prompts[start:start + batch_size])
    responses = [sample_texts(batch, jax.random.fold_in(key, K * start + k)) for k in range(K)]
    stored += store_round(store, batch, responses, [model] * K, labeler, source=source, collection=collection,
                          round_index=r)
  return stored


def collect_scores(store: FeedbackStore, sample_texts: SampleTexts, prompts: Sequence[str],
                   gold: Sequence[Sequence[str]], experts: Sequence[SimulatedExpert], *, samples_per_prompt: int,
                   batch_size: int, model: str, key: jax.Array, source: str = "", collection: str = "scores") -> int:
  """K = `samples_per_prompt` answers of `model` to each question, round by round of `batch_size`
  (answer k of the round starting at question s with key `fold_in(key, K s + k)`); every expert
  scores each distinct non-empty answer on its rubric (`gold[i]`: question i's right answers),
  and a round's answers and scores are stored in one transaction. An expert's noise in round r
  comes from its seed and r alone, so a collection resumed after its stored rounds stores what an
  uninterrupted one would have. Returns the number of judgements stored by this call."""
  K = samples_per_prompt
  if K < 1 or not experts:
    raise ValueError(f"samples_per_prompt={K}, {len(experts)} experts: expected at least one of each")
  names = [e.name for e in experts]
  if len(set(names)) != len(names) or len({e.rubric for e in experts}) != 1:
    raise ValueError(f"experts: expected distinct names and one rubric, got {names}")
  scales = experts[0].rubric.scales
  starts = list(range(0, len(prompts), batch_size))
  done, _, _ = store.collection_progress(collection)
  stored = 0
  for r in tqdm(range(done, len(starts)), desc="sample+score", leave=False, initial=done, total=len(starts)):
    start = starts[r]
    batch = list(prompts[start:start + batch_size])
    responses = [sample_texts(batch, jax.random.fold_in(key, K * start + k)) for k in range(K)]
    used = [(i, k) for i in range(len(batch)) for k in range(K)
            if responses[k][i].strip() and responses[k][i] not in [responses[j][i] for j in range(k)]]
    records = [{"prompt": batch[i], "response": responses[k][i], "model": model} for i, k in used]
    questions = [batch[i] for i, _ in used]
    answers = [responses[k][i] for i, k in used]
    golds = [gold[start + i] for i, _ in used]
    scores, signals = [], {}
    for expert in experts:
      # The signals once per fluency LM (the LM's forward is the cost), not once per expert.
      lm = id(expert.fluency_logp)
      if lm not in signals:
        signals[lm] = expert.signals(questions, answers, golds)
      # A fresh draw for each round: seeded by the expert's seed and the round, not by what came before.
      this_round = dataclasses.replace(expert, seed=int(np.random.SeedSequence([expert.seed, r]).generate_state(1)[0]))
      by_criterion = this_round.score_signals(signals[lm])
      scores += [(n, expert.name, {c: int(v[n]) for c, v in by_criterion.items()}) for n in range(len(used))]
    store.add_round(records, source=source, collection=collection, round_index=r, pairs=0, scores=scores,
                    scales=scales)
    stored += len(scores)
  return stored


def wait_for_comparisons(store: FeedbackStore, at_least: int, *, timeout_s: float, poll_s: float = 2.0,
                         labeler: str | None = None, model: str | None = None,
                         clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] = time.sleep) -> int:
  """Waits until the store holds `at_least` live comparisons (by `labeler`, of samples by `model`,
  or any), checking every `poll_s` seconds; returns how many it holds. TimeoutError after
  `timeout_s` seconds, naming the command that labels them."""
  deadline = clock() + timeout_s
  while True:
    judged = store.judgements(kind="comparison", labeler=labeler)
    if model is not None:
      judged = [j for j in judged if store.sample(j.sample_a).model == model]
    if len(judged) >= at_least:
      return len(judged)
    if clock() >= deadline:
      raise TimeoutError(f"{len(judged)} of the {at_least} comparisons awaited after {timeout_s:g} s "
                         f"(label them with `rlhf-jax label --store {store.path} --labeler NAME`)")
    sleep(poll_s)


def set_aside(store_path: str | Path) -> Path:
  """Renames a store (with its WAL files) to `<name>.interrupted-N.db`, keeping it, so that a
  collection can start over in a fresh one; returns the new path. Nothing is deleted."""
  store_path = Path(store_path)
  n = 0
  while (aside := store_path.with_name(f"{store_path.stem}.interrupted-{n}{store_path.suffix}")).exists():
    n += 1
  for suffix in ("-wal", "-shm"):
    if (extra := Path(f"{store_path}{suffix}")).exists():
      extra.rename(f"{aside}{suffix}")
  store_path.rename(aside)  # last: the WAL files moved first belong to it
  print(f"{store_path}: kept as {aside.name}", flush=True)
  return aside
