"""The report of a whole RLHF pipeline, as the quickstart runs it: a pretrained LM, a reward model
learned from simulated feedback (`reward_simulated`), PPO against it (the RL trainer) and the
evaluation harness on the policy before and after.

`summarize` reads each stage back from its workdir (`metrics.jsonl`; the RL trainer's
`samples.jsonl`) and takes `harness.evaluate`'s result; `write_report` writes `report.json`,
`report.md` and `reward_kl.png` (PPO's reward and KL over its updates).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_jax import files, logs
from rlhf_jax.eval.plots import plot_metrics


def summarize(lm: str | Path, reward: str | Path, ppo: str | Path, evaluation: dict) -> dict:
  """Each stage's final numbers, PPO's before and after, the same prompts' samples before and after
  PPO, and the evaluation's numbers (each scorer's mean instead of its values)."""
  lm_eval, rm_eval = logs.read_metrics(lm, "eval"), logs.read_metrics(reward, "eval")
  ppo_eval = logs.read_metrics(ppo, "eval")
  before, after = ppo_eval[0], ppo_eval[-1]
  samples = [json.loads(line) for line in (Path(ppo) / "samples.jsonl").read_text().splitlines()]
  first, last = samples[0]["step"], samples[-1]["step"]
  return {
      "lm": {"validation_perplexity": lm_eval[-1]["perplexity"], "steps": lm_eval[-1]["step"]},
      "reward_model": {"heldout_accuracy_vs_noiseless_labeler": rm_eval[-1]["accuracy_vs_noiseless"],
                       "heldout_accuracy_vs_labels": rm_eval[-1]["accuracy_vs_labels"],
                       "label_agreement_with_noiseless": rm_eval[-1]["label_agreement_with_noiseless"],
                       "heldout_pairs": rm_eval[-1]["pairs"]},
      "ppo": {"updates": after["step"], "gold_before": before["gold_score"], "gold_after": after["gold_score"],
              "proxy_before": before["proxy_score"], "proxy_after": after["proxy_score"], "kl_after": after["kl"],
              "response_length_after": after["response_length"], "eos_rate_after": after["eos_rate"]},
      "samples": [{"prompt": b["prompt"], "before": b["completion"], "after": a["completion"]}
                  for b, a in zip([s for s in samples if s["step"] == first],
                                  [s for s in samples if s["step"] == last])],
      "eval": {"runs": [{k: v for k, v in r.items() if k != "scores"} | {
                   "scores": {name: s["mean"] for name, s in r["scores"].items()}} for r in evaluation["runs"]],
               "head_to_head": evaluation["head_to_head"]},
  }


def markdown(r: dict) -> str:
  """The report of a `summarize` result: a table of the stages, the samples, the evaluation."""
  p = r["ppo"]
  lines = [
      "# Quickstart report", "",
      "| stage | result |", "|---|---|",
      f"| pretraining | validation perplexity {r['lm']['validation_perplexity']:.1f} after {r['lm']['steps']} steps |",
      f"| reward model | held-out pairwise accuracy {r['reward_model']['heldout_accuracy_vs_noiseless_labeler']:.3f} "
      f"against the noiseless labeler ({r['reward_model']['heldout_pairs']:.0f} pairs) |",
      f"| PPO, gold (VADER) score | {p['gold_before']:.3f} -> {p['gold_after']:.3f} |",
      f"| PPO, proxy (reward model) score | {p['proxy_before']:.3f} -> {p['proxy_after']:.3f} |",
      f"| PPO, KL to the reference (nats/sequence) | {p['kl_after']:.2f} |", "",
      "## Samples (same prompt and seed, before -> after PPO)", "",
  ]
  lines += [f"- *{s['prompt']}* | before: {s['before']!r} | after: {s['after']!r}" for s in r["samples"]]
  base, tuned = r["eval"]["runs"]
  lines += ["", "## Evaluation (`eval/eval.md` has every number)", "",
            "| policy | " + " | ".join(f"{n} (mean)" for n in base["scores"]) + " | KL | distinct-1 | self-BLEU | "
            "perplexity |", "|---|" + "---|" * (len(base["scores"]) + 4)]
  for name, run in (("pretrained", base), ("PPO", tuned)):
    lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in run["scores"].values())
                 + f" | {run['kl']:.2f} | {run['distinct_1']:.3f} | {run['self_bleu']:.3f} | {run['perplexity']:.1f} |")
  lines += ["", "Win rate of the pretrained policy against PPO's, same prompts (95% bootstrap interval):", ""]
  for judge, w in r["eval"]["head_to_head"][0].items():
    if isinstance(w, dict) and w["n"]:
      lines.append(f"- {judge}: {w['win_rate']:.3f} ({w['ci_low']:.3f} - {w['ci_high']:.3f}), n = {w['n']}")
  return "\n".join(lines) + "\n"


def write_report(lm: str | Path, reward: str | Path, ppo: str | Path, evaluation: dict,
                 out: str | Path) -> tuple[dict, str]:
  """Writes `report.json` (`summarize`), `report.md` (`markdown`) and `reward_kl.png` to the folder
  `out`; returns the JSON's content and the markdown."""
  out = Path(out)
  result = logs.json_ready(summarize(lm, reward, ppo, evaluation))  # JSON has no NaN
  text = markdown(result)
  files.atomic_write_bytes(out / "report.json", (json.dumps(result, indent=2) + "\n").encode())
  files.atomic_write_bytes(out / "report.md", text.encode())
  plot_metrics([Path(ppo)], out / "reward_kl.png",
               [("train", "score"), ("train", "kl"), ("eval", "gold_score"), ("eval", "kl")], labels=["PPO"])
  return result, text
