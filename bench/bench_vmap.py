"""Throughput of N vmapped runs against the same N runs one after another.

  python bench/bench_vmap.py                          # tiny config, N = 1, 4, 16
  python bench/bench_vmap.py --runs 1,4,16 --batch 32 --seq-len 128 --steps 5
  python bench/bench_vmap.py --kind ppo               # whole RL iterations (rlhf_jax.rl), the peer shape
  python bench/bench_vmap.py --kind grpo --runs 1,4,16

The vmapped program is `rlhf_jax.vmapped.vmap_step(lm.train_step)` on stacked states (one seed and
learning rate per run, one shared batch); "sequential" is one compiled single-run step called for
each run in turn, which is what N separate runs on one device amount to, without their start-up
costs. Compile time is excluded from both. Prints numbers; asserts nothing.

`--kind ppo|grpo` times whole RLHF iterations of the RL trainer instead (`rl.rl_iteration`:
rollout of 16 + 24 tokens for 16 rows, a reward on the device, the update; per run its own seed,
learning rate and temperature, all in one program with `rl.vmapped_iteration`), on the peer
benchmark's shape (4 layers, d 256, vocab 8000). Tokens/s counts prompt + response tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import numpy as np

import jax.numpy as jnp

from rlhf_jax import rewards, rl, sharding, vmapped
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, lm

TINY = dict(vocab_size=2048, max_len=128, d_model=128, n_layers=4, n_heads=4)  # pretrain_tiny
PEER = dict(vocab_size=8000, max_len=64, d_model=256, n_layers=4, n_heads=4)  # ../shared/peer-bench's model
PROMPT_LEN, NEW_TOKENS = 16, 24


def _count_token(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN):
  return jnp.mean((response_BxN == 42) & response_mask_BxN.astype(bool), axis=-1)


def rl_runs(kind: str, batch: int, dtype: str):
  """(one_step(state, batch, key, hp), many_step, init(i), hp(i), batch, tokens per run step) of RL iterations."""
  policy_config = ModelConfig(**PEER, dtype=dtype)
  config = rl.Config(rl=rl.RLConfig(algorithm=kind, batch_size=batch))
  config = dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, epochs=1, minibatches=1))
  policy_model = Transformer(policy_config)
  value_model = Transformer(rl.value_model_config(policy_config)) if kind == "ppo" else None
  alg = rl.build_algorithm(config, policy_model=policy_model, value_model=value_model, max_new_tokens=NEW_TOKENS,
                           eos_id=1, pad_id=0)
  params = jax.jit(policy_model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  value = rl.zero_value_params(params, value_model.config) if value_model is not None else None
  frozen = {"ref": params, "reward": rewards.TokenFunctionReward(_count_token),
            "norm": {"mean": jnp.float32(0.0), "std": jnp.float32(1.0)}}
  prompts = np.random.default_rng(0).integers(2, policy_config.vocab_size, (batch // config.group_size, PROMPT_LEN))
  prompt_batch = rl.repeat_rows({"prompt": prompts, "prompt_mask": np.ones_like(prompts)}, times=config.group_size)
  one = jax.jit(functools.partial(alg.iteration, frozen=frozen), donate_argnums=0)
  many = jax.jit(functools.partial(rl.vmapped_iteration(alg.iteration), frozen=frozen), donate_argnums=0)
  init_jit = jax.jit(alg.init)  # fresh buffers per run: the iterations donate their state
  init = lambda i: init_jit(params, value, 0.05)  # noqa: E731
  hp = lambda i: dataclasses.replace(alg.hp, learning_rate=jnp.float32(1e-5 * (1 + i)),  # noqa: E731
                                     temperature=jnp.float32(1.0 + 0.05 * i))
  return one, many, init, hp, prompt_batch, batch * (PROMPT_LEN + NEW_TOKENS)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", default="1,4,16", help="comma-separated numbers of runs")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--kind", choices=["lm", "ppo", "grpo"], default="lm",
                      help="lm: pretraining steps; ppo / grpo: whole RL iterations (--batch rollouts, default 16)")
  args = parser.parse_args()
  if args.kind != "lm":
    return rl_main(args)

  config = ModelConfig(**TINY, dtype=args.dtype)
  model = Transformer(config)
  optim = common.OptimConfig(warmup_steps=1)
  tx = common.make_optimizer(optim)
  mesh = sharding.make_mesh()
  step = functools.partial(lm.train_step, model=model, tx=tx, warmup_steps=1, total_steps=1000, min_lr_ratio=0.1)
  init = functools.partial(common.init_state, model=model, tx=tx)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (args.batch, args.seq_len + 1), dtype=np.int32)
  batch = sharding.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                              "loss_mask": np.ones((args.batch, args.seq_len), np.float32)}, mesh)
  tokens_per_run_step = args.batch * args.seq_len
  devices = jax.devices()
  print(f"jax {jax.__version__} | {len(devices)} x {devices[0].device_kind} ({devices[0].platform}) | "
        f"tiny config, batch {args.batch} x {args.seq_len}, {args.dtype}")
  print("| runs | vmapped step | vmapped tokens/s | sequential step (all runs) | sequential tokens/s | speedup |")
  print("|---|---|---|---|---|---|")

  repl = sharding.replicated(mesh)
  one = common.jit_step(step, mesh)
  many = common.jit_step(vmapped.vmap_step(step), mesh)
  for n in [int(x) for x in args.runs.split(",")]:
    keys = [jax.random.key(i) for i in range(n)]
    hps = [dataclasses.replace(optim, learning_rate=1e-3 * (1 + i)).hparams() for i in range(n)]

    # Created with the sharding the step returns, so the first call is the only compile.
    stacked = jax.jit(vmapped.vmap_init(init), out_shardings=repl)(vmapped.stack_keys(keys))
    stacked_keys, stacked_hp = vmapped.stack_keys(keys), vmapped.stack(hps)
    stacked, metrics = many(stacked, batch, stacked_keys, stacked_hp)  # compile
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      stacked, metrics = many(stacked, batch, stacked_keys, stacked_hp)
    jax.block_until_ready(metrics)
    vmapped_s = (time.perf_counter() - t0) / args.steps
    del stacked

    states = [jax.jit(init, out_shardings=repl)(k) for k in keys]
    states[0], metrics = one(states[0], batch, keys[0], hps[0])  # compile
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      for i in range(n):
        states[i], metrics = one(states[i], batch, keys[i], hps[i])
    jax.block_until_ready(metrics)
    sequential_s = (time.perf_counter() - t0) / args.steps
    del states

    print(f"| {n} | {vmapped_s * 1e3:.1f} ms | {n * tokens_per_run_step / vmapped_s:,.0f} | "
          f"{sequential_s * 1e3:.1f} ms | {n * tokens_per_run_step / sequential_s:,.0f} | "
          f"{sequential_s / vmapped_s:.2f}x |", flush=True)


def rl_main(args) -> None:
  batch = 16 if args.batch == 32 else args.batch  # the peer benchmark's 16 rollouts unless asked otherwise
  one, many, init, hp, prompt_batch, tokens_per_run_step = rl_runs(args.kind, batch, args.dtype)
  devices = jax.devices()
  print(f"jax {jax.__version__} | {len(devices)} x {devices[0].device_kind} ({devices[0].platform}) | "
        f"{args.kind} iterations, {batch} rollouts of {PROMPT_LEN} + {NEW_TOKENS} tokens, peer shape, {args.dtype}")
  print("| runs | vmapped iteration | vmapped tokens/s | sequential (all runs) | sequential tokens/s | speedup |")
  print("|---|---|---|---|---|---|")
  for n in [int(x) for x in args.runs.split(",")]:
    keys = [jax.random.key(i) for i in range(n)]
    stacked, stacked_keys, stacked_hp = vmapped.stack([init(i) for i in range(n)]), vmapped.stack_keys(keys), \
        vmapped.stack([hp(i) for i in range(n)])
    stacked, metrics = many(stacked, prompt_batch, stacked_keys, stacked_hp)  # compile
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      stacked, metrics = many(stacked, prompt_batch, stacked_keys, stacked_hp)
    jax.block_until_ready(metrics)
    vmapped_s = (time.perf_counter() - t0) / args.steps
    del stacked

    states, hps = [init(i) for i in range(n)], [hp(i) for i in range(n)]
    states[0], metrics = one(states[0], prompt_batch, keys[0], hps[0])  # compile
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      for i in range(n):
        states[i], metrics = one(states[i], prompt_batch, keys[i], hps[i])
    jax.block_until_ready(metrics)
    sequential_s = (time.perf_counter() - t0) / args.steps
    del states
    print(f"| {n} | {vmapped_s * 1e3:.0f} ms | {n * tokens_per_run_step / vmapped_s:,.0f} | "
          f"{sequential_s * 1e3:.0f} ms | {n * tokens_per_run_step / sequential_s:,.0f} | "
          f"{sequential_s / vmapped_s:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
