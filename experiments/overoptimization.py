"""Reward-model overoptimization with a gold reward model (Gao, Schulman & Hilton 2022), offline.

  rlhf-jax run experiments/overoptimization.py --workdir runs/overopt --set init_from=runs/lm
  rlhf-jax run experiments/overoptimization.py --smoke                                 # tests

The synthetic setup of Gao et al.: a gold reward model stands in for people, proxies learn from
its labels, and optimizing a proxy is judged by the gold.

1. gold: `reward_fine_foods` on the LM's trunk, a reward model of real people's ratings of
   Amazon fine foods (great vs other), scoring responses;
2. proxies: `reward_simulated` with the gold as its labeler (`labeler.scorer=rm:GOLD`, noiseless
   unless `labeler_beta` says otherwise): two continuations of each of `proxy_prompts` WordNet
   openings from the LM, compared by the gold, train a Bradley-Terry proxy on a trunk of each size
   in `rm_sizes` (d_model; n_layers = d_model / 32; a size that is not the LM's pretrains its own);
3. against every proxy and seed: best-of-n (`best_of_n`, n up to `bon_max`, KL = log n - (n-1)/n)
   and PPO (`sentiment_ppo`, fixed beta `ppo_kl_coef`), the gold judging the held-out prompts;
4. fits (`eval.overoptimization`), per proxy over the seeds: the gold reward gained over the
   initial policy against d = sqrt(KL), R_bon(d) = d (alpha - beta d) for best-of-n and
   R_RL(d) = d (alpha - beta log d) for PPO's evaluations along training.

Every stage is a run of its own (`<workdir>/gold`, `lm_d64`, `proxy/<name>`, `bon/<name>`,
`ppo/<name>`), started as `rlhf-jax run` and skipped once done, so a rerun resumes where it
stopped. Writes `overoptimization.md`, `.json` and `.png`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from rlhf_jax import logs, report, sweep
from rlhf_jax.data.corpora import atomic_write_bytes
from rlhf_jax.eval import overoptimization
from rlhf_jax.runs import load_experiment, run_experiment

HERE = Path(__file__).parent


@dataclasses.dataclass(frozen=True)
class Config:
  init_from: str = ""  # the LM (policy, gold and proxy trunk); "" runs pretrain_tiny into <workdir>/lm
  seeds: tuple[int, ...] = (0, 1, 2)  # proxy data and labels, sampling, PPO
  rm_sizes: tuple[int, ...] = (64, 128)  # proxy trunks' d_model
  proxy_prompts: tuple[int, ...] = (512, 4096)  # comparisons per proxy: one pair per prompt
  labeler_beta: float = math.inf  # Bradley-Terry noise of the gold labeler (inf: always the higher score)
  bon_max: int = 64
  ppo_kl_coef: float = 0.01
  ppo_steps: int = 100
  # PPO at beta 0.01 spends ~20 nats in its first 25 iterations: evaluating every 5 puts points
  # at d = 1..4 too, where the RL fit's rise and turn are decided.
  ppo_eval_every: int = 5
  smoke_runs: bool = False  # every stage with its own --smoke config (tests)


def get_config(smoke: bool = False) -> Config:
  if smoke:
    return Config(seeds=(0,), rm_sizes=(32, 64), proxy_prompts=(48,), bon_max=4, ppo_steps=6, ppo_eval_every=2,
                  smoke_runs=True)
  return Config()


def _run(name: str, **overrides) -> sweep.Run:
  return sweep.Run(name, tuple(f"{k}={v}" for k, v in overrides.items()))


def _proxies(config: Config, lm_sizes: dict[int, Path]) -> list[tuple[str, sweep.Run]]:
  """(name without seed, run) of every proxy."""
  out = []
  for size in config.rm_sizes:
    for prompts in config.proxy_prompts:
      for seed in config.seeds:
        base = f"d{size},prompts={prompts}"
        out.append((base, _run(f"{base},seed={seed}", **{"reward.init_from": lm_sizes[size].absolute(),
                                                          "policy.num_prompts": prompts, "labeler.seed": seed,
                                                          "labeler.beta": config.labeler_beta, "seed": seed})))
  return out


def _stage(config: Config, experiment: str, root: Path, runs: list[sweep.Run], base: list[str]) -> bool:
  """Runs the unfinished runs of one stage: True when all are done, False when a signal stopped
  them; a failure stops the experiment (a rerun retries it)."""
  path = HERE / experiment
  sweep.check_configs(load_experiment(path), runs, base, config.smoke_runs)
  outcomes = sweep.run_all(path, root, runs, base=base, smoke=config.smoke_runs)
  if "interrupted" in outcomes.values():
    return False
  bad = {name: o for name, o in outcomes.items() if not o.startswith(("done", "skipped"))}
  if bad:
    raise RuntimeError(f"{experiment}: runs did not finish (rerun the same command to resume): {bad}")
  return True


def _lm_sizes(config: Config, lm: Path, workdir: Path) -> dict[int, Path]:
  """d_model -> an LM workdir of that size: the policy's LM where it fits, else one pretrained here."""
  base_d = json.loads((lm / "config.json").read_text())["model"]["d_model"]
  out = {}
  for size in config.rm_sizes:
    if size == base_d:
      out[size] = lm
      continue
    out[size] = workdir / f"lm_d{size}"
    if sweep.status(out[size]) != "done":
      run_experiment(HERE / "pretrain_tiny.py", smoke=config.smoke_runs, workdir=out[size], overrides=[
          f"model.d_model={size}", f"model.n_layers={max(size // 32, 1)}", f"model.n_heads={max(size // 32, 1)}"])
  return out


def main(config: Config, workdir: Path) -> dict:
  workdir = Path(workdir)
  lm = Path(config.init_from) if config.init_from else workdir / "lm"
  if not config.init_from and sweep.status(lm) != "done":
    run_experiment(HERE / "pretrain_tiny.py", smoke=config.smoke_runs, workdir=lm)
  lm_sizes = _lm_sizes(config, lm, workdir)
  gold = f"rm:{(workdir / 'gold').absolute()}"
  proxies = _proxies(config, lm_sizes)
  # Against each proxy run, same name and seed: best-of-n and PPO, judged by the gold.
  def optimize(reward_key: str) -> list[sweep.Run]:
    return [_run(r.name, **{reward_key: f"rm:{(workdir / 'proxy' / r.name).absolute()}",
                            "seed": r.name.rsplit("=", 1)[1]}) for _, r in proxies]
  common = [f"policy.init_from={lm.absolute()}", "reward.with_prompt=true"]
  bon_n = ",".join(str(2 ** i) for i in range(int(math.log2(config.bon_max)) + 1))
  stages = [
      ("reward_fine_foods.py", workdir, [_run("gold")], [f"reward.init_from={lm.absolute()}"]),
      ("reward_simulated.py", workdir / "proxy", [r for _, r in proxies],
       [f"policy.init_from={lm.absolute()}", f"labeler.scorer={gold}"]),
      ("best_of_n.py", workdir / "bon", optimize("reward.scorer"),
       [*common, f"reward.gold={gold}", "rsft.steps=0", f"bon.n={bon_n}"]),
      ("sentiment_ppo.py", workdir / "ppo", optimize("task.reward"),
       [f"policy.init_from={lm.absolute()}", "task.reward_with_prompt=true", f"task.gold={gold}",
        "ppo.adaptive_kl=false", f"ppo.kl_coef={config.ppo_kl_coef}", f"loop.steps={config.ppo_steps}",
        f"loop.eval_every={config.ppo_eval_every}"]),
  ]
  for experiment, root, runs, base in stages:
    if not _stage(config, experiment, root, runs, base):
      return {"interrupted": experiment}  # `rlhf-jax run` exits 128 + signal; rerun to resume

  result = {"proxies": {}}
  for name in dict.fromkeys(n for n, _ in proxies):
    runs = [r.name for n, r in proxies if n == name]
    entry = {"proxy_accuracy": _final_mean(workdir / "proxy", runs, "accuracy_vs_noiseless")}
    for method, form in (("bon", "bon"), ("ppo", "rl")):
      d, gain, proxy = gold_gains([report.load_run(workdir / method / r) for r in runs])
      entry[method] = {"d": d.tolist(), "gold_gain": gain.tolist(), "proxy_gain": proxy.tolist(),
                       "fit": overoptimization.fit(d, gain, form) if len(d) >= 3 else None}
    result["proxies"][name] = entry
  text = markdown(result)
  atomic_write_bytes(workdir / "overoptimization.md", text.encode())
  atomic_write_bytes(workdir / "overoptimization.json", (json.dumps(logs.json_ready(result), indent=2) + "\n").encode())
  overoptimization.plot(result["proxies"], workdir / "overoptimization.png")
  print(text, flush=True)
  return result


def gold_gains(runs: list[report.RunRecords]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _final_mean(root: Path, names: list[str], metric: str) -> float:
  return float(np.mean([report.final_metrics(report.load_run(root / n), "eval")[metric] for n in names]))


def markdown(result: dict) -> str:
  lines = ["# Reward-model overoptimization", "",
           "Gold gain = gold reward minus the initial policy's; d = sqrt(KL) in sqrt(nats). Fits by least squares "
           "over every seed's points: best-of-n R(d) = d (alpha - beta d), peak at d* = alpha / (2 beta); "
           "RL R(d) = d (alpha - beta log d), peak at d* = exp(alpha / beta - 1).", "",
           "| proxy | accuracy vs gold | method | points | max d | gold gain at max d | alpha | beta | R^2 | d* |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, entry in result["proxies"].items():
    for method in ("bon", "ppo"):
      m, fit = entry[method], entry[method]["fit"]
      i = int(np.argmax(m["d"]))
      cells = ["-"] * 4
      if fit is not None:
        cells = [f"{fit['alpha']:.3f}", f"{fit['beta']:.3f}", f"{fit['r2']:.2f}", "none (beta <= 0)"]
        if fit["beta"] > 0:  # the gain turns down: the proxy is overoptimized past d*
          peak = fit["alpha"] / (2 * fit["beta"]) if method == "bon" else math.exp(fit["alpha"] / fit["beta"] - 1)
          cells[3] = f"{peak:.3g}"
      lines.append(f"| {name} | {entry['proxy_accuracy']:.3f} | {method} | {len(m['d'])} | {m['d'][i]:.2f} | "
                   f"{m['gold_gain'][i]:.3f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n![gold gain against d](overoptimization.png)\n"
