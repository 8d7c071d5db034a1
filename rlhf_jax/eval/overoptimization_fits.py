"""Functional forms of reward-model overoptimization (Gao, Schulman & Hilton 2022, "Scaling Laws for
Reward Model Overoptimization"), fitted by least squares.

With d = sqrt(KL(pi || pi_init)) (nats), the gold reward gained over the initial policy follows

  best-of-n:  R_bon(d) = d (alpha_bon - beta_bon d)          (their eq. 1)
  RL:         R_RL(d)  = d (alpha_RL  - beta_RL log d)       (their eq. 2)

Both are linear in (alpha, beta), so ordinary least squares on the features (d, -d^2) or
(d, -d log d) gives the exact minimizer; there is no intercept (R(0) = 0 by construction).

`proxy_entry` gathers one proxy's points and fits from runs that `rlhf-jax run` wrote (`eval`
records with `kl`, `gold_score` and `proxy_score`), `write_report` the table, JSON and plot of
every proxy: `overoptimization.md`, `.json`, `.png`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from rlhf_jax import files, logs, report

FORMS = {"bon": "bon", "ppo": "rl"}  # each method's functional form


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


def gold_gains(runs: Sequence[report.RunRecords]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(d = sqrt(KL), gold gain, proxy gain) of every evaluation of `runs`, gains over each run's
  first evaluation (the initial policy: best-of-1, or PPO before its first update)."""
  d, gold, proxy = [], [], []
  for run in runs:
    rows = [r for r in run.records if r.get("split") == "eval"]
    if not rows:
      raise ValueError(f"{run.path}/metrics.jsonl has no 'eval' records")
    for r in rows:
      d.append(math.sqrt(max(r["kl"], 0.0)))  # a sampled KL estimate can dip below 0 near the start
      gold.append(r["gold_score"] - rows[0]["gold_score"])
      proxy.append(r["proxy_score"] - rows[0]["proxy_score"])
  return np.array(d), np.array(gold), np.array(proxy)


def proxy_entry(proxy_runs: Sequence[str | Path], method_runs: dict[str, Sequence[str | Path]], *,
                accuracy: str = "accuracy_vs_noiseless") -> dict:
  """One proxy over its seeds, from the runs' workdirs: the mean held-out `accuracy` of its reward
  models' final evaluation and, per method ("bon", "ppo"), every point of the method's runs against
  it with the fit of the method's form (`FORMS`; None below 3 points)."""
  entry = {"proxy_accuracy": float(np.mean([report.final_metrics(report.load_run(r), "eval")[accuracy]
                                            for r in proxy_runs]))}
  for method, runs in method_runs.items():
    d, gain, proxy = gold_gains([report.load_run(r) for r in runs])
    entry[method] = {"d": d.tolist(), "gold_gain": gain.tolist(), "proxy_gain": proxy.tolist(),
                     "fit": fit(d, gain, FORMS[method]) if len(d) >= 3 else None}
  return entry


def markdown(proxies: dict[str, dict]) -> str:
  """A row per proxy and method: its points, the fit and the peak d* where the gain turns down."""
  lines = ["# Reward-model overoptimization", "",
           "Gold gain = gold reward minus the initial policy's; d = sqrt(KL) in sqrt(nats). Fits by least squares "
           "over every seed's points: best-of-n R(d) = d (alpha - beta d), peak at d* = alpha / (2 beta); "
           "RL R(d) = d (alpha - beta log d), peak at d* = exp(alpha / beta - 1).", "",
           "| proxy | accuracy vs gold | method | points | max d | gold gain at max d | alpha | beta | R^2 | d* |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, entry in proxies.items():
    for method in FORMS:
      m, fitted = entry[method], entry[method]["fit"]
      i = int(np.argmax(m["d"]))
      cells = ["-"] * 4
      if fitted is not None:
        cells = [f"{fitted['alpha']:.3f}", f"{fitted['beta']:.3f}", f"{fitted['r2']:.2f}", "none (beta <= 0)"]
        if fitted["beta"] > 0:  # the gain turns down: the proxy is overoptimized past d*
          peak = (fitted["alpha"] / (2 * fitted["beta"]) if FORMS[method] == "bon"
                  else math.exp(fitted["alpha"] / fitted["beta"] - 1))
          cells[3] = f"{peak:.3g}"
      lines.append(f"| {name} | {entry['proxy_accuracy']:.3f} | {method} | {len(m['d'])} | {m['d'][i]:.2f} | "
                   f"{m['gold_gain'][i]:.3f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n![gold gain against d](overoptimization.png)\n"


def write_report(proxies: dict[str, dict], out: str | Path) -> tuple[dict, str]:
  """Writes `overoptimization.md` (`markdown`), `.json` ({"proxies": `proxies`}) and `.png` (`plot`)
  to the folder `out`; returns the JSON's content and the markdown."""
  out = Path(out)
  result, text = {"proxies": proxies}, markdown(proxies)
  files.atomic_write_bytes(out / "overoptimization.md", text.encode())
  files.atomic_write_text(out / "overoptimization.json", json.dumps(logs.json_ready(result), indent=2) + "\n")
  plot(proxies, out / "overoptimization.png")
  return result, text
