"""Reward-model evaluation on held-out data: ROC AUC, pairwise accuracy and calibration.

A reward model is judged three ways: does it rank good above bad (ROC AUC on rated texts,
pairwise accuracy on compared pairs), and are the preference probabilities it implies,
P(a > b) = sigmoid(r_a - r_b) under its own Bradley-Terry model, honest (calibration: among pairs
given probability p, a fraction p should be won). A miscalibrated reward model can still rank
well; calibration matters when its probabilities are used, e.g. as soft labels or for
uncertainty-aware RL.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from rlhf_jax import sharding
from rlhf_jax.data import rows


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2.

  Computed from ranks (Mann & Whitney 1947; Hanley & McNeil 1982, eq. 2):
  AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), where R_pos is the sum of the
  positives' ranks among all scores, tied scores sharing their average rank
  (`scipy.stats.rankdata`).
  """
  from scipy.stats import rankdata

  scores = np.asarray(scores, dtype=np.float64)
  labels = np.asarray(labels)
  if scores.ndim != 1 or scores.shape != labels.shape:
    raise ValueError(f"scores and labels: expected two 1-D arrays of the same length, got "
                     f"shapes {scores.shape} and {labels.shape}")
  if labels.dtype != np.bool_ and not np.isin(labels, [0, 1]).all():
    raise ValueError("labels: expected booleans or 0/1")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores: expected finite numbers")
  labels = labels.astype(bool)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"labels: expected both classes, got {n_pos} positive and {n_neg} negative")
  rank_sum = rankdata(scores, method="average")[labels].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _check_probabilities(probs: np.ndarray, outcomes: np.ndarray) -> None:
  if probs.ndim != 1 or probs.shape != outcomes.shape or probs.size == 0:
    raise ValueError(f"probs and outcomes: expected two non-empty 1-D arrays of the same length, got shapes "
                     f"{probs.shape} and {outcomes.shape}")
  if not np.all((probs >= 0) & (probs <= 1)):
    raise ValueError("probs: expected probabilities in [0, 1]")
  if not np.isin(outcomes, [0, 1]).all():
    raise ValueError("outcomes: expected booleans or 0/1")


def calibration(probs: Sequence[float] | np.ndarray, outcomes: Sequence[bool] | np.ndarray,
                num_bins: int = 10) -> dict[str, object]:
  """Calibration of predicted probabilities against 0/1 outcomes.

  - `ece`: expected calibration error (Naeini et al. 2015; Guo et al. 2017, eq. 3),
    ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)| over `num_bins` equal-width bins of the
    predicted probability, where acc is the bin's fraction of positive outcomes and conf its
    mean prediction.
  - `brier`: mean squared error (p - y)^2 (Brier 1950); 0.25 for always predicting 1/2.
  - `log_loss`: mean -[y log p + (1 - y) log (1 - p)], p clipped to [1e-7, 1 - 1e-7].
  - `bins`: per non-empty bin, its (low, high, count, mean prediction, fraction positive): the
    reliability diagram's points.
  """
  p = np.asarray(probs, dtype=np.float64)
  y = np.asarray(outcomes).astype(np.float64)
  _check_probabilities(p, y)
  if num_bins < 1:
    raise ValueError(f"num_bins: expected an integer >= 1, got {num_bins}")
  # Bin m holds p in [m/M, (m+1)/M); p = 1 joins the last bin.
  index = np.minimum((p * num_bins).astype(int), num_bins - 1)
  bins, ece = [], 0.0
  for m in range(num_bins):
    in_bin = index == m
    if not in_bin.any():
      continue
    conf, acc, count = float(p[in_bin].mean()), float(y[in_bin].mean()), int(in_bin.sum())
    ece += count / p.size * abs(acc - conf)
    bins.append({"low": m / num_bins, "high": (m + 1) / num_bins, "count": count, "mean_prob": conf,
                 "frac_positive": acc})
  clipped = np.clip(p, 1e-7, 1 - 1e-7)
  log_loss = -np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
  return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)), "log_loss": float(log_loss), "bins": bins}


def pairwise_metrics(margins: Sequence[float] | np.ndarray, outcomes: Sequence[bool] | np.ndarray,
                     num_bins: int = 10) -> dict[str, float]:
  """Accuracy and calibration of a reward model on compared pairs.

  `margins[i]` is r(a_i) - r(b_i) from the reward model, `outcomes[i]` is 1 when a_i was preferred.
  The model's preference probability is its Bradley-Terry sigmoid(margin). Accuracy counts a
  zero margin as half right (the model is indifferent), like ROC AUC's ties.
  """
  margins = np.asarray(margins, dtype=np.float64)
  y = np.asarray(outcomes).astype(np.float64)
  probs = 0.5 * (1.0 + np.tanh(margins / 2.0))  # sigmoid, without overflow for large margins
  cal = calibration(probs, y, num_bins)
  correct = np.where(margins == 0, 0.5, (margins > 0) == (y > 0))
  return {"accuracy": float(np.mean(correct)), "ece": cal["ece"], "brier": cal["brier"],
          "log_loss": cal["log_loss"], "pairs": float(margins.size)}


def chosen_first_metrics(margins: Sequence[float] | np.ndarray) -> dict[str, float]:
  """`pairwise_metrics` of pairs whose first side is the chosen one (margins r(chosen) - r(rejected)).
  Each pair is shown in a fixed random orientation (chosen first or second), so calibration sees
  both outcomes, not only "the first side wins"."""
  margins = np.asarray(margins, np.float64)
  flip = np.random.default_rng(0).random(margins.size) < 0.5
  return pairwise_metrics(np.where(flip, -margins, margins), ~flip)


def pair_margins(pair_fn: Callable, params, batches: Sequence[dict], mesh) -> np.ndarray:
  """r(chosen) - r(rejected) of every pair of `batches` (`rows.eval_row_batches`: padding rows
  dropped), in order; `pair_fn(params, batch) -> (r_chosen, r_rejected)`."""
  margins = []
  for batch in batches:
    chosen, rejected = pair_fn(params, sharding.put_batch({k: v for k, v in batch.items() if k != "row_mask"}, mesh))
    margins.append(np.asarray(chosen - rejected)[batch["row_mask"] > 0])
  return np.concatenate(margins)


def score_all(score_fn: Callable, params, tokens_NxT: np.ndarray, mask_NxT: np.ndarray, batch_size: int,
              mesh) -> np.ndarray:
  """`score_fn(params, tokens, mask) -> [B]` over every row, in fixed-size batches (one compile).

  The last batch is padded with copies of row 0 (`rows.eval_row_batches`) and those scores are
  dropped, so the result has exactly one score per row, in order.
  """
  scores = []
  for batch in rows.eval_row_batches({"tokens": tokens_NxT, "mask": mask_NxT}, batch_size):
    placed = sharding.put_batch({"tokens": batch["tokens"], "mask": batch["mask"]}, mesh)
    scores.append(np.asarray(score_fn(params, placed["tokens"], placed["mask"]))[batch["row_mask"] > 0])
  return np.concatenate(scores)
