"""Train-step throughput: tokens/s and, on a known accelerator, model FLOPs utilization.

  python bench/bench_train.py                      # the tiny pretraining config
  python bench/bench_train.py --shape gpt2-small --dtype bfloat16 --batch 16 --seq-len 1024

Times the compiled, data-parallel `train_step` on random tokens (the data pipeline is not measured:
it only indexes a token array). Prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np
from hardware import PEAK_FLOPS, SHAPES, lookup  # bench/hardware.py (this script's folder)

from rlhf_jax import sharding
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, lm


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--remat-policy", default="nothing_saveable",
                      choices=["nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable"])
  parser.add_argument("--microbatches", type=int, default=1)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()

  config = ModelConfig(**SHAPES[args.shape], dtype=args.dtype, remat=args.remat,
                       remat_policy=args.remat_policy)
  if args.seq_len > config.max_len:
    parser.error(f"--seq-len {args.seq_len} exceeds the shape's max_len {config.max_len}")
  mesh = sharding.make_mesh()
  sharding.check_batch_divisible(args.batch, mesh, "--batch")
  model = Transformer(config)
  optim = common.OptimConfig(warmup_steps=1)
  tx = common.make_optimizer(optim)
  init, _ = common.sharded_init(functools.partial(common.init_state, model=model, tx=tx), mesh, "replicated",
                                jax.random.key(0))
  state = init(jax.random.key(0))
  step = lm.jit_train_step(mesh, model=model, tx=tx, optim=optim, total_steps=1000,
                           num_microbatches=args.microbatches)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (args.batch, args.seq_len + 1), dtype=np.int32)
  batch = sharding.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                              "loss_mask": np.ones((args.batch, args.seq_len), np.float32)}, mesh)
  hp, key = optim.hparams(), jax.random.key(1)

  t0 = time.perf_counter()
  state, metrics = step(state, batch, key, hp)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch, key, hp)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / args.steps

  tokens_per_step = args.batch * args.seq_len
  tokens_per_s = tokens_per_step / step_s
  devices = jax.devices()
  print(f"jax {jax.__version__} | {len(devices)} x {devices[0].device_kind} ({devices[0].platform})")
  print(f"shape={args.shape} params={config.num_params() / 1e6:.1f}M dtype={args.dtype} remat={args.remat and args.remat_policy} "
        f"batch={args.batch} seq_len={args.seq_len} microbatches={args.microbatches}")
  print(f"first step (compile + run): {compile_s:.2f} s")
  print(f"step: {step_s * 1e3:.1f} ms | {tokens_per_s:,.0f} tokens/s | loss {float(metrics['loss']):.3f}")
  peak = lookup(PEAK_FLOPS, devices[0])
  flops = config.flops_per_token(args.seq_len) * tokens_per_s
  if peak:
    print(f"model FLOPs utilization: {100 * flops / (peak * len(devices)):.1f}% "
          f"({flops / 1e12:.1f} TFLOP/s of {peak * len(devices) / 1e12:.0f})")
  else:
    print(f"model FLOP/s: {flops / 1e9:.2f} GFLOP/s (no peak known for {devices[0].device_kind!r}: MFU not shown)")


if __name__ == "__main__":
  main()
