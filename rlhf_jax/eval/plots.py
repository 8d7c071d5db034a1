"""Plots of training runs from their metrics.jsonl (matplotlib, written to PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from rlhf_jax import logs  # noqa: E402


def plot_metrics(workdirs: list[Path], out: Path, metrics: list[tuple[str, str]],
                 labels: list[str] | None = None) -> None:
  """One panel per (split, name) in `metrics`, one line per workdir, saved to `out`."""
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
  for ax, (split, name) in zip(axes[0], metrics):
    for workdir in workdirs:
      rows = [r for r in logs.read_metrics(workdir, split) if isinstance(r.get(name), (int, float))]
      if not rows:
        raise ValueError(f"{workdir}/{logs.METRICS_FILE} has no {split!r} records with {name!r}")
      ax.plot([r["step"] for r in rows], [r[name] for r in rows], marker="o" if split == "eval" else None,
              label=(labels[workdirs.index(workdir)] if labels else Path(workdir).name))
    ax.set_title(f"{split} {name}")
    ax.set_xlabel("step")
    if name == "perplexity":
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
