"""Tables and plots across runs: mean and 95% confidence interval over seeds.

  rlhf-jax report sweeps/dpo_sentiment                       # every run under the folder
  rlhf-jax report runs/a runs/b --metrics gold_score,kl --frontier kl,gold_score --out reports/ab

A run is a folder with `config.json` and `metrics.jsonl` (what `rlhf-jax run` writes). Runs are
grouped by the config keys that differ between them, leaving out `--over` (default `seed`): the
runs of a group are the seeds of one setting. For each group the report gives, per metric of the
final record of `--split` (default `eval`), the mean, a 95% Student-t interval and the number of
runs; `curves.png` plots the group means over steps with their intervals, and `frontier.png` one
metric against another (e.g. gold reward against KL). Written: `report.md`, `report.json`, PNGs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from rlhf_jax import config as config_lib
from rlhf_jax import files, logs
from rlhf_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class RunRecords:
  path: Path
  config: dict[str, Any]  # flattened: {"dpo.beta": 0.1, ...}
  records: list[dict]  # metrics.jsonl, one record per (split, step): a resumed run's last one wins


def load_run(path: str | Path) -> RunRecords:
  path = Path(path)
  for name in ("config.json", logs.METRICS_FILE):
    if not (path / name).is_file():
      raise FileNotFoundError(f"{path / name} not found: expected a run's workdir (config.json, metrics.jsonl)")
  by_key = {}
  for record in logs.read_metrics(path):
    by_key[(record.get("split"), record["step"])] = record
  records = sorted(by_key.values(), key=lambda r: (str(r.get("split")), r["step"]))
  return RunRecords(path=path, config=config_lib.flatten(json.loads((path / "config.json").read_text())), records=records)


def find_runs(paths: Sequence[str | Path]) -> list[RunRecords]:
  """The runs at or under `paths` (a folder that is a run is not searched further)."""
  found = []
  for root in map(Path, paths):
    if not root.is_dir():
      raise FileNotFoundError(f"{root} is not a folder: expected a run's workdir or a folder of runs")
    if (root / "config.json").is_file() and (root / logs.METRICS_FILE).is_file():
      found.append(root)
      continue
    runs = sorted(p.parent for p in root.rglob("config.json") if (p.parent / logs.METRICS_FILE).is_file())
    found.extend(r for r in runs if not any(o != r and o in r.parents for o in runs))
  if not found:
    raise FileNotFoundError(f"no runs (folders with config.json and metrics.jsonl) under {list(map(str, paths))}")
  return [load_run(p) for p in found]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
  """(mean, half-width of the Student-t interval, n); the half-width is nan for a single value."""
  x = np.asarray(values, np.float64)
  n = len(x)
  if n == 0:
    return math.nan, math.nan, 0
  if n == 1:
    return float(x[0]), math.nan, 1
  half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
  return float(x.mean()), float(half), n


def group_runs(runs: Sequence[RunRecords], over: Sequence[str] = ("seed",)) -> dict[str, list[RunRecords]]:
  """Runs keyed by the settings they differ in (`over` and run-local keys left out)."""
  keys = sorted({k for r in runs for k in r.config})
  varying = [k for k in keys if k not in over and len({repr(r.config.get(k)) for r in runs}) > 1]
  groups: dict[str, list[RunRecords]] = {}
  for run in runs:
    label = ",".join(f"{k}={_fmt_value(run.config.get(k))}" for k in varying) or "all"
    groups.setdefault(label, []).append(run)
  return groups


def _fmt_value(value) -> str:
  return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def final_metrics(run: RunRecords, split: str) -> dict[str, float]:
  rows = [r for r in run.records if r.get("split") == split]
  if not rows:
    return {}
  return {k: float(v) for k, v in rows[-1].items()
          if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def summarize(groups: dict[str, list[RunRecords]], split: str = "eval",
              metrics: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
  """{group: {metric: {"mean", "ci95", "n"}}} over each group's runs' final `split` records."""
  finals = {g: [final_metrics(r, split) for r in runs] for g, runs in groups.items()}
  if metrics is None:
    names = sorted({m for rows in finals.values() for row in rows for m in row})
  else:
    names = list(metrics)
    known = {m for rows in finals.values() for row in rows for m in row}
    missing = [m for m in names if m not in known]
    if missing:
      raise UserError(f"--metrics: no run has {missing} in its final {split!r} record; "
                       f"available: {sorted(known)}")
  out = {}
  for group, rows in finals.items():
    out[group] = {}
    for name in names:
      mean, half, n = mean_ci([row[name] for row in rows if name in row])
      out[group][name] = {"mean": mean, "ci95": half, "n": n}
  return out


def markdown_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
  names = list(next(iter(summary.values())).keys()) if summary else []
  lines = ["| setting | runs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  for group, cells in summary.items():
    n = max((c["n"] for c in cells.values()), default=0)
    text = []
    for c in cells.values():
      if c["n"] == 0:
        text.append("-")
      elif math.isnan(c["ci95"]):
        text.append(f"{c['mean']:.4g}")
      else:
        text.append(f"{c['mean']:.4g} ± {c['ci95']:.2g}")
    lines.append(f"| {group} | {n} | " + " | ".join(text) + " |")
  return "\n".join(lines) + "\n"


def curves(groups: dict[str, list[RunRecords]], split: str, name: str) -> dict[str, dict[str, list[float]]]:
  """Per group, the steps every run logged `name` at, with the mean and 95% interval there."""
  out = {}
  for group, runs in groups.items():
    series = [{r["step"]: r[name] for r in run.records if r.get("split") == split and
               isinstance(r.get(name), (int, float))} for run in runs]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    stats_ = [mean_ci([s[t] for s in series]) for t in steps]
    out[group] = {"step": steps, "mean": [m for m, _, _ in stats_], "ci95": [h for _, h, _ in stats_]}
  return out


def plot_curves(groups, split: str, names: Sequence[str], out: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
  for ax, name in zip(axes[0], names):
    for group, c in curves(groups, split, name).items():
      mean, half = np.asarray(c["mean"]), np.nan_to_num(np.asarray(c["ci95"]))
      (line,) = ax.plot(c["step"], mean, marker="o" if split == "eval" else None, label=group)
      ax.fill_between(c["step"], mean - half, mean + half, alpha=0.2, color=line.get_color())
    ax.set(title=f"{split} {name}", xlabel="step")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def plot_frontier(groups, split: str, x: str, y: str, out: Path) -> None:
  """Each run a faint point, each group its mean with 95% intervals on both axes."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for group, runs in groups.items():
    finals = [final_metrics(r, split) for r in runs]
    xs = [f[x] for f in finals if x in f and y in f]
    ys = [f[y] for f in finals if x in f and y in f]
    if not xs:
      continue
    (mx, hx, _), (my, hy, _) = mean_ci(xs), mean_ci(ys)
    line = ax.errorbar(mx, my, xerr=np.nan_to_num(hx), yerr=np.nan_to_num(hy), marker="o", capsize=3, label=group)
    ax.scatter(xs, ys, alpha=0.3, s=12, color=line[0].get_color())
  ax.set(xlabel=x, ylabel=y, title=f"{y} against {x} (final {split})")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def write_report(paths: Sequence[str | Path], out: str | Path, *, split: str = "eval",
                 metrics: Sequence[str] | None = None, over: Sequence[str] = ("seed",),
                 curve_metrics: Sequence[str] | None = None,
                 frontier: tuple[str, str] | None = None) -> dict[str, Any]:
  """Finds the runs, writes `report.md`, `report.json`, `curves.png` (and `frontier.png`) to `out`."""
  runs = find_runs(paths)
  groups = group_runs(runs, over)
  summary = summarize(groups, split, metrics)
  names = list(next(iter(summary.values())).keys())
  if not names:
    raise UserError(f"no run has a {split!r} record with numbers: try --split train")
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  if frontier is None and {"kl", "gold_score"} <= set(names):
    frontier = ("kl", "gold_score")
  written = ["report.md", "report.json", "curves.png"]
  plot_curves(groups, split, list(curve_metrics or names[:3]), out / "curves.png")
  if frontier is not None:
    missing = [m for m in frontier if m not in names]
    if missing:
      raise UserError(f"--frontier: {missing} not among the {split!r} metrics {names}")
    plot_frontier(groups, split, *frontier, out / "frontier.png")
    written.append("frontier.png")
  result = {"split": split, "over": list(over), "runs": {g: [str(r.path) for r in rs] for g, rs in groups.items()},
            "summary": summary}
  files.atomic_write_text(out / "report.json", json.dumps(logs.json_ready(result), indent=2) + "\n")
  text = (f"# Report: {len(runs)} runs in {len(groups)} settings\n\n"
          f"Final `{split}` metrics: mean ± 95% Student-t interval over {', '.join(over)}.\n\n"
          + markdown_table(summary) + "\n" + "".join(f"![{f}]({f})\n" for f in written if f.endswith(".png")))
  files.atomic_write_text(out / "report.md", text)
  return {"files": written, **result}
