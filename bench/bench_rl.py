"""One RL trainer iteration (rollout -> reward -> update, one compiled program), timed.

  python bench/bench_rl.py                                   # PPO 1 epoch, GRPO, RLOO on the peer shape
  python bench/bench_rl.py --algorithms ppo --epochs 4
  python bench/bench_rl.py --reward host                     # the reward as a Python function of texts
  python bench/bench_rl.py --algorithms ppo --profile /tmp/trace   # a jax.profiler trace (TensorBoard / Perfetto)

The iteration is `rl.build_algorithm(...).iteration`, what `rl.train` runs, on the shape of
`../shared/peer-bench` (GPT-2 layout, 4 layers, d_model 256, 4 heads, vocab 8000; random weights):
16 rollouts of 16 prompt + 24 new tokens (PPO: 16 prompts; GRPO and RLOO: 4 prompts x 4 samples),
EOS never sampled, as in the TRL runs. The reward is the peer benchmark's: the fraction of 'e'
characters in a stand-in detokenization (token t is the letter t mod 26 written 1 + t mod 3 times),
computed on the device from the token ids (`--reward device`) or on the host from the decoded text
through `jax.pure_callback` (`--reward host`). Each row also times the rollout alone (`rl.sample`).
Compile time is excluded; numbers are medians over `--iterations`. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import rewards, rl
from rlhf_jax.models.transformer import ModelConfig, Transformer

from hardware import SHAPES  # bench/hardware.py (this script's folder)

PROMPT_LEN, NEW_TOKENS, ROWS = 16, 24, 16


def e_fraction_on_tokens(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN):
  """The peer reward from token ids: 'e' characters / characters of the stand-in detokenization."""
  mask_BxN = response_mask_BxN.astype(jnp.float32)
  chars_BxN = (1 + response_BxN % 3) * mask_BxN
  es_BxN = jnp.where(response_BxN % 26 == 4, chars_BxN, 0.0)
  return es_BxN.sum(-1) / jnp.maximum(chars_BxN.sum(-1), 1.0)


class StandInTokenizer:
  """Token t -> the letter t mod 26, 1 + t mod 3 times (the peer benchmark's detokenizer)."""
  eos_id, pad_id = -1, 0

  def decode(self, ids):
    return "".join(chr(97 + t % 26) * (1 + t % 3) for t in ids)


class EFraction:
  name = "e_fraction"

  def score(self, texts):
    return np.array([t.count("e") / max(1, len(t)) for t in texts], np.float32)


def build(algorithm: str, epochs: int, reward: str, shape: str):
  model_config = ModelConfig(**SHAPES[shape])
  config = rl.Config(rl=rl.RLConfig(algorithm=algorithm, batch_size=ROWS))
  config = dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, epochs=epochs, minibatches=1),
                               pg=dataclasses.replace(config.pg, group_size=4, epochs=1))
  policy_model = Transformer(model_config)
  value_model = Transformer(rl.value_model_config(model_config)) if algorithm == "ppo" else None
  alg = rl.build_algorithm(config, policy_model=policy_model, value_model=value_model, max_new_tokens=NEW_TOKENS,
                           eos_id=-1, pad_id=0)
  params = jax.jit(policy_model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  value = rl.zero_value_params(params, value_model.config) if value_model is not None else None
  score = (rewards.TokenFunctionReward(e_fraction_on_tokens) if reward == "device"
           else rewards.HostReward(scorer=EFraction(), tokenizer=StandInTokenizer()))
  frozen = {"ref": params, "reward": score, "norm": {"mean": jnp.float32(0.0), "std": jnp.float32(1.0)}}
  iteration = jax.jit(functools.partial(alg.iteration, frozen=frozen), donate_argnums=0)
  sample = jax.jit(functools.partial(rl.sample, policy_model=policy_model, max_new_tokens=NEW_TOKENS, eos_id=-1,
                                     pad_id=0))
  state = jax.jit(alg.init)(params, value, 0.05)
  return iteration, sample, state, alg.hp, params, config.group_size


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--algorithms", default="ppo,grpo,rloo", help="comma-separated rl.algorithm values")
  parser.add_argument("--epochs", type=int, default=1, help="PPO epochs (one minibatch each)")
  parser.add_argument("--reward", choices=["device", "host"], default="device")
  parser.add_argument("--shape", choices=sorted(SHAPES), default="peer")
  parser.add_argument("--iterations", type=int, default=10)
  parser.add_argument("--profile", default="", help="write a jax.profiler trace of 3 iterations here")
  parser.add_argument("--json", default="", help="write {algorithm: {median_iteration_s, ...}} here")
  args = parser.parse_args()
  devices = jax.devices()
  print(f"jax {jax.__version__} | {len(devices)} x {devices[0].device_kind} ({devices[0].platform}) | {args.shape} "
        f"shape, {ROWS} rollouts of {PROMPT_LEN} + {NEW_TOKENS} tokens, reward on the {args.reward}")
  print("| algorithm | iteration | rollout alone | episodes/s |")
  print("|---|---|---|---|")
  rng = np.random.default_rng(0)
  results = {}
  for algorithm in args.algorithms.split(","):
    iteration, sample, state, hp, params, group = build(algorithm, args.epochs, args.reward, args.shape)
    prompts_PxL = rng.integers(1, SHAPES[args.shape]["vocab_size"], (ROWS // group, PROMPT_LEN), dtype=np.int32)
    batch = rl.repeat_rows({"prompt": prompts_PxL, "prompt_mask": np.ones_like(prompts_PxL)}, times=group)
    batch = jax.device_put(batch)
    temperature = jnp.float32(1.0)
    times, roll_times = [], []
    for i in range(args.iterations + 1):  # the first call compiles
      t0 = time.perf_counter()
      state, metrics = iteration(state, batch, jax.random.key(i), hp)
      jax.block_until_ready(metrics)
      t1 = time.perf_counter()
      jax.block_until_ready(sample(params, params, batch["prompt"], batch["prompt_mask"], jax.random.key(i),
                                   temperature))
      t2 = time.perf_counter()
      if i:
        times.append(t1 - t0)
        roll_times.append(t2 - t1)
    if args.profile:
      with jax.profiler.trace(f"{args.profile}/{algorithm}"):
        for i in range(3):
          state, metrics = iteration(state, batch, jax.random.key(100 + i), hp)
        jax.block_until_ready(metrics)
    name = f"{algorithm} ({args.epochs} epoch{'s' * (args.epochs > 1)})" if algorithm == "ppo" else algorithm
    it, roll = statistics.median(times), statistics.median(roll_times)
    print(f"| {name} | {it:.3f} s | {roll:.3f} s | {ROWS / it:.1f} |", flush=True)
    results[algorithm] = {"median_iteration_s": it, "min_iteration_s": min(times), "median_rollout_s": roll,
                          "epochs": args.epochs, "reward": args.reward, "jax": jax.__version__}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
