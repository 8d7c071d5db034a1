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
4. fits (`eval.overoptimization_fits`), per proxy over the seeds: the gold reward gained over the
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

from rlhf_jax import runs, sweep
from rlhf_jax.eval import overoptimization_fits

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


def _proxies(config: Config, lm_sizes: dict[int, Path]) -> dict[str, list[sweep.Run]]:
  """Every proxy by its name without the seed: its run of each seed."""
  proxies = {}
  for size in config.rm_sizes:
    for prompts in config.proxy_prompts:
      proxies[f"d{size},prompts={prompts}"] = [sweep.Run.of(f"d{size},prompts={prompts},seed={seed}", {
          "reward.init_from": lm_sizes[size].absolute(), "policy.num_prompts": prompts, "labeler.seed": seed,
          "labeler.beta": config.labeler_beta, "seed": seed}) for seed in config.seeds]
  return proxies


def _lm_sizes(config: Config, lm: Path, workdir: Path) -> dict[int, Path]:
  """d_model -> an LM workdir of that size: the policy's LM where it fits, else one pretrained here."""
  base_d = json.loads((lm / "config.json").read_text())["model"]["d_model"]
  out = {size: lm if size == base_d else workdir / f"lm_d{size}" for size in config.rm_sizes}
  for size in (s for s in config.rm_sizes if out[s] != lm):
    layers = max(size // 32, 1)
    runs.run_unless_done(HERE / "pretrain_tiny.py", out[size], smoke=config.smoke_runs, overrides=[
        f"model.d_model={size}", f"model.n_layers={layers}", f"model.n_heads={layers}"])
  return out


def stages(config: Config, workdir: Path, lm: Path, proxies: dict[str, list[sweep.Run]]) -> list[runs.Stage]:
  """Gold, proxies, then best-of-n and PPO against each proxy (same run name and seed), judged by the gold."""
  gold = f"rm:{(workdir / 'gold').absolute()}"
  proxy_runs = tuple(r for seeds in proxies.values() for r in seeds)
  against = tuple(sweep.Run.of(r.name, {"task.reward": f"rm:{(workdir / 'proxy' / r.name).absolute()}",
                                        "seed": r.name.rsplit("=", 1)[1]}) for r in proxy_runs)
  # Best-of-n and PPO share the task: the policy, the proxy read with the prompt, the gold as judge.
  common = (f"policy.init_from={lm.absolute()}", "task.reward_with_prompt=true", f"task.gold={gold}")
  bon_n = ",".join(str(2 ** i) for i in range(int(math.log2(config.bon_max)) + 1))
  return [runs.Stage(HERE / "reward_fine_foods.py", workdir, (sweep.Run("gold", ()),),
                     (f"reward.init_from={lm.absolute()}",)),
          runs.Stage(HERE / "reward_simulated.py", workdir / "proxy", proxy_runs,
                     (f"policy.init_from={lm.absolute()}", f"labeler.scorer={gold}")),
          runs.Stage(HERE / "best_of_n.py", workdir / "bon", against, (*common, "fine_tune=false", f"bon.n={bon_n}")),
          runs.Stage(HERE / "sentiment_ppo.py", workdir / "ppo", against,
                     (*common, "ppo.adaptive_kl=false", f"ppo.kl_coef={config.ppo_kl_coef}",
                      f"loop.steps={config.ppo_steps}", f"loop.eval_every={config.ppo_eval_every}"))]


def main(config: Config, workdir: Path) -> dict:
  workdir = Path(workdir)
  lm = Path(config.init_from) if config.init_from else workdir / "lm"
  if not config.init_from:
    runs.run_unless_done(HERE / "pretrain_tiny.py", lm, smoke=config.smoke_runs)
  proxies = _proxies(config, _lm_sizes(config, lm, workdir))
  interrupted = runs.run_stages(stages(config, workdir, lm, proxies), smoke=config.smoke_runs)
  if interrupted:
    return {"interrupted": interrupted}  # `rlhf-jax run` exits 128 + signal; rerun to resume
  entries = {}
  for name, seeds in proxies.items():  # each proxy's runs, and the runs against them of each method
    entries[name] = overoptimization_fits.proxy_entry([workdir / "proxy" / r.name for r in seeds], {
        m: [workdir / m / r.name for r in seeds] for m in overoptimization_fits.FORMS})
  result, text = overoptimization_fits.write_report(entries, workdir)
  print(text, flush=True)
  return result
