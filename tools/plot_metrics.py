"""Plot training curves of one or more workdirs from their metrics.jsonl.

  python tools/plot_metrics.py workdirs/pretrain_tiny [more workdirs] --out curves.png

One panel per metric: train loss (and any --metric given) over steps, and the held-out
perplexity of each evaluation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from rlhf_jax import logs  # noqa: E402


def plot(workdirs: list[Path], out: Path, metrics: list[tuple[str, str]]) -> None:
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
  for ax, (split, name) in zip(axes[0], metrics):
    for workdir in workdirs:
      rows = [r for r in logs.read_metrics(workdir, split) if isinstance(r.get(name), (int, float))]
      if not rows:
        raise ValueError(f"{workdir}/{logs.METRICS_FILE} has no {split!r} records with {name!r}")
      ax.plot([r["step"] for r in rows], [r[name] for r in rows], marker="o" if split == "eval" else None,
              label=workdir.name)
    ax.set_title(f"{split} {name}")
    ax.set_xlabel("step")
    if name == "perplexity":
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", type=Path)
  parser.add_argument("--out", type=Path, default=Path("curves.png"))
  parser.add_argument("--metric", action="append", default=[], metavar="SPLIT/NAME",
                      help="extra panels, e.g. train/grad_norm (repeatable)")
  args = parser.parse_args(argv)
  metrics = [("train", "loss"), ("eval", "perplexity")] + [tuple(m.split("/", 1)) for m in args.metric]
  plot(args.workdirs, args.out, metrics)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
