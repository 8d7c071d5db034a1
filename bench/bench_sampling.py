"""Throughput of `rlhf_jax.sampling.generate` with and without the KV cache.

Prints generated tokens per second for each batch size, the cache speedup, the compile times, and
the device and JAX version, so numbers from different machines can be told apart. Compilation is
done ahead of time and excluded from the timings; each timing is the best of `--repeats` runs.

On a device with a known HBM bandwidth it also prints the fraction of the bandwidth roofline that
cached decoding reaches: each step must read every parameter once and the keys and values of the
context so far, so the fastest possible decode takes sum_i (param bytes + KV bytes at context i) /
bandwidth; the fraction is that over the measured time (which also holds the prefill).

  python bench/bench_sampling.py                       # tiny pretraining config, batch 1, 8, 64
  python bench/bench_sampling.py --shape gpt2-small --dtype bfloat16 --prompt-len 64 --new-tokens 256 \
      --max-len 1024 --no-uncached
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from rlhf_jax import sampling
from rlhf_jax.models.transformer import ModelConfig, Transformer, init_params

from hardware import HBM_BANDWIDTH, SHAPES, lookup  # bench/hardware.py (this script's folder)


def _time(compiled, args, kwargs, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args, **kwargs))
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", default="1,8,64", help="comma-separated batch sizes")
  parser.add_argument("--prompt-len", type=int, default=32)
  parser.add_argument("--new-tokens", type=int, default=96)
  parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
  parser.add_argument("--max-len", type=int, default=0, help="positions (default: the shape's)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="compute, KV-cache and (for sampling, as served) parameter dtype")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--top-k", type=int, default=0)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (best is kept)")
  parser.add_argument("--no-uncached", action="store_true", help="skip the slow no-cache reference path")
  args = parser.parse_args()

  shape = {**SHAPES[args.shape], **({"max_len": args.max_len} if args.max_len else {})}
  config = ModelConfig(**shape, dtype=args.dtype)
  if args.prompt_len + args.new_tokens > config.max_len:
    parser.error(f"--prompt-len + --new-tokens exceeds max_len {config.max_len}")
  model = Transformer(config)
  params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
  params = jax.tree.map(lambda x: x.astype(config.compute_dtype), params)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  bandwidth = lookup(HBM_BANDWIDTH, jax.devices()[0])
  generate_fn = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)

  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
  print(f"model: {args.shape}, vocab {config.vocab_size}, d_model {config.d_model}, {config.n_layers} layers, "
        f"{config.n_heads} heads, max_len {config.max_len}, {args.dtype}, {config.num_params() / 1e6:.1f}M params "
        f"({param_bytes / 1e6:.1f} MB)")
  print(f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, temperature {args.temperature}, "
        f"top_k {args.top_k}, top_p {args.top_p}; eos never hit, so every row decodes all steps")
  header = (f"{'batch':>6} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speedup':>8} {'compile cache/no-cache s':>25}"
            f" {'roofline':>9}")
  print(header)

  for batch in (int(b) for b in args.batch.split(",")):
    prompt_BxP = jax.random.randint(jax.random.key(1), (batch, args.prompt_len), 0, config.vocab_size)
    # Ragged prompts, as in RL: row b has b % 8 padding tokens on the left.
    mask_BxP = jnp.arange(args.prompt_len)[None, :] >= (jnp.arange(batch) % 8)[:, None]
    inputs = (params, prompt_BxP, mask_BxP, jax.random.key(2))
    static = dict(model=model, max_new_tokens=args.new_tokens, top_k=args.top_k, top_p=args.top_p)
    traced = dict(temperature=args.temperature, eos_id=-1, pad_id=0)
    rates, compile_s, seconds = {}, {}, {}
    for use_cache in (True, False):
      if not use_cache and args.no_uncached:
        continue
      start = time.perf_counter()
      compiled = generate_fn.lower(*inputs, use_cache=use_cache, **static, **traced).compile()
      compile_s[use_cache] = time.perf_counter() - start
      seconds[use_cache] = _time(compiled, inputs, traced, args.repeats)
      rates[use_cache] = batch * args.new_tokens / seconds[use_cache]
    uncached = f"{rates[False]:15.1f}" if False in rates else f"{'-':>15}"
    speedup = f"{rates[True] / rates[False]:7.1f}x" if False in rates else f"{'-':>8}"
    compiles = "/".join(f"{compile_s[c]:.1f}" for c in (True, False) if c in compile_s)
    roofline = "-"
    if bandwidth:
      fastest = sum(decode_bytes(config, param_bytes, batch, args.prompt_len + i) for i in range(args.new_tokens))
      roofline = f"{100 * fastest / bandwidth / seconds[True]:.1f}%"
    print(f"{batch:>6} {rates[True]:12.1f} {uncached} {speedup} {compiles:>25} {roofline:>9}", flush=True)
  if not bandwidth:
    print(f"(no HBM bandwidth known for {jax.devices()[0].device_kind!r}: no roofline fraction)")


def decode_bytes(config: ModelConfig, param_bytes: int, batch: int, context: int) -> int:
  """The least memory traffic of one cached decode step: every parameter, and K and V of `context`
  tokens in every layer for every row (activations are negligible next to both)."""
  kv = 2 * config.n_layers * batch * context * config.d_model * jnp.dtype(config.compute_dtype).itemsize
  return param_bytes + kv


if __name__ == "__main__":
  main()
