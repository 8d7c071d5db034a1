"""Throughput of `rlhf_jax.sampling.generate` with and without the KV cache.

Prints generated tokens per second for each batch size, the cache speedup, the compile times, and
the device and JAX version, so numbers from different machines can be told apart. Compilation is
done ahead of time and excluded from the timings; each timing is the best of `--repeats` runs.

  python bench/bench_sampling.py                       # tiny pretraining config, batch 1, 8, 64
  python bench/bench_sampling.py --batch 8 --new-tokens 32 --no-uncached
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from rlhf_jax import sampling
from rlhf_jax.models.transformer import ModelConfig, Transformer, init_params


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
  parser.add_argument("--vocab", type=int, default=2048)
  parser.add_argument("--d-model", type=int, default=128)
  parser.add_argument("--n-layers", type=int, default=4)
  parser.add_argument("--n-heads", type=int, default=4)
  parser.add_argument("--max-len", type=int, default=128)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--top-k", type=int, default=0)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (best is kept)")
  parser.add_argument("--no-uncached", action="store_true", help="skip the slow no-cache reference path")
  args = parser.parse_args()

  config = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers,
                       n_heads=args.n_heads, max_len=args.max_len, dtype=args.dtype)
  model = Transformer(config)
  params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
  generate_fn = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)

  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
  print(f"model: vocab {args.vocab}, d_model {args.d_model}, {args.n_layers} layers, {args.n_heads} heads, "
        f"max_len {args.max_len}, {args.dtype}, {config.num_params() / 1e6:.1f}M params")
  print(f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, temperature {args.temperature}, "
        f"top_k {args.top_k}, top_p {args.top_p}; eos never hit, so every row decodes all steps")
  header = f"{'batch':>6} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speedup':>8} {'compile cache/no-cache s':>25}"
  print(header)

  for batch in (int(b) for b in args.batch.split(",")):
    prompt_BxP = jax.random.randint(jax.random.key(1), (batch, args.prompt_len), 0, args.vocab)
    # Ragged prompts, as in RL: row b has b % 8 padding tokens on the left.
    mask_BxP = jnp.arange(args.prompt_len)[None, :] >= (jnp.arange(batch) % 8)[:, None]
    inputs = (params, prompt_BxP, mask_BxP, jax.random.key(2))
    static = dict(model=model, max_new_tokens=args.new_tokens, top_k=args.top_k, top_p=args.top_p)
    traced = dict(temperature=args.temperature, eos_id=-1, pad_id=0)
    rates, compile_s = {}, {}
    for use_cache in (True, False):
      if not use_cache and args.no_uncached:
        continue
      start = time.perf_counter()
      compiled = generate_fn.lower(*inputs, use_cache=use_cache, **static, **traced).compile()
      compile_s[use_cache] = time.perf_counter() - start
      seconds = _time(compiled, inputs, traced, args.repeats)
      rates[use_cache] = batch * args.new_tokens / seconds
    uncached = f"{rates[False]:15.1f}" if False in rates else f"{'-':>15}"
    speedup = f"{rates[True] / rates[False]:7.1f}x" if False in rates else f"{'-':>8}"
    compiles = "/".join(f"{compile_s[c]:.1f}" for c in (True, False) if c in compile_s)
    print(f"{batch:>6} {rates[True]:12.1f} {uncached} {speedup} {compiles:>25}", flush=True)


if __name__ == "__main__":
  main()
