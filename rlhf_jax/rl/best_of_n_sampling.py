"""Best-of-n sampling from the reference policy on a task, judged as the RL trainer judges its runs.

  rows = rl.evaluate_best_of_n(config, rl.BestOfNConfig(n=(1, 4, 16)), task, policy, workdir, mesh)

For each of the task's held-out prompts, a pool of max(n) samples of the starting policy is
scored by the task's reward (normalized on reference samples as the trainer normalizes it, so
`proxy_score` has an RL run's units) and by its gold judge. For every n, the expected scores of
the reward-best of n are averaged over all n-subsets of the pool (`rlhf_jax.eval.best_of_n_stats.summary`:
the unbiased estimator of Nakano et al. 2021 that Gao et al. 2022 use), next to the KL bound
log n - (n-1)/n and a plug-in KL measured on the reward's values. Each n is an evaluation record
(split "eval", step n, `kl` the bound) in `<workdir>/metrics.jsonl`, where `rlhf-jax report` and
the reward-KL frontier read every experiment's results.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import logs
from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sharding, trained
from rlhf_jax.data import rows
from rlhf_jax.eval import best_of_n_stats
from rlhf_jax.rewards import scorers
from rlhf_jax.rl import iteration as iteration_lib
from rlhf_jax.rl import trainer
from rlhf_jax.rl.task import Task


@dataclasses.dataclass(frozen=True)
class BestOfNConfig:
  n: tuple[int, ...] = (1, 2, 4, 8, 16)  # every n from one pool of max(n) samples per prompt
  batch_size: int = 64  # rows per sampling call

  def __post_init__(self):
    if not self.n or min(self.n) < 1:
      raise ValueError(f"bon.n: expected one or more n >= 1, got {self.n}")
    if self.batch_size < 1:
      raise ValueError(f"bon.batch_size must be >= 1, got {self.batch_size}")


def sample_pool(sample, params, frozen: dict, task: Task, tokenizer, *, n: int, batch_size: int, key: jax.Array,
                temperature: jax.Array, mesh: Mesh) -> tuple[np.ndarray, np.ndarray | None]:
  """Normalized reward and gold score [P, n] of n samples of each of the task's P held-out prompts
  (gold None when the task has no gold). Batch i of the prompt-major rows samples with
  `fold_in(key, i)`; the last batch is filled with copies of row 0, which are dropped."""
  prompt_rows = {"p": np.repeat(task.test.tokens_NxP, n, axis=0), "m": np.repeat(task.test.mask_NxP, n, axis=0)}
  prompt_texts = np.repeat(np.asarray(task.test.texts, object), n)
  norm = jax.device_get(frozen["norm"])
  proxies, golds = [], []
  for i, batch in enumerate(rows.eval_row_batches(prompt_rows, batch_size)):
    placed = sharding.put_batch({"p": batch["p"], "m": batch["m"]}, mesh)
    r, raw_B = sample(params, frozen, placed["p"], placed["m"], jax.random.fold_in(key, i), temperature)
    real = int(batch["row_mask"].sum())
    proxies.append(np.asarray(iteration_lib.normalized(np.asarray(raw_B), norm))[:real])
    if task.gold is not None:
      texts = rollout_lib.decode_responses(tokenizer, r.response_BxN[:real], r.response_mask_BxN[:real])
      done = i * batch_size  # rows of earlier batches
      golds.append(scorers.score_as_judge(task.gold, list(prompt_texts[done:done + real]), texts))
  gold = np.concatenate(golds).reshape(-1, n) if golds else None
  return np.concatenate(proxies).reshape(-1, n), gold


def evaluate_best_of_n(config: trainer.Config, bc: BestOfNConfig, task: Task, policy: trained.TrainedModel,
                       workdir: str | Path, mesh: Mesh, *, temperature: float = 1.0) -> list[dict[str, float]]:
  """Best-of-n of `policy` for every n in `bc.n` (module docstring), with the reward normalized as
  `config` normalizes it in the trainer. Also written to `<workdir>/metrics.jsonl`, replacing what
  a previous run wrote there."""
  workdir = Path(workdir)
  trainer.check_task(config, task, policy, mesh)
  sharding.check_batch_divisible(bc.batch_size, mesh, "bon.batch_size")
  workdir.mkdir(parents=True, exist_ok=True)
  trained.save_model_config(workdir, policy.model)
  t = jnp.asarray(temperature, jnp.float32)
  frozen, _, sample = trainer.reference_and_reward(config, task, policy, workdir, mesh, temperature=t)
  proxy_PxN, gold_PxN = sample_pool(sample, frozen["ref"], frozen, task, policy.tokenizer, n=max(bc.n),
                                    batch_size=bc.batch_size, key=jax.random.fold_in(jax.random.key(config.seed), 1),
                                    temperature=t, mesh=mesh)
  table = best_of_n_stats.summary(proxy_PxN, gold_PxN, bc.n)
  logs.truncate_metrics(workdir, -1)
  writer = logs.MetricWriter(workdir, tensorboard=False, enabled=jax.process_index() == 0)
  for row in table:
    writer.write(row["n"], {k: v for k, v in row.items() if k != "n"}, split="eval")
    gold = f"gold ({task.gold_name}) {row['gold_score']:.3f}, " if "gold_score" in row else ""
    print(f"best-of-{row['n']}: {gold}proxy {row['proxy_score']:.3f}, KL <= {row['kl']:.2f} "
          f"(plug-in {row['kl_plugin']:.2f})", flush=True)
  writer.close()
  return table
