"""Best-of-n sampling and rejection-sampling fine-tuning against a reward, judged by a gold labeler.

  rlhf-jax run experiments/best_of_n.py --set policy.init_from=workdirs/lm --set reward.scorer=rm:workdirs/rm
  rlhf-jax run experiments/best_of_n.py --smoke                                         # < 1 min on CPU

Best-of-n: for each held-out prompt draw a pool of `max(bon.n)` continuations from the policy and
report, for every n, the expected gold and proxy score of the proxy-best of n samples, averaged
over all n-subsets of the pool (`best_of_n.expected_best`, the unbiased estimator of Nakano et al.
2021 that Gao et al. 2022 use), next to the KL bound log n - (n-1)/n and a plug-in KL measured on
the proxy's scores (`best_of_n.kl_plugin`; far below the bound when the proxy ties). Rejection-sampling
fine-tuning (`rsft.steps > 0`): the best of `rsft.n` samples of each training prompt becomes an SFT
target, the policy is fine-tuned on them, and its single samples are scored the same way, with
their KL to the starting policy measured. Writes `results.json` and `results.md`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np

from rlhf_jax import best_of_n, logs, pretrained, runs, sharding
from rlhf_jax import rollout as rollout_lib
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.eval import policy as policy_eval
from rlhf_jax.data import rows
from rlhf_jax.data.corpora import atomic_write_bytes
from rlhf_jax.feedback import labelers
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common, lm

PRETRAIN = Path(__file__).with_name("pretrain_tiny.py")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  init_from: str = ""  # an LM workdir; "" runs pretrain_tiny into <workdir>/policy first
  pretrain_smoke: bool = False
  # sentiment_ppo's prompt set and split, so best-of-n is judged on the held-out prompts of the RL
  # and DPO experiments (the reward-KL frontier compares them point for point).
  num_prompts: int = 4096
  prompt_words: int = 4
  prompt_len: int = 8
  max_new_tokens: int = 24
  temperature: float = 1.0
  test_fraction: float = 0.05


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  scorer: str = "vader"  # the proxy: a labelers.SCORERS name or rm:WORKDIR
  with_prompt: bool = False
  gold: str = "vader"


@dataclasses.dataclass(frozen=True)
class BonConfig:
  n: tuple[int, ...] = (1, 2, 4, 8, 16)
  eval_prompts: int = 128
  batch_size: int = 64  # rows per sampling call


@dataclasses.dataclass(frozen=True)
class RsftConfig:
  steps: int = 100  # 0 skips rejection-sampling fine-tuning
  n: int = 8
  train_prompts: int = 512
  batch_size: int = 32


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  policy: PolicyConfig = PolicyConfig()
  reward: RewardConfig = RewardConfig()
  bon: BonConfig = BonConfig()
  rsft: RsftConfig = RsftConfig()
  optim: common.OptimConfig = common.OptimConfig(learning_rate=1e-4, warmup_steps=10, weight_decay=0.0)
  loop: LoopConfig = LoopConfig(steps=100, log_every=10, eval_every=0, checkpoint_every=100)
  mesh: sharding.MeshConfig = sharding.MeshConfig()


def get_config(smoke: bool = False) -> Config:
  config = Config()
  if smoke:
    config = dataclasses.replace(
        config,
        policy=dataclasses.replace(config.policy, pretrain_smoke=True, num_prompts=256, max_new_tokens=8,
                                   test_fraction=0.2),
        bon=BonConfig(n=(1, 2, 4), eval_prompts=16, batch_size=16),
        rsft=RsftConfig(steps=4, n=2, train_prompts=32, batch_size=16),
        loop=LoopConfig(steps=4, log_every=2, eval_every=0, checkpoint_every=4, progress=False),
    )
  return config


def main(config: Config, workdir: Path) -> dict:
  workdir = Path(workdir)
  pc, rc, bc, sc = config.policy, config.reward, config.bon, config.rsft
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(bc.batch_size, mesh, "bon.batch_size")
  key = jax.random.key(config.seed)
  policy, _ = pretrained.load_policy(pc.init_from, workdir, mesh, pretrain=functools.partial(
      runs.run_experiment, PRETRAIN, smoke=pc.pretrain_smoke))
  tok = policy.tokenizer
  pretrained.save_model_config(workdir, policy.model)
  model = Transformer(policy.model)
  proxy = labelers.get_scorer(rc.scorer)
  gold = proxy if rc.gold == rc.scorer else labelers.get_scorer(rc.gold)
  train_prompts, test_prompts = prompts_lib.split_prompts(
      prompts_lib.wordnet_openings(pc.num_prompts, pc.prompt_words, config.seed), pc.test_fraction)
  test_prompts = test_prompts[:bc.eval_prompts]
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=model, value_model=None,
                                   max_new_tokens=pc.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id))

  sampler = policy_eval.PolicySampler(roll, policy.params, tok, mesh, pc.temperature)
  sample = functools.partial(policy_eval.sample_texts, sampler, prompt_len=pc.prompt_len, batch_size=bc.batch_size)

  def scores(scorer, prompts, texts, with_prompt):
    return rollout_lib.score_texts(scorer, prompts, texts, with_prompt).astype(np.float64)

  # Best-of-n on the held-out prompts: a pool of max_n samples of each, in prompt-major order.
  max_n = max(bc.n)
  repeated = [p for p in test_prompts for _ in range(max_n)]
  texts, _ = sample(policy.params, repeated, key=jax.random.fold_in(key, 1))
  proxy_PxN = scores(proxy, repeated, texts, rc.with_prompt).reshape(-1, max_n)
  gold_PxN = scores(gold, repeated, texts, False).reshape(-1, max_n)
  table = []
  for n in bc.n:
    gold_n = best_of_n.expected_best(proxy_PxN, gold_PxN, n).mean()
    proxy_n = best_of_n.expected_best(proxy_PxN, proxy_PxN, n).mean()
    table.append({"method": f"best-of-{n}", "n": n, "gold": float(gold_n), "proxy": float(proxy_n),
                  "kl_bound": best_of_n.kl_bound(n),
                  "kl_plugin": float(np.mean([best_of_n.kl_plugin(s, n) for s in proxy_PxN]))})
    print(f"best-of-{n}: gold {table[-1]['gold']:.3f}, proxy {table[-1]['proxy']:.3f}, KL <= "
          f"{table[-1]['kl_bound']:.2f} (plug-in {table[-1]['kl_plugin']:.2f})", flush=True)

  # Every n also goes to metrics.jsonl (split "eval", step n), where `rlhf-jax report` and the
  # frontier read every experiment's results; KL is the bound, exact when the proxy never ties.
  logs.truncate_metrics(workdir, -1)
  writer = logs.MetricWriter(workdir, tensorboard=False, enabled=jax.process_index() == 0)
  for row in table:
    writer.write(row["n"], {"gold_score": row["gold"], "proxy_score": row["proxy"], "kl": row["kl_bound"],
                            "kl_plugin": row["kl_plugin"]}, split="eval")
  writer.close()
  if sc.steps > 0:
    table.append(_rsft(config, workdir, policy, model, train_prompts, test_prompts, sample, scores, proxy, gold,
                       mesh, key))
  result = {"proxy": rc.scorer, "gold": rc.gold, "rows": table}
  atomic_write_bytes(workdir / "results.json", (json.dumps(result, indent=2) + "\n").encode())
  md = ["| method | gold | proxy | KL (bound) | KL (measured) |", "|---|---|---|---|---|"]
  md += [f"| {r['method']} | {r['gold']:.3f} | {r['proxy']:.3f} | {r.get('kl_bound', float('nan')):.2f} | "
         f"{r.get('kl_plugin', r.get('kl', float('nan'))):.2f} |" for r in table]
  atomic_write_bytes(workdir / "results.md", ("\n".join(md) + "\n").encode())
  return result


def _rsft(config: Config, workdir: Path, policy, model, train_prompts, test_prompts, sample, scores, proxy, gold,
          mesh, key) -> dict:
  """Rejection-sampling fine-tuning: SFT on the proxy's best of n samples per training prompt."""
  pc, rc, sc = config.policy, config.reward, config.rsft
  tok = policy.tokenizer
  prompts = train_prompts[:sc.train_prompts]
  repeated = [p for p in prompts for _ in range(sc.n)]
  texts, _ = sample(policy.params, repeated, key=jax.random.fold_in(key, 2))
  best = best_of_n.select(scores(proxy, repeated, texts, rc.with_prompt).reshape(-1, sc.n))
  chosen = [texts[i * sc.n + b] for i, b in enumerate(best)]
  keep = [i for i, t in enumerate(chosen) if tok.encode(t)]
  prompt_ids = [tok.encode(prompts[i]) or [tok.eos_id] for i in keep]
  data = rows.sft_rows(prompt_ids, [tok.encode(chosen[i]) for i in keep], pc.prompt_len + pc.max_new_tokens,
                       tok.pad_id)
  dataset = rows.rows_dataset(data, sc.batch_size, seed=config.seed)
  tx = common.make_optimizer(config.optim)
  init = jax.jit(functools.partial(pretrained.restart_state, tx=tx), out_shardings=sharding.replicated(mesh))
  loop = dataclasses.replace(config.loop, steps=sc.steps)
  step = lm.jit_train_step(mesh, model=model, tx=tx, optim=config.optim, total_steps=sc.steps)
  state = train_loop(workdir=workdir / "rsft", loop=loop, config=dataclasses.asdict(config),
                     init_fn=functools.partial(init, policy.params), state_shardings=sharding.replicated(mesh),
                     step_fn=step, data_iterator=iter(dataset), hp=config.optim.hparams(),
                     rng=jax.random.fold_in(key, 3), mesh=mesh, tokens_per_step=sc.batch_size * data["inputs"].shape[1])
  texts, kl = sample(state.params, test_prompts, key=jax.random.fold_in(key, 4))
  row = {"method": f"rejection-sampling FT (best of {sc.n}, {sc.steps} steps)", "n": sc.n,
         "gold": float(scores(gold, test_prompts, texts, False).mean()),
         "proxy": float(scores(proxy, test_prompts, texts, rc.with_prompt).mean()), "kl": float(kl.mean())}
  print(f"{row['method']}: gold {row['gold']:.3f}, proxy {row['proxy']:.3f}, KL {row['kl']:.2f}", flush=True)
  return row
