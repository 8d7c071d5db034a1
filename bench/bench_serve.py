"""Requests/s and tokens/s of `rlhf-jax serve` at 1, 4 and 16 concurrent clients.

Starts the OpenAI-compatible server on a local port (in this process, uvicorn in a thread) and
drives it with the official `openai` client from C threads, each sending completion requests one
after another; prints, per concurrency, requests/s, completion tokens/s, latency percentiles and
how many choices the engine decoded together on average. Every bucket the timed requests use is
compiled before (`Engine.warmup`), and an untimed round of requests precedes each timed one.

  python bench/bench_serve.py                                  # a random model of the tiny shape
  python bench/bench_serve.py --shape peer --concurrency 1,4,16 --max-tokens 48
  python bench/bench_serve.py --model workdirs/quickstart/ppo   # a trained run or a Hugging Face folder

The random model reads and writes "t17 t503 ..." (one word per token id), so no tokenizer file is
needed; its answers are noise, its cost is a real model's of that shape.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import threading
import time

import jax
import openai
import uvicorn

from rlhf_jax import sharding, trained
from rlhf_jax.local_http import bind
from rlhf_jax.models.transformer import ModelConfig, init_params
from rlhf_jax.serving import engine as engine_lib
from rlhf_jax.serving import openai_api

from hardware import SHAPES  # bench/hardware.py (this script's folder)


class WordIdTokenizer:
  """Token id k is the word "tk"; enough of a tokenizer for the server, with no file."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

  def encode(self, text: str) -> list[int]:
    return [int(w[1:]) % self.vocab_size for w in text.split() if w[:1] == "t" and w[1:].isdigit()]

  def decode(self, ids) -> str:
    return "".join(f" t{i}" for i in ids)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default=None, help="a run's workdir or a Hugging Face folder (default: random)")
  parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="the random model's shape")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--concurrency", default="1,4,16", help="comma-separated numbers of concurrent clients")
  parser.add_argument("--requests", type=int, default=32, help="timed requests per concurrency")
  parser.add_argument("--prompt-tokens", type=int, default=24)
  parser.add_argument("--max-tokens", type=int, default=48)
  parser.add_argument("--max-batch", type=int, default=16)
  parser.add_argument("--chunk", type=int, default=8)
  args = parser.parse_args()

  if args.model:
    policy = trained.load(args.model, sharding.make_mesh())
    config, params, tokenizer, name = policy.model, policy.params, policy.tokenizer, args.model
    prompt = lambda i: f"Tell me about number {i}."
  else:
    config = ModelConfig(**SHAPES[args.shape], dtype=args.dtype)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
    tokenizer, name = WordIdTokenizer(config.vocab_size), f"random {args.shape}"
    prompt = lambda i: " ".join(f"t{(i * 7919 + j * 31) % config.vocab_size}" for j in range(args.prompt_tokens))
  engine = engine_lib.Engine(config, params, tokenizer, max_batch=args.max_batch, chunk=args.chunk)
  start = time.perf_counter()
  engine.warmup(len(tokenizer.encode(prompt(0))), args.max_tokens)
  compile_s = time.perf_counter() - start
  app = openai_api.create_app(engine, model_name="bench")
  sock = bind("127.0.0.1", 0)
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.01)
  client = openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="-", max_retries=0,
                         timeout=600)

  def ask(i: int) -> tuple[float, int]:
    start = time.perf_counter()
    out = client.completions.create(model="bench", prompt=prompt(i), max_tokens=args.max_tokens, seed=i)
    return time.perf_counter() - start, out.usage.completion_tokens

  def round_of(clients: int, requests: int, first: int) -> tuple[float, list[tuple[float, int]]]:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
      results = list(pool.map(ask, range(first, first + requests)))
    return time.perf_counter() - start, results

  print(f"model: {name} ({config.n_layers} layers, d_model {config.d_model}, vocab {config.vocab_size}, "
        f"{config.dtype}); device: {jax.devices()[0].device_kind} x{jax.device_count()}; jax {jax.__version__}")
  print(f"{args.requests} requests per row, prompt ~{args.prompt_tokens} tokens, max_tokens {args.max_tokens}, "
        f"max_batch {args.max_batch}, chunk {args.chunk}; compiling every batch bucket took {compile_s:.1f} s")
  print("| clients | requests/s | completion tokens/s | latency p50 (s) | p90 (s) | choices per batch |")
  print("|---|---|---|---|---|---|")
  for clients in [int(c) for c in args.concurrency.split(",")]:
    round_of(clients, max(clients, 4) * 2, 10_000)  # warm-up: compiles the buckets this load forms
    batches, rows = engine.batches, engine.rows
    seconds, results = round_of(clients, args.requests, 0)
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    per_batch = (engine.rows - rows) / max(engine.batches - batches, 1)
    print(f"| {clients} | {len(results) / seconds:.2f} | {tokens / seconds:.0f} | "
          f"{statistics.median(latencies):.3f} | {latencies[int(0.9 * (len(latencies) - 1))]:.3f} | "
          f"{per_batch:.1f} |", flush=True)
  server.should_exit = True
  thread.join()
  engine.close()


if __name__ == "__main__":
  main()
