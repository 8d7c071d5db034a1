"""ILQL on your scored answers, from any model: offline token-level Q-learning from rated rows.

  rlhf-jax run experiments/ilql.py --set policy.init_from=runs/sft --set task.path=scored.jsonl \
      --set task.reward=rm:runs/rm                      # the reward evaluation reports as the proxy
  rlhf-jax run experiments/ilql.py --smoke --set policy.init_from=tests/data/tiny_hf/qwen2   # < 1 min on CPU

`task.path` holds rating rows in TRL's format (`data.records` "rating": prompt, completion and a
number `rating`, plain or conversational; `task.fields=rating=score` renames): each completion is
one offline sequence whose reward is its rating, at its last token. No sampling happens in
training: the policy's LM gets ILQL's Q and V heads (Snell et al. 2022), learns them from these
sequences (`rl.train_offline_ilql`), and decodes with log pi_beta + beta (min(Q1, Q2) - V), beta
`ilql.beta`. Rows whose prompt hashes into `task.test_fraction` are held out: their prompts
evaluate the policy as the RL trainer evaluates (reward `task.reward`, gold `task.gold`, KL to the
starting policy), and their ratings are never trained on. By default the example review ratings.
"""

import dataclasses
from pathlib import Path

from rlhf_jax import rl, sharding
from rlhf_jax.data import records
from rlhf_jax.errors import UserError
from rlhf_jax.steps import common

RATINGS = Path(__file__).parent / "data" / "reviews_ratings.jsonl"


def get_config(smoke: bool = False) -> rl.PromptsConfig:
  config = rl.prompts_config("ppo", path=str(RATINGS), smoke_mode=smoke)  # rl.algorithm: unused here
  # gamma 1: one reward, at the end; target heads faster than the paper's 0.005 for a few hundred updates.
  return dataclasses.replace(
      config, ilql=dataclasses.replace(config.ilql, gamma=1.0, polyak=0.05),
      optim=common.OptimConfig(learning_rate=1e-4, warmup_steps=10, weight_decay=0.0, min_lr_ratio=1.0),
      loop=dataclasses.replace(config.loop, steps=config.loop.steps if smoke else 300))


def main(config: rl.PromptsConfig, workdir: Path):
  mesh = sharding.make_mesh(config.mesh)
  policy = rl.start_policy(config.policy, workdir, mesh)
  tc = config.task
  dataset = records.load(tc.path, kind="rating", fields=tc.fields, max_rows=tc.max_rows)
  task = rl.prompt_file_task(tc, tokenizer=policy.tokenizer, mesh=mesh, dataset=dataset)
  # The split prompt_file_task made (a stable hash of the prompt): only train prompts' ratings train.
  train_rows, _ = records.split(records.as_text(dataset, policy.tokenizer), tc.test_fraction)
  scored = [{"prompt": r["prompt"], "response": r["completion"], "reward": r["rating"]} for r in train_rows]
  if not scored:
    raise UserError(f"{dataset.source}: no rated rows left for training after holding out task.test_fraction="
                    f"{tc.test_fraction}")
  return rl.train_offline_ilql(config, task, policy, workdir, mesh, records=scored)

