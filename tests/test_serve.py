"""`rlhf-jax serve`: the batching engine against the sampler it batches, and the OpenAI-compatible
API with real clients (the official `openai` package and curl) on a local port."""

import concurrent.futures
import json
import shutil
import subprocess
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest
import uvicorn

from rlhf_jax import cli, sampling, sharding, trained
from rlhf_jax.errors import UserError
from rlhf_jax.local_http import bind
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.serving import engine as engine_lib
from rlhf_jax.serving import openai_api

FIXTURES = Path(__file__).parent / "data" / "tiny_hf"
API_KEY = "sk-test-key"
MODEL = "tiny-qwen2"


@pytest.fixture(scope="module")
def policy():
  # A Qwen2-layout folder with a byte-level tokenizer and a ChatML template; 64 positions.
  return trained.load(FIXTURES / "qwen2", sharding.make_mesh())


@pytest.fixture(scope="module")
def engine(policy):
  engine = engine_lib.Engine(policy.model, policy.params, policy.tokenizer, max_batch=16, chunk=4)
  yield engine
  engine.close()


@pytest.fixture(scope="module")
def server(engine):
  """The app on a random local port, served by uvicorn in a thread: `http://127.0.0.1:PORT`."""
  sock = bind("127.0.0.1", 0)
  app = openai_api.create_app(engine, model_name=MODEL, api_key=API_KEY, max_tokens_limit=48)
  uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
  thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  while not uv.started:
    thread.join(0.01)
  yield f"http://127.0.0.1:{sock.getsockname()[1]}"
  uv.should_exit = True
  thread.join()
  sock.close()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _run(engine, request):
  """Every event of one request, in order."""
  events, done = [], threading.Event()

  def sink(event):
    events.append(event)
    if sum(not isinstance(e, engine_lib.Delta) for e in events) == request.n:
      done.set()

  engine.submit(request, sink)
  assert done.wait(120)
  return events


def _texts(events, n):
  texts = [""] * n
  for event in events:
    if isinstance(event, engine_lib.Delta):
      texts[event.index] += event.text
  return texts


def test_engine_samples_what_generate_samples_with_the_row_key(engine, policy):
  """Choice j of seed s is `generate` with row key fold_in(key(s), j): the batching, bucketing and
  chunking change nothing a row samples."""
  tok = policy.tokenizer
  ids = tok.encode("The cat")
  request = engine_lib.GenerationRequest(prompt_ids=tuple(ids), max_tokens=20, temperature=0.9, top_p=0.95, n=3,
                                         seed=11)
  events = _run(engine, request)
  P = 10  # any left padding gives the same tokens
  prompt = jnp.asarray([[tok.pad_id] * (P - len(ids)) + ids] * 3)
  mask = jnp.asarray([[False] * (P - len(ids)) + [True] * len(ids)] * 3)
  keys = jnp.stack([jax.random.fold_in(jax.random.key(11), j) for j in range(3)])
  generate = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)
  out = generate(policy.params, prompt, mask, keys, model=Transformer(policy.model), max_new_tokens=20, temperature=0.9,
                 top_p=0.95, eos_id=tok.eos_id, pad_id=tok.pad_id)
  want = []
  for row, row_mask in zip(np.asarray(out.tokens_BxN), np.asarray(out.mask_BxN)):
    real = [int(t) for t, m in zip(row, row_mask) if m]
    want.append(tok.decode([t for t in real if t != tok.eos_id]))
  assert _texts(events, 3) == want and len(set(want)) == 3
  finished = [e for e in events if isinstance(e, engine_lib.Finished)]
  assert sorted(e.index for e in finished) == [0, 1, 2]
  for e in finished:
    ended = bool(np.asarray(out.ended_B)[e.index])
    assert (e.reason, e.tokens) == ("stop" if ended else "length", int(np.asarray(out.lengths_B)[e.index]))


def test_engine_stop_strings_and_limits(engine, policy):
  tok = policy.tokenizer
  base = engine_lib.GenerationRequest(prompt_ids=tuple(tok.encode("Hello")), max_tokens=24, seed=5)
  [full] = _texts(_run(engine, base), 1)
  stop = full[6:8]
  events = _run(engine, engine_lib.GenerationRequest(**{**base.__dict__, "stop": ("zzz-never", stop)}))
  assert _texts(events, 1) == [full[:full.index(stop)]]
  assert events[-1] == engine_lib.Finished(0, "stop", events[-1].tokens) and events[-1].tokens < 24
  with pytest.raises(UserError, match=r"max_tokens: the prompt's 1 tokens \+ max_tokens 64 = 65 exceed the "
                                      r"model's context of 64"):
    engine.submit(engine_lib.GenerationRequest(prompt_ids=(5,), max_tokens=64), print)
  with pytest.raises(UserError, match=r"n: expected 1\.\.16"):
    engine.submit(engine_lib.GenerationRequest(prompt_ids=(5,), max_tokens=4, n=17), print)


def test_openai_client_completions_chat_streaming_n_and_stop(client, policy):
  tok = policy.tokenizer
  out = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=12, temperature=0.8, seed=3)
  [choice] = out.choices
  assert choice.finish_reason in ("stop", "length") and isinstance(choice.text, str)
  assert out.usage.prompt_tokens == len(tok.encode("Once upon")) and 0 < out.usage.completion_tokens <= 12
  again = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=12, temperature=0.8, seed=3)
  assert again.choices[0].text == choice.text  # the seed fixes the answer

  # Streaming sends the same text in pieces, then the usage, for completions and chat alike.
  chunks = list(client.completions.create(model=MODEL, prompt="Once upon", max_tokens=12, temperature=0.8, seed=3,
                                          stream=True, stream_options={"include_usage": True}))
  assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
  assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason

  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
  reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, seed=4, n=3)
  assert [c.index for c in reply.choices] == [0, 1, 2] and len({c.message.content for c in reply.choices}) == 3
  assert all(c.message.role == "assistant" for c in reply.choices)
  # The prompt is the chat template's rendering, with the generation prompt.
  assert reply.usage.prompt_tokens == len(tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True)))
  streamed = [""] * 3
  for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, seed=4, n=3, stream=True):
    for c in chunk.choices:
      streamed[c.index] += c.delta.content or ""
  assert streamed == [c.message.content for c in reply.choices]

  # A stop string ends the text before it, streamed or not.
  full = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=24, seed=9).choices[0].text
  stop = full[5:7]
  cut = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=24, seed=9, stop=[stop]).choices[0]
  assert (cut.text, cut.finish_reason) == (full[:full.index(stop)], "stop")
  pieces = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=24, seed=9, stop=stop, stream=True)
  assert "".join(c.choices[0].text for c in pieces) == cut.text

  assert [m.id for m in client.models.list().data] == [MODEL]

  # A list of prompts: prompt i's n choices are choices i*n..i*n+n-1, sampled with seed + i (wrapped).
  both = client.completions.create(model=MODEL, prompt=["Hi", "Once upon"], n=2, max_tokens=6, seed=(1 << 63) - 1)
  assert [c.index for c in both.choices] == [0, 1, 2, 3]
  second = client.completions.create(model=MODEL, prompt="Once upon", n=2, max_tokens=6, seed=-(1 << 63))
  assert [c.text for c in both.choices[2:]] == [c.text for c in second.choices]


def test_bad_requests_are_4xx_naming_the_field(client, server):
  with pytest.raises(openai.BadRequestError, match=r"max_tokens: expected an integer in \[1, 48\], got 1000"):
    client.completions.create(model=MODEL, prompt="x", max_tokens=1000)
  with pytest.raises(openai.BadRequestError, match=r"max_tokens: the prompt's \d+ tokens \+ max_tokens 40"):
    client.completions.create(model=MODEL, prompt="word " * 20, max_tokens=40)
  with pytest.raises(openai.BadRequestError, match="top_p: expected a number in \\(0.0, 1.0\\]"):
    client.completions.create(model=MODEL, prompt="x", top_p=0)
  with pytest.raises(openai.BadRequestError, match="logprobs: not supported"):
    client.completions.create(model=MODEL, prompt="x", logprobs=2)
  with pytest.raises(openai.BadRequestError, match=r"messages\[0\].role"):
    client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}])
  with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here; this server serves 'tiny-qwen2'"):
    client.completions.create(model="gpt-4", prompt="x")
  with pytest.raises(openai.BadRequestError, match=r"seed: expected an integer in \[-9223372036854775808, "):
    client.completions.create(model=MODEL, prompt="x", seed=1 << 63)  # beyond jax.random.key's range
  with pytest.raises(openai.AuthenticationError, match="API key"):
    openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
def test_curl(server):
  def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True, text=True, check=True).stdout

  auth = ["-H", f"Authorization: Bearer {API_KEY}", "-H", "Content-Type: application/json"]
  body = {"model": MODEL, "prompt": "Hello", "max_tokens": 6, "seed": 1}
  out = json.loads(curl(*auth, "-d", json.dumps(body), server + "/v1/completions"))
  assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] <= 6
  lines = curl("-N", *auth, "-d", json.dumps({**body, "stream": True}), server + "/v1/completions").splitlines()
  events = [line[len("data: "):] for line in lines if line]
  assert events[-1] == "[DONE]" and all(line.startswith("data: ") for line in lines if line)
  assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == out["choices"][0]["text"]
  assert json.loads(curl(server + "/health"))["status"] == "ok"
  assert "401" in curl("-o", "/dev/null", "-w", "%{http_code}", "-d", json.dumps(body), server + "/v1/completions")
  # Not JSON (curl -d alone sends a form's type), and a body over the 1 MiB limit.
  status = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {API_KEY}", "-d",
                json.dumps(body), server + "/v1/completions")
  assert status == "415"
  huge = json.dumps({**body, "prompt": "x" * (1 << 20)})
  out = subprocess.run(["curl", "-sS", *auth, "--data-binary", "@-", server + "/v1/completions"], input=huge,
                       capture_output=True, text=True, check=True).stdout
  assert json.loads(out)["error"]["message"] == f"request body of {len(huge)} bytes; the limit is 1048576"
  # A page that re-points its own name at 127.0.0.1 (DNS rebinding) is refused by the Host check.
  assert "421" in curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: evil.example", server + "/health")


def test_16_concurrent_requests_are_batched_and_each_gets_its_own_answer(client, engine):
  """16 clients at once: they share batches, and each answer is the one its request gets alone."""

  def ask(i):
    return client.completions.create(model=MODEL, prompt=f"Story {i}:", max_tokens=10, temperature=1.0,
                                     seed=100 + i).choices[0].text

  batches = engine.batches
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    together = list(pool.map(ask, range(16)))
  assert engine.batches - batches < 16  # requests shared batches
  alone = [ask(i) for i in range(16)]
  assert together == alone and len(set(alone)) == 16


def test_cli_serve_passes_its_flags(monkeypatch):
  seen = {}
  monkeypatch.setattr(openai_api, "serve", lambda workdir, **kwargs: seen.update(workdir=workdir, **kwargs))
  monkeypatch.setenv("RLHF_JAX_API_KEY", "from-env")
  assert cli.main(["serve", "runs/ppo", "--port", "0", "--max-batch", "8", "--max-tokens", "32"]) == 0
  assert seen == {"workdir": "runs/ppo", "host": "127.0.0.1", "port": 0, "api_key": "from-env", "model_name": None,
                  "step": None, "max_batch": 8, "chunk": 8, "max_tokens_limit": 32, "warmup": None}
  assert cli.main(["serve", "runs/ppo", "--warmup", "64:128"]) == 0 and seen["warmup"] == (64, 128)
  assert cli.main(["serve", "runs/ppo", "--warmup", "64"]) == 2


def test_warmup_runs_every_batch_bucket_and_leaves_the_counters_to_requests(policy):
  engine = engine_lib.Engine(policy.model, policy.params, policy.tokenizer, max_batch=4, chunk=4)
  try:
    engine.warmup(5, 6)
    assert (engine.batches, engine.rows) == (0, 0)
    with pytest.raises(UserError, match="max_tokens"):
      engine.warmup(60, 10)  # longer than the model's 64 positions
    [text] = _texts(_run(engine, engine_lib.GenerationRequest(prompt_ids=(5, 6, 7), max_tokens=6, seed=1)), 1)
    assert (engine.batches, engine.rows) == (1, 1) and isinstance(text, str)
  finally:
    engine.close()
