"""An OpenAI-compatible HTTP API over a trained policy: `rlhf-jax serve RUN`.

  rlhf-jax serve workdirs/quickstart/ppo                     # http://127.0.0.1:8000/v1
  rlhf-jax serve ./Qwen2.5-0.5B-Instruct --port 8001 --api-key "$KEY"

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
  client.chat.completions.create(model="ppo", messages=[{"role": "user", "content": "Hi"}])

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream`: server-sent
events, `data: {chunk}` lines ending with `data: [DONE]`), `GET /v1/models`, `GET /health`.
Sampling parameters: temperature (0 = greedy), top_p, top_k (an extension, as vLLM's), max_tokens
(chat: also max_completion_tokens), stop (a string or up to 4), n, seed; `usage` counts the
prompt's tokens and every choice's sampled tokens. A chat request's messages are rendered with
the tokenizer's chat template (the generation prompt appended); a model without one reads the
messages' contents end to end, separated by EOS, as `rlhf-jax chat` does.

What a client gets wrong is a 4xx in OpenAI's error shape (`{"error": {"message", "type",
"param", "code"}}`) naming the field: unknown fields, values out of range, features this server
does not have (logprobs, echo, tools, penalties other than 0), a prompt and max_tokens longer than
the model's context, a body over the size limit (413) or not JSON (415), a wrong or missing API
key (401), an unknown model name (404); a full queue is 503.

Security: the server binds 127.0.0.1 unless `--host` says otherwise (then it warns, and an API
key is what keeps others out; the traffic is plain HTTP). On a loopback address every request's
Host header must name it (`local_http.HostCheck`), so a web page cannot reach the model
through DNS rebinding. With `api_key`, every /v1 request needs `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rlhf_jax import chat as chat_lib
from rlhf_jax import sharding, trained
from rlhf_jax.errors import UserError
from rlhf_jax.local_http import ApiError as BodyError
from rlhf_jax.local_http import LOOPBACK_NAMES, HostCheck, bind, host_name, is_loopback, read_json_object, run_uvicorn
from rlhf_jax.serving.engine import SEEDS, Delta, Engine, Failed, Finished, GenerationRequest, QueueFull

MAX_BODY_BYTES = 1 << 20
MAX_STOPS = 4
MAX_PROMPTS = 16  # a completions request's list of prompts


class ApiError(Exception):
  def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    super().__init__(message)
    self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
  return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


# ---------------------------------------------------------------------------------------------
# Request fields: each check returns the value or raises ApiError naming the field.

# Fields a client may send that change nothing here, and the only values that mean "off".
_NEUTRAL = {"presence_penalty": (0, 0.0, None), "frequency_penalty": (0, 0.0, None), "logprobs": (None, False),
            "top_logprobs": (None, 0), "echo": (False, None), "best_of": (None, 1), "logit_bias": (None, {}),
            "user": None, "suffix": (None,), "tools": (None, []), "tool_choice": (None, "none"),
            "response_format": (None, {"type": "text"}), "parallel_tool_calls": None, "service_tier": None,
            "metadata": None, "store": (None, False)}
_SAMPLING = ("model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "stream_options")
COMPLETION_FIELDS = ("prompt", *_SAMPLING)
CHAT_FIELDS = ("messages", "max_completion_tokens", *_SAMPLING)


def _number(body: Mapping[str, Any], field: str, default: float, low: float, high: float,
            low_open: bool = False) -> float:
  value = body.get(field)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      (low < value if low_open else low <= value) and value <= high):
    raise ApiError(400, f"{field}: expected a number in {'(' if low_open else '['}{low}, {high}], got {value!r}", field)
  return float(value)


def _integer(body: Mapping[str, Any], field: str, default: int | None, low: int, high: int) -> int | None:
  value = body.get(field)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
    raise ApiError(400, f"{field}: expected an integer in [{low}, {high}], got {value!r}", field)
  return value


def _check_fields(body: Mapping[str, Any], known: tuple[str, ...]) -> None:
  for field, value in body.items():
    if field in known:
      continue
    if field not in _NEUTRAL:
      raise ApiError(400, f"{field}: not a field this server knows; it takes {', '.join(known)}", field)
    neutral = _NEUTRAL[field]
    if neutral is not None and value not in neutral:
      raise ApiError(400, f"{field}: not supported by this server (only {neutral[0]!r} is accepted), got {value!r}",
                     field)


def _stops(body: Mapping[str, Any]) -> tuple[str, ...]:
  value = body.get("stop")
  if value is None:
    return ()
  stops = [value] if isinstance(value, str) else value
  if (not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOPS
      or not all(isinstance(s, str) and s for s in stops)):
    raise ApiError(400, f"stop: expected a non-empty string or a list of 1..{MAX_STOPS} of them, got {value!r}", "stop")
  return tuple(stops)


class Settings:
  """What a request asks of the sampler, checked."""

  def __init__(self, body: Mapping[str, Any], *, max_tokens_limit: int, max_n: int, default_max_tokens: int | None):
    self.temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    self.top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    top_k = _integer(body, "top_k", 0, -1, 1 << 20)
    self.top_k = 0 if top_k == -1 else top_k  # vLLM's -1 (off) too
    self.n = _integer(body, "n", 1, 1, max_n)
    self.seed = _integer(body, "seed", None, *SEEDS)
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    self.max_tokens = _integer(body, field, default_max_tokens, 1, max_tokens_limit)
    self.max_tokens_field = field
    self.stop = _stops(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
      raise ApiError(400, f"stream: expected true or false, got {stream!r}", "stream")
    self.stream = bool(stream)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
      raise ApiError(400, f"stream_options: expected {{\"include_usage\": bool}}, got {options!r}", "stream_options")
    self.include_usage = bool(options.get("include_usage", False))

  def request(self, prompt_ids: list[int], max_tokens: int, seed: int) -> GenerationRequest:
    return GenerationRequest(prompt_ids=tuple(prompt_ids), max_tokens=max_tokens, temperature=self.temperature,
                             top_p=self.top_p, top_k=self.top_k, n=self.n, seed=seed, stop=self.stop)


def _prompts(body: Mapping[str, Any], tokenizer) -> list[list[int]]:
  """A completions request's prompts as token ids: a string, a list of strings, or token ids."""
  value = body.get("prompt")
  if isinstance(value, str):
    return [tokenizer.encode(value)]
  if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
    return [list(value)]
  if isinstance(value, list) and 1 <= len(value) <= MAX_PROMPTS and all(isinstance(p, str) for p in value):
    return [tokenizer.encode(p) for p in value]
  raise ApiError(400, f"prompt: expected a string, a list of 1..{MAX_PROMPTS} strings or a list of token ids, "
                 f"got {_short(value)}", "prompt")


def _content(message: Mapping[str, Any], i: int) -> str:
  content = message.get("content")
  if isinstance(content, str):
    return content
  if isinstance(content, list) and all(
      isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
    return "".join(p["text"] for p in content)
  raise ApiError(400, f"messages[{i}].content: expected a string or a list of text parts, got {_short(content)}",
                 f"messages[{i}].content")


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
  value = body.get("messages")
  if not isinstance(value, list) or not value:
    raise ApiError(400, f"messages: expected a non-empty list of {{role, content}}, got {_short(value)}", "messages")
  messages = []
  for i, message in enumerate(value):
    if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
      raise ApiError(400, f"messages[{i}].role: expected system, developer, user or assistant, got "
                     f"{_short(message.get('role') if isinstance(message, dict) else message)}", f"messages[{i}].role")
    role = "system" if message["role"] == "developer" else message["role"]
    messages.append({"role": role, "content": _content(message, i)})
  return messages


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
  """The tokens the model reads for `messages`: its chat template's rendering, ending where the
  assistant's turn begins; without a template, the contents end to end, separated by EOS."""
  if chat_lib.uses_template(tokenizer):
    return chat_lib.conversation_ids(tokenizer, messages)
  ids: list[int] = []
  for message in messages[:-1]:
    ids += tokenizer.encode(message["content"]) + [tokenizer.eos_id]
  return ids + tokenizer.encode(messages[-1]["content"])


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:60] + "..."


# ---------------------------------------------------------------------------------------------
# Running requests on the engine.


class _Choices:
  """The events of a request's choices (every prompt's n), moved from the engine's thread to the
  event loop through one queue; choice i*n + j is choice j of prompt i."""

  def __init__(self):
    self.queue: asyncio.Queue = asyncio.Queue()
    self.handles: list = []
    self.open = 0

  def submit(self, engine: Engine, request: GenerationRequest, first_index: int) -> None:
    loop = asyncio.get_running_loop()

    def sink(event) -> None:  # called on the engine's thread
      if not isinstance(event, Failed):
        event = dataclasses.replace(event, index=event.index + first_index)
      loop.call_soon_threadsafe(self.queue.put_nowait, event)
    self.handles.append(engine.submit(request, sink))
    self.open += request.n

  def cancel(self) -> None:
    """Frees the rows of a request that failed or whose client left."""
    for handle in self.handles:
      handle.cancel()

  async def events(self) -> AsyncIterator[Delta | Finished]:
    while self.open:
      event = await self.queue.get()
      if isinstance(event, Failed):
        raise ApiError(500, event.message, kind="server_error")
      if isinstance(event, Finished):
        self.open -= 1
      yield event


def create_app(engine: Engine, *, model_name: str, api_key: str | None = None, host: str = "127.0.0.1",
               max_tokens_limit: int | None = None, max_n: int | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
  """The ASGI app serving `engine`'s model under `model_name`.

  `max_tokens_limit` caps a request's max_tokens (default: the model's context), `max_n` its n
  (default: the engine's largest batch); `host` is the address bound, for the Host check.
  """
  tokenizer, context = engine.tokenizer, engine.config.max_len
  max_tokens_limit = min(max_tokens_limit or context, context)
  max_n = min(max_n or engine.max_batch, engine.max_batch)
  created = int(time.time())

  def authorize(request: Request) -> None:
    if api_key is None:
      return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
      raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key "
                     "the server was started with", kind="authentication_error")

  async def read_body(request: Request) -> dict[str, Any]:
    try:  # size-limited as it streams in, a JSON object, 4xx otherwise
      value = await read_json_object(request, max_body_bytes)
    except BodyError as e:
      raise ApiError(e.status, e.message) from None
    model = value.get("model")
    if model is None:
      raise ApiError(400, f"model: required; this server serves {model_name!r}", "model")
    if model != model_name:
      raise ApiError(404, f"model: {_short(model)} is not served here; this server serves {model_name!r}", "model",
                     kind="not_found_error")
    return value

  def start(settings: Settings, prompts: list[list[int]], field: str) -> _Choices:
    seed = settings.seed if settings.seed is not None else secrets.randbits(63)
    choices = _Choices()
    try:
      for i, ids in enumerate(prompts):
        max_tokens = settings.max_tokens
        if max_tokens is None:  # chat without max_tokens: what the context leaves, up to the limit
          max_tokens = max(1, min(max_tokens_limit, context - max(len(ids), 1)))
        # Prompt i samples with seed + i, wrapped into the 64-bit range.
        seed_i = (seed + i - SEEDS[0]) % (1 << 64) + SEEDS[0]
        choices.submit(engine, settings.request(ids, max_tokens, seed_i), first_index=i * settings.n)
    except UserError as e:
      choices.cancel()
      raise ApiError(400, str(e).replace("max_tokens", field, 1), field) from None
    except QueueFull as e:
      choices.cancel()
      raise ApiError(503, f"server busy: {e}", kind="server_error") from None
    return choices

  def usage(prompts: list[list[int]], tokens: int) -> dict[str, int]:
    prompt_tokens = sum(len(ids) for ids in prompts)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}

  async def respond(request: Request, *, chat: bool) -> Response:
    authorize(request)
    body = await read_body(request)
    _check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    settings = Settings(body, max_tokens_limit=max_tokens_limit, max_n=max_n,
                        default_max_tokens=None if chat else min(16, max_tokens_limit))
    prompts = [chat_prompt_ids(tokenizer, _messages(body))] if chat else _prompts(body, tokenizer)
    choices = start(settings, prompts, settings.max_tokens_field)
    kind = "chat.completion" if chat else "text_completion"
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    head = {"id": ident, "object": kind, "created": int(time.time()), "model": model_name}
    n_choices = len(prompts) * settings.n

    def text_choice(index: int, text: str | None, reason: str | None, first: bool = False) -> dict[str, Any]:
      if not chat:
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
      if settings.stream:
        delta = ({"role": "assistant", "content": text or ""} if first else {} if text is None else {"content": text})
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
      return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
              "finish_reason": reason}

    if not settings.stream:
      texts, reasons, tokens = [""] * n_choices, [None] * n_choices, 0
      try:
        async for event in choices.events():
          if isinstance(event, Delta):
            texts[event.index] += event.text
          else:
            reasons[event.index], tokens = event.reason, tokens + event.tokens
      finally:
        choices.cancel()
      return JSONResponse({**head, "choices": [text_choice(i, texts[i], reasons[i]) for i in range(n_choices)],
                           "usage": usage(prompts, tokens)})

    async def stream() -> AsyncIterator[str]:
      chunk_head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
      tokens = 0

      def line(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**chunk_head, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"

      try:
        if chat:  # the role comes first, in a chunk of its own, as OpenAI sends it
          yield line([text_choice(i, "", None, first=True) for i in range(n_choices)])
        async for event in choices.events():
          if isinstance(event, Delta):
            yield line([text_choice(event.index, event.text, None)])
          else:
            tokens += event.tokens
            yield line([text_choice(event.index, None if chat else "", event.reason)])
        if settings.include_usage:
          yield line([], usage=usage(prompts, tokens))
      except ApiError as e:  # the status line is sent already: the error goes in the stream
        yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.kind, 'param': None, 'code': None}})}\n\n"
      finally:
        choices.cancel()
      yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

  def endpoint(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def wrapped(request: Request) -> Response:
      try:
        return await handler(request)
      except ApiError as e:
        return _error(e.status, e.message, e.param, e.kind)
    return wrapped

  async def completions(request: Request) -> Response:
    return await respond(request, chat=False)

  async def chat_completions(request: Request) -> Response:
    return await respond(request, chat=True)

  async def models(request: Request) -> Response:
    authorize(request)
    return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                                      "owned_by": "rlhf-jax", "max_model_len": context}]})

  async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "model": model_name, "batches": engine.batches, "choices": engine.rows})

  async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    response.headers.update(exc.headers or {})
    return response

  app = Starlette(routes=[
      Route("/v1/completions", endpoint(completions), methods=["POST"]),
      Route("/v1/chat/completions", endpoint(chat_completions), methods=["POST"]),
      Route("/v1/models", endpoint(models), methods=["GET"]),
      Route("/health", health, methods=["GET"]),
  ], exception_handlers={HTTPException: http_error})
  if is_loopback(host):
    app.add_middleware(HostCheck, names=(*LOOPBACK_NAMES, host_name(host)), command="rlhf-jax serve")
  return app


def serve(workdir: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          model_name: str | None = None, step: int | None = None, max_batch: int = 16, chunk: int = 8,
          max_tokens_limit: int | None = None, warmup: tuple[int, int] | None = None) -> None:
  """Loads the policy of `workdir` (a run, a Hugging Face folder or `hf:NAME`; LoRA merged) and
  serves it until Ctrl-C. `warmup` (prompt tokens, max_tokens): first compile every batch bucket
  for requests of that size, sampled and greedy, so the first clients do not wait for compiles."""
  policy = trained.load(workdir, sharding.make_mesh(), step)
  name = model_name or Path(str(workdir).rstrip("/")).name or "model"
  sock = bind(host, port)  # before loading the engine's thread: a busy port fails at once
  engine = Engine(policy.model, policy.params, policy.tokenizer, max_batch=max_batch, chunk=chunk)
  try:
    if warmup:
      start = time.perf_counter()
      for filtered in (False, True):
        engine.warmup(*warmup, filtered=filtered)
      print(f"compiled every batch bucket for {warmup[0]}-token prompts and max_tokens {warmup[1]} in "
            f"{time.perf_counter() - start:.1f} s", flush=True)
    app = create_app(engine, model_name=name, api_key=api_key, host=host, max_tokens_limit=max_tokens_limit)
    if not is_loopback(host):
      print(f"warning: serving on {host}, not 127.0.0.1: whoever reaches this address can use the model"
            f"{'' if api_key else ' (no --api-key is set)'}, over plain unencrypted HTTP", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {workdir} (step {policy.step}) as model {name!r} at http://{shown}:{sock.getsockname()[1]}/v1"
          f"{' (API key required)' if api_key else ''}; Ctrl-C stops", flush=True)
    run_uvicorn(app, sock)
  finally:
    engine.close()
    sock.close()
