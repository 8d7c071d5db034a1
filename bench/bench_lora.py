"""Memory and speed of full fine-tuning against LoRA, on the Llama-family decoder.

  python bench/bench_lora.py                          # both parts
  python bench/bench_lora.py --part memory --seq-len 1024
  python bench/bench_lora.py --part speed --steps 20

Memory: a Qwen2.5-0.5B-shaped model (its config.json's shapes, random weights; nothing is
allocated) under FSDP on 1 and 8 devices (8 forced host devices unless real ones are there). For
the LM train step compiled for each, per device: parameters and optimizer state (from the
shardings of the state), and the step's temporaries (activations, gradients, logits) from XLA's
memory analysis of the compiled program. LoRA (rank 16 on every projection) keeps the base
weights frozen: no gradient and no Adam moments for them.

Speed: tokens/s of the train step and of KV-cache decoding at a tiny Llama-family shape (the
`tiny` shape's sizes with grouped-query attention) on the local devices.
Prints numbers; it asserts nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax import sampling, sharding  # noqa: E402
from rlhf_jax.models import hf, lora  # noqa: E402
from rlhf_jax.models.transformer import ModelConfig, Transformer, init_params  # noqa: E402
from rlhf_jax.steps import common, lm  # noqa: E402

# Qwen/Qwen2.5-0.5B's config.json (the shapes that matter here).
QWEN25_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
              "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
              "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "bos_token_id": 151643,
              "eos_token_id": 151643}
TINY = ModelConfig(arch="llama", vocab_size=2048, max_len=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                   tie_embeddings=False)
ADAPTERS = lora.LoraConfig(rank=16, alpha=32.0)
GIB = 2 ** 30


def _state_and_step(config: ModelConfig, mesh, adapters: bool, optim: common.OptimConfig):
  """(abstract state with its shardings, jitted LM train step) for full fine-tuning or LoRA."""
  model = Transformer(config)
  if adapters:
    model = lora.adapt(model, ADAPTERS)
  tx = common.make_optimizer(optim, lora.trainable() if adapters else None)

  def init(key):
    params = init_params(config, key)
    if adapters:
      params = lora.add_adapters(model, params, key)
    return common.restart_state(params, tx=tx)
  shapes = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.tree_shardings(shapes, mesh, "fsdp")
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  step = lm.jit_train_step(mesh, model=model, tx=tx, optim=optim, total_steps=1000, state_shardings=shardings)
  return model, init, state, shardings, step


def _per_device_bytes(tree) -> int:
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def memory(args) -> None:
  config = dataclasses.replace(hf.config_from_hf(QWEN25_05B), max_len=args.seq_len, dtype=args.dtype,
                               remat=args.remat)
  optim = common.OptimConfig(warmup_steps=1)
  print(f"Qwen2.5-0.5B shape: {config.num_params() / 1e6:.0f}M parameters, compute {args.dtype}, "
        f"remat={args.remat}, global batch {args.batch} x {args.seq_len} tokens, FSDP")
  print("| devices | mode | trainable | params / device | optimizer state / device | step temporaries / device | "
        "compile |")
  print("|---|---|---|---|---|---|---|")
  for n in (1, 8):
    if jax.device_count() < n:
      print(f"| {n} | (only {jax.device_count()} devices) |")
      continue
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=n))
    batch = {name: jax.ShapeDtypeStruct((args.batch, args.seq_len), dtype, sharding=sharding.batch_sharded(mesh))
             for name, dtype in (("inputs", jnp.int32), ("targets", jnp.int32), ("loss_mask", jnp.float32))}
    for adapters in (False, True):
      _, _, state, _, step = _state_and_step(config, mesh, adapters, optim)
      trainable = sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(state.params)
                      if not adapters or lora.is_adapter(p))
      t0 = time.perf_counter()
      compiled = step.lower(state, batch, jax.random.key(0), optim.hparams()).compile()
      compile_s = time.perf_counter() - t0
      analysis = compiled.memory_analysis()
      print(f"| {n} | {'LoRA r=16' if adapters else 'full'} | {trainable / 1e6:.2f}M | "
            f"{_per_device_bytes(state.params) / GIB:.3f} GiB | {_per_device_bytes(state.opt_state) / GIB:.3f} GiB | "
            f"{analysis.temp_size_in_bytes / GIB:.3f} GiB | {compile_s:.0f} s |", flush=True)


def speed(args) -> None:
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1))
  optim = common.OptimConfig(warmup_steps=1)
  config = dataclasses.replace(TINY, dtype=args.dtype)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, config.vocab_size, (args.speed_batch, 129), dtype=np.int32)
  batch = sharding.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                              "loss_mask": np.ones((args.speed_batch, 128), np.float32)}, mesh)
  print(f"\ntiny Llama-family shape ({config.num_params() / 1e6:.2f}M parameters), 1 {jax.devices()[0].platform} "
        f"device, batch {args.speed_batch}")
  for adapters in (False, True):
    model, init, _, shardings, step = _state_and_step(config, mesh, adapters, optim)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    hp, key = optim.hparams(), jax.random.key(1)
    state, metrics = step(state, batch, key, hp)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, batch, key, hp)
    jax.block_until_ready(metrics)
    train_tps = args.speed_batch * 128 / ((time.perf_counter() - t0) / args.steps)
    generate = jax.jit(functools.partial(sampling.generate, model=model, max_new_tokens=64, eos_id=1, pad_id=0))
    prompt = jnp.asarray(tokens[:, :16])
    out = generate(state.params, prompt, jnp.ones_like(prompt), key)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for i in range(args.steps):
      out = generate(state.params, prompt, jnp.ones_like(prompt), jax.random.fold_in(key, i))
    jax.block_until_ready(out)
    decode_tps = args.speed_batch * 64 / ((time.perf_counter() - t0) / args.steps)
    print(f"{'LoRA r=16' if adapters else 'full':>9}: train step {train_tps:,.0f} tokens/s | "
          f"decoding {decode_tps:,.0f} tokens/s")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--part", choices=["memory", "speed", "both"], default="both")
  parser.add_argument("--batch", type=int, default=8, help="global batch of the memory part")
  parser.add_argument("--seq-len", type=int, default=512)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--speed-batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  print(f"jax {jax.__version__} | {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.devices()[0].platform})")
  if args.part in ("memory", "both"):
    memory(args)
  if args.part in ("speed", "both"):
    speed(args)


if __name__ == "__main__":
  main()
