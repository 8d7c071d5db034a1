"""Best-of-n sampling: draw n responses from the reference policy, keep the one the reward likes best.

The simplest way to optimize a reward at inference time, and the baseline every RL method is
compared with at matched KL (Gao et al. 2022; Stiennon et al. 2020). Its KL to the reference is
known in closed form when rewards never tie, and otherwise can be measured (`kl_plugin`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import special


def select(scores_PxN: np.ndarray) -> np.ndarray:
  """Index of the best of the n samples of each prompt (the first one on a tie)."""
  scores_PxN = np.asarray(scores_PxN)
  if scores_PxN.ndim != 2 or scores_PxN.shape[1] < 1:
    raise ValueError(f"scores: expected shape [prompts, n] with n >= 1, got {scores_PxN.shape}")
  return np.argmax(scores_PxN, axis=1)


def expected_best(proxy_PxN: np.ndarray, value_PxN: np.ndarray, n: int) -> np.ndarray:
  """E[value of the proxy-best of n samples] per prompt, from a pool of N >= n samples of each.

  The unbiased estimator of Nakano et al. (2021, WebGPT, appendix "unbiased estimator") that Gao
  et al. (2022, sec. 2.2) use for best-of-n: average over all C(N, n) subsets of the pool instead
  of taking one. With the pool sorted by proxy, the i-th lowest (1-based) is the subset's best with
  probability C(i-1, n-1) / C(N, n). Tied proxy scores are broken uniformly at random: a group of
  tied samples at ranks a+1..b is the best with probability (C(b, n) - C(a, n)) / C(N, n), and then
  each of its members equally. Far less noisy than best-of-the-first-n for every n < N.
  """
  proxy_PxN, value_PxN = np.asarray(proxy_PxN, np.float64), np.asarray(value_PxN, np.float64)
  if proxy_PxN.ndim != 2 or proxy_PxN.shape != value_PxN.shape:
    raise ValueError(f"proxy, value: expected two arrays of one shape [prompts, N], got {proxy_PxN.shape} "
                     f"and {value_PxN.shape}")
  N = proxy_PxN.shape[1]
  if not 1 <= n <= N:
    raise ValueError(f"n: expected 1 <= n <= N = {N} (the samples per prompt), got {n}")

  def log_comb(k: np.ndarray) -> np.ndarray:  # log C(k, n), -inf where k < n
    k = np.asarray(k, np.float64)
    with np.errstate(invalid="ignore"):
      out = special.gammaln(k + 1) - special.gammaln(n + 1) - special.gammaln(k - n + 1)
    return np.where(k >= n, out, -np.inf)

  log_subsets = log_comb(N)
  out_P = np.empty(proxy_PxN.shape[0])
  for row, (proxy_N, value_N) in enumerate(zip(proxy_PxN, value_PxN)):
    order = np.argsort(proxy_N, kind="stable")
    _, start_G, count_G = np.unique(proxy_N[order], return_index=True, return_counts=True)
    p_G = np.exp(log_comb(start_G + count_G) - log_subsets) - np.exp(log_comb(start_G) - log_subsets)
    out_P[row] = np.sum(p_G * np.add.reduceat(value_N[order], start_G) / count_G)
  return out_P


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


def summary(proxy_PxN: np.ndarray, gold_PxN: np.ndarray | None, ns: Sequence[int]) -> list[dict[str, float]]:
  """For each n: `proxy_score` and `gold_score`, the mean over prompts of the expected proxy and gold
  score of the proxy-best of n (`expected_best`, from one pool of N >= max(ns) samples of each
  prompt), `kl` the bound `kl_bound(n)` and `kl_plugin` its measured counterpart on the proxy's
  values (`kl_plugin`, mean over prompts). The names are the RL trainer's evaluation metrics, so a
  best-of-n run reads like any other in `rlhf-jax report`. `gold_PxN` None: no gold."""
  proxy_PxN = np.asarray(proxy_PxN, np.float64)
  out = []
  for n in ns:
    row = {"n": int(n), "proxy_score": float(expected_best(proxy_PxN, proxy_PxN, n).mean()), "kl": kl_bound(n),
           "kl_plugin": float(np.mean([kl_plugin(s_N, n) for s_N in proxy_PxN]))}
    if gold_PxN is not None:
      row["gold_score"] = float(expected_best(proxy_PxN, gold_PxN, n).mean())
    out.append(row)
  return out
