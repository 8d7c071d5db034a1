"""Best-of-n sampling and rejection-sampling fine-tuning against a reward, judged by a gold labeler.

  rlhf-jax run experiments/best_of_n.py --set policy.init_from=workdirs/lm --set task.reward=rm:workdirs/rm \
      --set task.reward_with_prompt=true
  rlhf-jax run experiments/best_of_n.py --set policy.init_from=workdirs/lm --set fine_tune=false --set bon.n=1,4,16,64
  rlhf-jax run experiments/best_of_n.py --smoke                                         # < 1 min on CPU

The task is sentiment_ppo's (WordNet openings, the reward `task.reward`, the gold `task.gold`,
the same held-out prompts). Best-of-n (`rl.evaluate_best_of_n`): for each held-out prompt a pool
of max(bon.n) samples of the starting policy; for every n the expected gold and proxy score of the
reward-best of n samples, averaged over all n-subsets of the pool (the unbiased estimator of
Nakano et al. 2021 that Gao et al. 2022 use), next to the KL bound log n - (n-1)/n and a plug-in
KL measured on the reward's values (far below the bound when the reward ties). Each n is an
evaluation at step n in the run's metrics.jsonl, where `rlhf-jax report` reads it.

Rejection-sampling fine-tuning (`fine_tune=true`, in `<workdir>/rsft`): the RL trainer with
`rl.algorithm=rsft` (RAFT, Dong et al. 2023): every iteration the best of `rsft.n` samples of each
of rl.batch_size / rsft.n training prompts becomes an SFT target for one update; its evaluations
(gold, proxy, KL to the starting policy on fresh samples) are an RL run's. `results.md` puts the
two side by side.
"""

import dataclasses
import functools
import json
from pathlib import Path

from rlhf_jax import files, logs, rl, runs
from rlhf_jax.loop import LoopConfig
from rlhf_jax.steps import common, rsft

PRETRAIN = Path(__file__).with_name("pretrain_tiny.py")  # the policy when policy.init_from is empty


@dataclasses.dataclass(frozen=True)
class Config(rl.Config):
  task: rl.SentimentConfig = rl.SentimentConfig()
  bon: rl.BestOfNConfig = rl.BestOfNConfig()
  fine_tune: bool = True  # then rejection-sampling fine-tuning (rl.algorithm=rsft) in <workdir>/rsft


def get_config(smoke: bool = False) -> Config:
  # RSFT: 100 updates, each on the best of 8 samples of 32 prompts.
  config = Config(rl=rl.RLConfig(algorithm="rsft", batch_size=256), rsft=rsft.RSFTConfig(n=8),
                  optim=common.OptimConfig(learning_rate=1e-4, warmup_steps=10, weight_decay=0.0),
                  loop=LoopConfig(steps=100, log_every=10, eval_every=25, checkpoint_every=25))
  if smoke:
    config = dataclasses.replace(rl.smoke(config), task=config.task.smoke(),
                                 bon=rl.BestOfNConfig(n=(1, 2, 4), batch_size=16))
  return config


def main(config: Config, workdir: Path) -> dict:
  workdir = Path(workdir)
  mesh, policy, task = rl.start_sentiment(config, workdir, pretrain=functools.partial(
      runs.run_experiment, PRETRAIN, smoke=config.policy.pretrain_smoke))
  table = rl.evaluate_best_of_n(config, config.bon, task, policy, workdir, mesh, temperature=config.rsft.temperature)
  result = {"reward": config.task.reward, "gold": config.task.gold, "best_of_n": table}
  if config.fine_tune:
    rl.train(config, task, policy, workdir / "rsft", mesh)
    result["rsft"] = logs.read_metrics(workdir / "rsft", "eval")[-1]
  files.atomic_write_bytes(workdir / "results.json", (json.dumps(result, indent=2) + "\n").encode())
  rows = [(f"best-of-{r['n']}", r) for r in table] + [(f"RSFT, best of {config.rsft.n}", result.get("rsft"))]
  files.atomic_write_bytes(workdir / "results.md", ("| method | gold | proxy | KL |\n|---|---|---|---|\n" + "".join(
      f"| {name} | {r.get('gold_score', float('nan')):.3f} | {r['proxy_score']:.3f} | {r['kl']:.2f} |\n"
      for name, r in rows if r) + "\nKL: best-of-n's bound log n - (n-1)/n; RSFT's measured on fresh samples.\n").encode())
  return result
