"""Best-of-n sampling: draw n responses from the reference policy, keep the one the reward likes best.

The simplest way to optimize a reward at inference time, and the baseline every RL method is
compared with at matched KL (Gao et al. 2022; Stiennon et al. 2020). Its KL to the reference is
known in closed form when rewards never tie, and otherwise can be measured (`kl_plugin`).
"""

from __future__ import annotations

import math

import numpy as np


def select(scores_PxN: np.ndarray) -> np.ndarray:
  """Index of the best of the n samples of each prompt (the first one on a tie)."""
  scores_PxN = np.asarray(scores_PxN)
  if scores_PxN.ndim != 2 or scores_PxN.shape[1] < 1:
    raise ValueError(f"scores: expected shape [prompts, n] with n >= 1, got {scores_PxN.shape}")
  return np.argmax(scores_PxN, axis=1)


def kl_bound(n: int) -> float:
  """KL(pi_bon || pi_ref) = log n - (n - 1) / n for rewards without ties (Stiennon et al. 2020,
  appendix G.3); Beirami et al. (2024, theorem 1) show it is an upper bound in general."""
  if n < 1:
    raise ValueError(f"best-of-n needs n >= 1, got {n}")
  return math.log(n) - (n - 1) / n


def kl_plugin(reference_scores: np.ndarray, n: int) -> float:
  """KL of best-of-n over the distinct reward values, from M reference samples of one prompt.

  With F the empirical CDF of the reference rewards over distinct values v_1 < ... < v_k (q_i
  their frequencies), best-of-n picks value i with probability F(v_i)^n - F(v_{i-1})^n, so its KL
  over reward values is sum_i p_i log(p_i / q_i). With no ties and M >> n it approaches
  `kl_bound(n)`; with ties (e.g. a lexicon that scores most texts 0) it is much smaller. It is a
  lower bound on the sequence-level KL (data processing), to be read next to the upper bound.
  """
  s = np.asarray(reference_scores, dtype=np.float64)
  if s.ndim != 1 or s.size == 0:
    raise ValueError("reference_scores: expected a non-empty 1-D array")
  if n < 1:
    raise ValueError(f"best-of-n needs n >= 1, got {n}")
  _, counts = np.unique(s, return_counts=True)
  q = counts / s.size
  cdf = np.cumsum(q)
  p = cdf ** n - np.concatenate([[0.0], cdf[:-1]]) ** n
  keep = p > 0
  return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))
