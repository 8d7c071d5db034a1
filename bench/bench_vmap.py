"""Throughput of N vmapped runs against the same N runs one after another.

  python bench/bench_vmap.py                          # tiny config, N = 1, 4, 16
  python bench/bench_vmap.py --runs 1,4,16 --batch 32 --seq-len 128 --steps 5

The vmapped program is `rlhf_jax.vmapped.vmap_step(lm.train_step)` on stacked states (one seed and
learning rate per run, one shared batch); "sequential" is one compiled single-run step called for
each run in turn, which is what N separate runs on one device amount to, without their start-up
costs. Compile time is excluded from both. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import numpy as np

from rlhf_jax import sharding, vmapped
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, lm

TINY = dict(vocab_size=2048, max_len=128, d_model=128, n_layers=4, n_heads=4)  # pretrain_tiny


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", default="1,4,16", help="comma-separated numbers of runs")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  args = parser.parse_args()

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


if __name__ == "__main__":
  main()
