"""Functional forms of reward-model overoptimization (Gao, Schulman & Hilton 2022, "Scaling Laws for
Reward Model Overoptimization"), fitted by least squares.

With d = sqrt(KL(pi || pi_init)) (nats), the gold reward gained over the initial policy follows

  best-of-n:  R_bon(d) = d (alpha_bon - beta_bon d)          (their eq. 1)
  RL:         R_RL(d)  = d (alpha_RL  - beta_RL log d)       (their eq. 2)

Both are linear in (alpha, beta), so ordinary least squares on the features (d, -d^2) or
(d, -d log d) gives the exact minimizer; there is no intercept (R(0) = 0 by construction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np


def features(d: np.ndarray, form: Literal["bon", "rl"]) -> np.ndarray:
  d = np.asarray(d, np.float64)
  if form == "bon":
    return np.stack([d, -d * d], axis=-1)
  if form == "rl":
    # d log d -> 0 as d -> 0; written so that d = 0 gives 0 instead of nan.
    return np.stack([d, -np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)], axis=-1)
  raise ValueError(f"form: expected 'bon' or 'rl', got {form!r}")


def predict(d: Sequence[float], alpha: float, beta: float, form: Literal["bon", "rl"]) -> np.ndarray:
  return features(np.asarray(d, np.float64), form) @ np.array([alpha, beta])


def fit(d: Sequence[float], gold_gain: Sequence[float], form: Literal["bon", "rl"]) -> dict[str, float]:
  """{"alpha", "beta", "r2", "rmse", "n"}: the least-squares coefficients of `form` for gold
  reward gains `gold_gain` (gold reward minus the initial policy's) at distances `d`."""
  d, y = np.asarray(d, np.float64), np.asarray(gold_gain, np.float64)
  if d.shape != y.shape or d.ndim != 1:
    raise ValueError(f"d and gold_gain: expected two 1-D arrays of one length, got {d.shape} and {y.shape}")
  if d.size < 3 or (d < 0).any():
    raise ValueError("d: expected at least 3 distances sqrt(KL) >= 0")
  X = features(d, form)
  (alpha, beta), *_ = np.linalg.lstsq(X, y, rcond=None)
  residual = y - X @ np.array([alpha, beta])
  total = ((y - y.mean()) ** 2).sum()
  return {"alpha": float(alpha), "beta": float(beta), "n": int(d.size),
          "r2": float(1 - (residual ** 2).sum() / total) if total > 0 else float("nan"),
          "rmse": float(np.sqrt((residual ** 2).mean()))}


def plot(proxies: dict[str, dict], out: str | Path) -> None:
  """Against d, one column per method ("bon", "ppo"), one color per proxy: the gold gain (top; every
  point, and the fitted functional form where `entry[method]["fit"]` has one) and the proxy's own
  gain (bottom, in each proxy's units), the pair that shows a proxy being overoptimized."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
  for col, (method, form, title) in enumerate((("bon", "bon", "best-of-n"), ("ppo", "rl", "RL (PPO)"))):
    gold_ax, proxy_ax = axes[0, col], axes[1, col]
    for name, entry in proxies.items():
      m = entry[method]
      points = gold_ax.scatter(m["d"], m["gold_gain"], s=10, alpha=0.5, label=name)
      color = points.get_facecolor()[0]
      if m["fit"] is not None and len(m["d"]):
        d = np.linspace(0.0, max(m["d"]), 100)
        gold_ax.plot(d, predict(d, m["fit"]["alpha"], m["fit"]["beta"], form), color=color, alpha=0.9)
      proxy_ax.scatter(m["d"], m["proxy_gain"], s=10, alpha=0.5, color=color)
    gold_ax.set(ylabel="gold reward gain", title=title)
    proxy_ax.set(xlabel="d = sqrt(KL), sqrt(nats)", ylabel="proxy reward gain (its own units)")
    for ax in (gold_ax, proxy_ax):
      ax.axhline(0.0, color="gray", lw=0.8)
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
