"""Several seeds of experiments/qa_experts.py as one table (mean ± sd over seeds) and one plot.

  python tools/qa_summary.py /tmp/qa/seed0 /tmp/qa/seed1 /tmp/qa/seed2 --out docs/reproductions

Reads each workdir's `qa_eval.json`, prints the markdown table (for the reproduction page) and
writes `<out>/img/qa_experts.png`: accuracy and satisfaction against KL to the SFT policy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlhf_jax import logs
from rlhf_jax.rl import qa


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", help="qa_experts.py workdirs, one per seed")
  parser.add_argument("--out", default="docs/reproductions")
  args = parser.parse_args()
  results, agreements = [], []
  for workdir in args.workdirs:
    path = Path(workdir) / "qa_eval.json"
    if not path.is_file():
      parser.error(f"{path} not found: expected a finished experiments/qa_experts.py run")
    results.append(json.loads(path.read_text()))
    agreements.append(qa.agreement(logs.read_metrics(Path(workdir) / "reward", "eval")[-1]))
  table = qa.summary(results)
  text = qa.markdown(table, runs=len(results)) + "\n" + qa.agreement_markdown(agreements)
  out = Path(args.out)
  (out / "img").mkdir(parents=True, exist_ok=True)
  qa.plot(table, out / "img" / "qa_experts.png")
  print(text)
  print(f"wrote {out / 'img' / 'qa_experts.png'}")


if __name__ == "__main__":
  main()
