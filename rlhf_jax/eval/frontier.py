"""Reward-KL frontiers: gold reward against KL(pi || pi_ref) across methods (Rafailov et al. 2023,
"Direct Preference Optimization", fig. 2 left; Gao et al. 2022 plot the same axes).

Every evaluation of every run is a point (KL per sequence, gold score). A method's runs differ in
its KL knob (PPO's beta, DPO's beta, best-of-n's n) and seed; the knob's settings give the
frontier's mean points, and gold at matched KL compares methods where they reach the same KL.
Runs are what `rlhf-jax run` writes (`config.json`, `metrics.jsonl` with split "eval" records
holding `kl` and `gold_score`), read with `report.find_runs`. `write_report` writes the tables,
every point and the plot: `frontier.md`, `frontier.json`, `frontier.png`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from rlhf_jax import files, logs, report

STEP = "step"  # the knob of experiments whose evaluations are settings of their own (best-of-n's n)


@dataclasses.dataclass(frozen=True)
class Point:
  method: str
  setting: float  # the knob's value
  seed: int
  step: int
  kl: float
  gold: float
  final: bool  # the run's last evaluation (always true when the knob is the step)


def collect(runs: Sequence[report.RunRecords], method: str, knob: str, *, kl: str = "kl",
            gold: str = "gold_score") -> list[Point]:
  """The evaluation points of one method's runs; `knob` is a config key or `STEP`."""
  points = []
  for run in runs:
    rows = [r for r in run.records if r.get("split") == "eval" and _number(r.get(kl)) and _number(r.get(gold))]
    if not rows:
      raise ValueError(f"{run.path}: no 'eval' record with {kl!r} and {gold!r} in {run.path / 'metrics.jsonl'}")
    if knob != STEP and knob not in run.config:
      raise ValueError(f"{run.path}/config.json has no {knob!r}: expected the method's KL knob")
    for i, r in enumerate(rows):
      points.append(Point(method=method, setting=float(r["step"] if knob == STEP else run.config[knob]),
                          seed=int(run.config.get("seed", 0)), step=int(r["step"]), kl=float(r[kl]),
                          gold=float(r[gold]), final=knob == STEP or i == len(rows) - 1))
  return points


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def by_setting(points: Sequence[Point]) -> dict[str, list[dict]]:
  """Per method, per knob setting (ascending): KL and gold of the final points, mean ± 95% t-interval
  over seeds."""
  out: dict[str, list[dict]] = {}
  for method in _methods(points):
    finals = [p for p in points if p.method == method and p.final]
    rows = []
    for setting in sorted({p.setting for p in finals}):
      group = [p for p in finals if p.setting == setting]
      (kl, kl_ci, n), (gold, gold_ci, _) = report.mean_ci([p.kl for p in group]), report.mean_ci([p.gold for p in group])
      rows.append({"setting": setting, "n": n, "kl": kl, "kl_ci95": kl_ci, "gold": gold, "gold_ci95": gold_ci})
    out[method] = rows
  return out


def matched_kl(points: Sequence[Point], edges: Sequence[float]) -> dict[str, list[dict]]:
  """Per method, per KL band [edges[i], edges[i+1]): the mean gold of every point in the band
  (all settings, seeds and evaluations), the band's mean KL and the number of points.

  Points of one run are not independent samples, so the interval is a spread, not a test.
  """
  edges = list(edges)
  if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
    raise ValueError(f"kl bands: expected at least two increasing edges, got {edges}")
  out = {}
  for method in _methods(points):
    mine = [p for p in points if p.method == method]
    rows = []
    for lo, hi in zip(edges, edges[1:]):
      band = [p for p in mine if lo <= p.kl < hi]
      gold, ci, n = report.mean_ci([p.gold for p in band])
      rows.append({"lo": lo, "hi": hi, "n": n, "gold": gold, "gold_ci95": ci,
                   "kl": float(np.mean([p.kl for p in band])) if band else math.nan})
    out[method] = rows
  return out


def _methods(points: Sequence[Point]) -> list[str]:
  return list(dict.fromkeys(p.method for p in points))  # first-seen order


def markdown(points: Sequence[Point], edges: Sequence[float], knobs: dict[str, str]) -> str:
  """The two tables: each method's settings, and gold at matched KL."""
  lines = ["| method | knob | runs | KL (nats/seq) | gold |", "|---|---|---|---|---|"]
  for method, rows in by_setting(points).items():
    for r in rows:
      lines.append(f"| {method} | {knobs.get(method, 'setting')}={r['setting']:g} | {r['n']} | "
                   f"{_pm(r['kl'], r['kl_ci95'])} | {_pm(r['gold'], r['gold_ci95'], 3)} |")
  bands = matched_kl(points, edges)
  header = [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges, edges[1:])]
  lines += ["", "Gold at matched KL: mean over every evaluation whose KL falls in the band (mean KL, points).", "",
            "| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
  for method, rows in bands.items():
    cells = [f"{r['gold']:.3f} ({r['kl']:.1f}, {r['n']})" if r["n"] else "-" for r in rows]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _pm(mean: float, half: float, digits: int = 2) -> str:
  return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def plot(points: Sequence[Point], out: str | Path, *, title: str = "gold reward against KL") -> None:
  """Every evaluation a faint dot; each setting's final mean with 95% intervals, joined by KL."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for method, rows in by_setting(points).items():
    rows = sorted(rows, key=lambda r: r["kl"])
    line = ax.errorbar([r["kl"] for r in rows], [r["gold"] for r in rows],
                       xerr=np.nan_to_num([r["kl_ci95"] for r in rows]),
                       yerr=np.nan_to_num([r["gold_ci95"] for r in rows]), marker="o", capsize=3, label=method)
    mine = [p for p in points if p.method == method]
    ax.scatter([p.kl for p in mine], [p.gold for p in mine], s=8, alpha=0.25, color=line[0].get_color())
  ax.set_xscale("symlog", linthresh=1.0)
  ax.set(xlabel="KL(pi || pi_ref), nats per sequence", ylabel="gold reward", title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def write_report(points: Sequence[Point], out: str | Path, *, edges: Sequence[float], knobs: dict[str, str],
                 seeds: Sequence[int]) -> tuple[dict, str]:
  """Writes `frontier.md` (`markdown`'s tables), `frontier.json` (every point, each setting, gold at
  matched KL) and `frontier.png` to the folder `out`; returns the JSON's content and the markdown."""
  out = Path(out)
  text = ("# Reward-KL frontier\n\nFinal evaluation of each setting: mean ± 95% t-interval over seeds "
          f"{list(seeds)}.\n\n" + markdown(points, edges, knobs) + "\n![frontier](frontier.png)\n")
  files.atomic_write_bytes(out / "frontier.md", text.encode())
  result = {"points": [dataclasses.asdict(p) for p in points], "by_setting": by_setting(points),
            "matched_kl": matched_kl(points, edges)}
  files.atomic_write_bytes(out / "frontier.json", (json.dumps(logs.json_ready(result), indent=2) + "\n").encode())
  plot(points, out / "frontier.png")
  return result, text
