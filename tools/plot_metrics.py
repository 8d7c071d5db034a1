"""Plot training curves of one or more workdirs from their metrics.jsonl.

  python tools/plot_metrics.py workdirs/pretrain_tiny [more workdirs] --out curves.png

One panel per metric: train loss (and any --metric given) over steps, and the held-out
perplexity of each evaluation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlhf_jax.eval.plots import plot_metrics as plot


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
