"""The reward-KL frontier of PPO, RLOO, online DPO and best-of-n on one task (Rafailov et al. 2023, fig. 2).

  rlhf-jax run experiments/reward_kl_frontier.py --workdir runs/frontier --set init_from=runs/lm
  rlhf-jax run experiments/reward_kl_frontier.py --smoke                                     # < 1 min on CPU

Every method starts from the same LM, continues the same WordNet openings, optimizes the same
reward (VADER, the gold labeler itself: the controlled-sentiment setting, where the frontier
measures optimization efficiency, not overoptimization) and is judged on the same held-out prompts
with the same KL estimate. Each is swept over its KL knob and the seeds, one `rlhf-jax run`
process and workdir per run (`<workdir>/<method>/<knob>=<value>,seed=<s>/`, as `rlhf-jax sweep`
lays them out: a rerun skips finished runs and resumes the others):

- `ppo`: sentiment_ppo with a fixed beta (`ppo.kl_coef`; the adaptive controller off);
- `rloo`: sentiment_pg's RLOO, K = 4 (`pg.kl_coef`);
- `dpo`: dpo_sentiment's online DPO, pairs sampled from the current policy and ranked by VADER (`dpo.beta`);
- `best-of-n`: best_of_n without fine-tuning (every n at once; KL = log n - (n-1)/n).

Writes `frontier.md` (each setting's KL and gold, mean ± 95% t-interval over seeds; gold at
matched KL), `frontier.json` (every point) and `frontier.png`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhf_jax import report, runs, sweep
from rlhf_jax.eval import frontier

HERE = Path(__file__).parent
METHODS = ("ppo", "rloo", "dpo", "best-of-n")


@dataclasses.dataclass(frozen=True)
class Config:
  init_from: str = ""  # an LM workdir; "" runs pretrain_tiny into <workdir>/lm first
  methods: tuple[str, ...] = METHODS
  seeds: tuple[int, ...] = (0, 1, 2)
  ppo_kl_coefs: tuple[float, ...] = (0.02, 0.1, 0.5)
  rloo_kl_coefs: tuple[float, ...] = (0.02, 0.1, 0.5)
  dpo_betas: tuple[float, ...] = (0.05, 0.1, 0.5)
  bon_n: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
  kl_bands: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)  # nats/seq, for gold at matched KL
  smoke_runs: bool = False  # run every method with its own --smoke config (tests)

  def __post_init__(self):
    unknown = [name for name in self.methods if name not in METHODS]
    if unknown or not self.methods:
      raise ValueError(f"methods: expected some of {list(METHODS)}, got {list(self.methods)}")


def get_config(smoke: bool = False) -> Config:
  if smoke:
    return Config(seeds=(0,), ppo_kl_coefs=(0.1,), rloo_kl_coefs=(0.1,), dpo_betas=(0.1,), bon_n=(1, 2, 4),
                  smoke_runs=True)
  return Config()


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  experiment: Path
  knob: str  # the config key swept, or frontier.STEP (each evaluation is a setting)
  values: tuple
  base: tuple[str, ...]  # overrides every run of the method gets


def methods(config: Config) -> list[Method]:
  """The methods named in `config.methods`, in that order."""
  known = {m.name: m for m in [
      Method("ppo", HERE / "sentiment_ppo.py", "ppo.kl_coef", config.ppo_kl_coefs, ("ppo.adaptive_kl=false",)),
      Method("rloo", HERE / "sentiment_pg.py", "pg.kl_coef", config.rloo_kl_coefs, ("rl.algorithm=rloo",)),
      Method("dpo", HERE / "dpo_sentiment.py", "dpo.beta", config.dpo_betas, ("dpo.kind=dpo",)),
      Method("best-of-n", HERE / "best_of_n.py", frontier.STEP, (None,),
             ("fine_tune=false", "bon.n=" + ",".join(map(str, config.bon_n)))),
  ]}
  return [known[name] for name in config.methods]


def plan(method: Method, seeds) -> list[sweep.Run]:
  settings = [{}] if method.knob == frontier.STEP else [{method.knob: v} for v in method.values]
  return sweep.plan([{**setting, "seed": seed} for setting in settings for seed in seeds])


def main(config: Config, workdir: Path) -> dict:
  workdir = Path(workdir)
  lm = Path(config.init_from) if config.init_from else workdir / "lm"
  if not config.init_from:
    runs.run_unless_done(HERE / "pretrain_tiny.py", lm, smoke=config.smoke_runs)
  stages = [runs.Stage(m.experiment, workdir / m.name, tuple(plan(m, config.seeds)),
                       (f"policy.init_from={lm.absolute()}", *m.base), label=m.name) for m in methods(config)]
  # The methods are independent: one's failed run does not stop the others.
  interrupted = runs.run_stages(stages, smoke=config.smoke_runs, keep_going=True)
  if interrupted:
    return {"interrupted": interrupted}  # `rlhf-jax run` exits 128 + signal; rerun to resume
  points = [p for m, stage in zip(methods(config), stages)
            for p in frontier.collect([report.load_run(stage.root / r.name) for r in stage.runs], m.name, m.knob)]
  knobs = {m.name: ("n" if m.knob == frontier.STEP else m.knob) for m in methods(config)}
  result, text = frontier.write_report(points, workdir, edges=config.kl_bands, knobs=knobs, seeds=config.seeds)
  print(text, flush=True)
  return result
