"""One PPO iteration's time, split into rollout, scoring and update.

  python bench/bench_ppo.py                                         # tiny config, 32 rollouts of 24 tokens
  python bench/bench_ppo.py --shape gpt2-small --dtype bfloat16 --batch 64 --prompt-len 64 --new-tokens 128

- rollout: `rollout.rollout`, one compiled program: KV-cache sampling, then the teacher-forced
  forwards for the policy's and the reference's log-probs and the value model's values;
- scoring: a reward model of the same shape on prompt + response (`steps.reward.rewards`, compiled;
  as `rm:` scorers score), with the tokens staying on the device;
- update: `ppo.ppo_step` (GAE, `--epochs` x `--minibatches` clipped updates of policy and value).

The experiments that score with a lexicon (VADER) add a host round trip (decode, score, upload)
that is not measured here. Random weights and prompts; EOS is never sampled, so every row decodes
all steps. Compile time is excluded; each phase is the median of `--iterations` iterations.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from hardware import SHAPES  # bench/hardware.py (this script's folder)

from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sharding
from rlhf_jax.models.transformer import ModelConfig, Transformer, init_params
from rlhf_jax.steps import common, ppo
from rlhf_jax.steps import reward as reward_step


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--batch", type=int, default=32, help="rollouts per iteration")
  parser.add_argument("--prompt-len", type=int, default=8)
  parser.add_argument("--new-tokens", type=int, default=24)
  parser.add_argument("--epochs", type=int, default=4)
  parser.add_argument("--minibatches", type=int, default=2)
  parser.add_argument("--iterations", type=int, default=5)
  args = parser.parse_args()

  config = ModelConfig(**SHAPES[args.shape], dtype=args.dtype)
  if args.prompt_len + args.new_tokens > config.max_len:
    parser.error(f"--prompt-len + --new-tokens exceeds the shape's max_len {config.max_len}")
  mesh = sharding.make_mesh()
  sharding.check_batch_divisible(args.batch, mesh, "--batch")
  policy_model = Transformer(config)
  value_config = dataclasses.replace(config, scalar_head=True, scalar_head_init="zeros")
  value_model = Transformer(value_config)
  policy_params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
  value_params = jax.jit(init_params, static_argnums=0)(value_config, jax.random.key(1))
  rm_params = jax.jit(init_params, static_argnums=0)(value_config, jax.random.key(2))

  ppo_config = ppo.PPOConfig(epochs=args.epochs, minibatches=args.minibatches, penalize_no_eos=False)
  optim = common.OptimConfig(learning_rate=1e-5, warmup_steps=0, weight_decay=0.0)
  tx = common.make_optimizer(optim)
  init, state_shardings = common.sharded_init(functools.partial(ppo.init_state, tx=tx, kl_coef=ppo_config.kl_coef),
                                              mesh, "replicated", policy_params, value_params)
  state = init(policy_params, value_params)
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=policy_model, value_model=value_model,
                                   max_new_tokens=args.new_tokens, eos_id=-1, pad_id=0))

  @jax.jit
  def score(rm_params, r: rollout_lib.Rollout) -> jax.Array:
    tokens = jnp.concatenate([r.prompt_BxP, r.response_BxN], axis=1)
    mask = jnp.concatenate([r.prompt_mask_BxP, r.response_mask_BxN], axis=1)
    return reward_step.rewards(rm_params, tokens, mask, model=value_model)

  step = common.jit_step(functools.partial(
      ppo.ppo_step, policy_model=policy_model, value_model=value_model, tx=tx, config=ppo_config, warmup_steps=0,
      total_steps=1000, min_lr_ratio=1.0), mesh, state_shardings)
  hp = ppo_config.hparams(optim)

  rng = np.random.default_rng(0)
  prompt = rng.integers(1, config.vocab_size, (args.batch, args.prompt_len), dtype=np.int32)
  placed = sharding.put_batch({"prompt": prompt, "mask": np.ones_like(prompt, bool)}, mesh)
  temperature = jnp.float32(1.0)

  def iteration(state, i: int):
    times = {}
    t0 = time.perf_counter()
    r = jax.block_until_ready(roll(state.params["policy"], state.params["value"], policy_params, placed["prompt"],
                                   placed["mask"], jax.random.key(i), temperature))
    times["rollout"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_B = jax.block_until_ready(score(rm_params, r))
    times["scoring"] = time.perf_counter() - t0
    batch = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
    t0 = time.perf_counter()
    state, metrics = step(state, {**batch, "score_B": score_B}, jax.random.key(100 + i), hp)
    jax.block_until_ready(metrics)
    times["update"] = time.perf_counter() - t0
    return state, times

  t0 = time.perf_counter()
  state, _ = iteration(state, 0)  # compiles all three
  compile_s = time.perf_counter() - t0
  runs = []
  for i in range(args.iterations):
    state, times = iteration(state, i + 1)
    runs.append(times)
  phases = {name: statistics.median(t[name] for t in runs) for name in ("rollout", "scoring", "update")}
  total = sum(phases.values())

  devices = jax.devices()
  print(f"jax {jax.__version__} | {len(devices)} x {devices[0].device_kind} ({devices[0].platform})")
  print(f"shape={args.shape} params={config.num_params() / 1e6:.1f}M dtype={args.dtype} batch={args.batch} "
        f"prompt={args.prompt_len} new_tokens={args.new_tokens} epochs={args.epochs} minibatches={args.minibatches}")
  print(f"first iteration (compile + run): {compile_s:.1f} s")
  print(f"{'phase':>8} {'seconds':>9} {'share':>7}")
  for name, seconds in phases.items():
    print(f"{name:>8} {seconds:9.3f} {100 * seconds / total:6.1f}%")
  print(f"{'total':>8} {total:9.3f} | {args.batch / total:,.1f} episodes/s, "
        f"{args.batch * args.new_tokens / total:,.0f} response tokens/s")


if __name__ == "__main__":
  main()
