"""Judge samples in a web page on this machine: compare two responses, rate one from 1 to N,
or score one on each criterion of a rubric.

  rlhf-jax label --store feedback.db --labeler alice            # pairs, in the browser
  rlhf-jax label --store feedback.db --labeler alice --labeler bob   # one server, a URL each
  rlhf-jax label --store feedback.db --labeler alice --rate 3   # "rate this text 1-3"
  rlhf-jax label --store feedback.db --labeler alice --rubric default   # accuracy, fluency, ...

The same judgements as `terminal.py`, in a page that is easier on the eyes for long texts. The
command prints one URL per labeler, each with that labeler's own secret token
(`http://127.0.0.1:8765/?token=...`); open yours, then keys: pairs `a` / `b` / `t` (tie) /
`s` (skip) or the arrow keys (left, right, down, up); ratings `1`..`N`; rubrics a digit per
criterion, top to bottom (the last one submits; Backspace or left goes back a criterion, Enter
submits once all are set); `u` undoes the last judgement (a rubric judgement's scores go
together). Every answer is written to the store (and committed) before the page shows the next
task, so closing the tab loses nothing answered.

Several people can label at once, each through their own URL. Identity is the token: the server
maps each token to one labeler name (`tokens={token: name}`), takes the labeler of every request
from its token, and the page only shows that name. A request that names a labeler anyway (a
body's `labeler`, a query's `?labeler=`) must name the token's own, else 403; so whoever holds
one labeler's URL cannot judge or undo as another. The store leases each task to one labeler:
two pages never get the same pair, a judgement of a task leased to someone else is refused with
409 until that lease expires, and undo retracts only the token's labeler's judgements.

Security, because model text is untrusted and the port is reachable by every local user and by
any web page the labeler has open:
  * the server binds 127.0.0.1 unless asked otherwise (and then warns);
  * the Host allow-list stops DNS rebinding: a request whose Host header is not one of this
    server's names (127.0.0.1, localhost, [::1] and the `--host` name) with its port is refused
    with 421 before any other handling, whatever the method and path. A rebinding page (a site
    whose name the attacker re-points to 127.0.0.1) is same-origin with the server, so it could
    send any header and read every response, page and static files included; what it cannot
    change is the Host its browser sends, which still names the attacker's site;
  * the tokens stop other local users and processes (which can connect with any Host they like)
    and other sites' pages: every /api request, reads included, needs a labeler's start-up token
    in the `X-Label-Token` header (reads hand out leases, which change the queue, and show model
    text). A token is printed once, in its labeler's URL, and never logged
    (no access log; `Referrer-Policy: no-referrer`); a cross-site page also could not send a
    custom header without a CORS preflight, which is never answered;
  * the page is a static file (no data is ever interpolated into HTML); the script puts model
    text in the page only through `textContent`; the API serves JSON with `<`, `>` and `&`
    escaped as `\\u003c`..., and every response carries a Content-Security-Policy with
    `default-src 'self'` and no inline script, plus `nosniff` and `frame-ancestors 'none'`;
  * model text is sent through `display.visible`, so control characters and bidi or zero-width
    characters arrive written out as `<U+XXXX>` (U+202E cannot show "gnp.exe" as "exe.png"); the
    ids sent with it, and so the judgements stored, are the original samples';
  * request bodies are size-limited (413) and checked field by field (400 with the field named).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import secrets
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlhf_jax.feedback.display import visible
from rlhf_jax.feedback.rubric import Rubric
from rlhf_jax.feedback.store import OUTCOMES, FeedbackError, FeedbackStore, LeaseHeldError
from rlhf_jax.local_http import (LOOPBACK_NAMES, ApiError, HostCheck, bind, host_name, is_loopback,
                                 read_json_object)
from rlhf_jax.local_http import run_uvicorn as _run_uvicorn  # a name tests replace

_log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
TOKEN_HEADER = "X-Label-Token"
MAX_BODY_BYTES = 4096  # the largest real body: a labeler name and a score per rubric criterion
MAX_LABELER_CHARS = 100
_SECURITY_HEADERS = (
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),  # the page URL holds the token
    (b"cache-control", b"no-store"),
)


class SafeJSONResponse(JSONResponse):
  """JSON with `<`, `>` and `&` written as \\u escapes.

  Still the same JSON to any parser, but model text like `</script><script>` cannot be read as
  markup even by a client that ignores the content type.
  """

  def render(self, content: Any) -> bytes:
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .encode("utf-8"))


def _error(status: int, message: str) -> SafeJSONResponse:
  return SafeJSONResponse({"error": message}, status_code=status)


class SecurityHeaders:
  """ASGI middleware adding the CSP and friends to every response, errors and static files too."""

  def __init__(self, app: ASGIApp):
    self.app = app

  async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
      await self.app(scope, receive, send)
      return

    async def send_with_headers(message: Message) -> None:
      if message["type"] == "http.response.start":
        names = {name.lower() for name, _ in message.get("headers", [])}
        extra = [(name, value) for name, value in _SECURITY_HEADERS if name not in names]
        message = {**message, "headers": [*message.get("headers", []), *extra]}
      await send(message)

    await self.app(scope, receive, send_with_headers)


# ---------------------------------------------------------------------------------------------
# Request checks: each returns the checked value or raises ApiError naming the field.


def _labeler_of(request: Request, tokens: Mapping[str, str]) -> str:
  """The labeler whose token the request carries: the only source of who is judging."""
  given = request.headers.get(TOKEN_HEADER)
  if not given:
    raise ApiError(401, f"missing {TOKEN_HEADER} header; open the URL that `rlhf-jax label` "
                   "printed for you (it ends in ?token=...)")
  labeler = None
  for token, name in tokens.items():  # compare with every token: the time taken tells nothing
    if secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
      labeler = name
  if labeler is None:
    raise ApiError(403, f"wrong {TOKEN_HEADER}; the tokens change each time `rlhf-jax label` "
                   "starts: open the URL it printed for you this time")
  return labeler


def _check_labeler(value: Any) -> str:
  if not isinstance(value, str) or not value.strip():
    raise ApiError(400, f"labeler: expected a non-empty name, got {value!r}")
  if len(value) > MAX_LABELER_CHARS:
    raise ApiError(400, f"labeler: expected at most {MAX_LABELER_CHARS} characters, "
                   f"got {len(value)}")
  return value


def _check_same_labeler(value: Any, labeler: str) -> None:
  """A labeler a request names must be its token's: naming another is how one would act as them."""
  if _check_labeler(value) != labeler:
    raise ApiError(403, f"labeler: this URL's token belongs to labeler {labeler!r}, not "
                   f"{value!r}; each labeler opens the URL `rlhf-jax label` printed for them")


def _without_labeler(body: Mapping[str, Any], labeler: str) -> dict[str, Any]:
  """`body` less its optional `labeler` field, once that field is checked to name `labeler`."""
  if "labeler" in body:
    _check_same_labeler(body["labeler"], labeler)
  return {key: value for key, value in body.items() if key != "labeler"}


def _short(value: Any) -> str:
  """`repr(value)`, cut to 40 characters: an error echoes what it got without echoing a whole body."""
  shown = repr(value)
  return shown if len(shown) <= 40 else shown[:40] + "..."


def _check_id(body: Mapping[str, Any], field: str) -> int:
  value = body.get(field)
  # SQLite integers are 64-bit: a larger id is no sample's (and would overflow in the driver).
  if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2 ** 63:
    raise ApiError(400, f"{field}: expected a sample id (a positive 64-bit int), got {_short(value)}")
  return value


def _check_scores(value: Any, rubric: Rubric) -> dict[str, int]:
  """`{criterion: score}` with every criterion of `rubric` once, each an int on its scale; in the
  rubric's order, whatever the body's, so the store keeps one order for every judgement."""
  expected = ", ".join(f"{c.name} 1..{c.scale}" for c in rubric.criteria)
  if not isinstance(value, dict):
    raise ApiError(400, f"scores: expected an object {{criterion: score}} ({expected}), "
                   f"got {_short(value)}")
  unknown = [name for name in value if name not in rubric.scales]
  if unknown:
    raise ApiError(400, f"scores: unknown criterion {_short(unknown[0])}; this rubric's criteria "
                   f"are {expected}")
  missing = [c.name for c in rubric.criteria if c.name not in value]
  if missing:
    raise ApiError(400, f"scores: missing criterion {missing[0]!r}; expected a score for each of "
                   f"{expected}")
  for c in rubric.criteria:
    score = value[c.name]
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= c.scale:
      raise ApiError(400, f"scores[{c.name!r}]: expected an int in 1..{c.scale}, "
                     f"got {_short(score)}")
  return {c.name: value[c.name] for c in rubric.criteria}


def _check_fields(body: Mapping[str, Any], expected: tuple[str, ...]) -> None:
  """Unknown or missing fields are errors, so a typo is not silently ignored."""
  unknown = sorted(set(body) - set(expected))
  missing = [f for f in expected if f not in body]
  if unknown or missing:
    problems = [f"unknown {unknown}"] if unknown else []
    problems += [f"missing {missing}"] if missing else []
    raise ApiError(400, f"fields: {'; '.join(problems)}; expected {list(expected)}")


# ---------------------------------------------------------------------------------------------
# What the API sends back.


def _sample_json(sample: Any) -> dict[str, Any]:
  return {"id": sample.id, "text": visible(sample.text)}


def _criteria_json(rubric: Rubric) -> list[dict[str, Any]]:
  # Names and guidance come from whoever started the server, not from a model: sent as they are
  # (a name goes back as a key of the judgement), still only ever shown through textContent.
  return [{"name": c.name, "scale": c.scale, "guidance": c.guidance} for c in rubric.criteria]


def _task_json(store: FeedbackStore, labeler: str, rate_scale: int | None,
               rng: random.Random, rubric: Rubric | None = None) -> dict[str, Any]:
  """The labeler's next task; a pair comes in random left/right order (the page sends the ids
  back in the order it got them, so the store records what the labeler saw)."""
  if rubric is not None:
    task = store.next_sample_to_score(labeler)
    if task is None:
      return {"kind": "rubric", "done": True}
    return {"kind": "rubric", "done": False, "prompt": visible(task.prompt.text),
            "sample": _sample_json(task.sample), "lease_until": task.lease_until}
  if rate_scale is None:
    task = store.next_pair(labeler)
    if task is None:
      return {"kind": "pair", "done": True}
    shown = [task.a, task.b] if rng.random() < 0.5 else [task.b, task.a]
    return {"kind": "pair", "done": False, "prompt": visible(task.prompt.text),
            "samples": [_sample_json(s) for s in shown], "lease_until": task.lease_until}
  task = store.next_sample_to_rate(labeler)
  if task is None:
    return {"kind": "rating", "done": True, "scale": rate_scale}
  return {"kind": "rating", "done": False, "prompt": visible(task.prompt.text),
          "sample": _sample_json(task.sample), "scale": rate_scale,
          "lease_until": task.lease_until}


def _progress_json(store: FeedbackStore, labeler: str, rate_scale: int | None,
                   rubric: Rubric | None = None) -> dict[str, Any]:
  """This labeler's counts ("labeled", "queued": what is left for them) and everyone's."""
  mine, everyone = store.progress(labeler), store.progress()
  if rubric is not None:
    # Samples scored, not judgements: `Progress` has no count of live rubric judgements, so
    # "everyone" has no "judgements" here (the page leaves it out).
    return {"kind": "rubric", "labeled": mine.samples_scored, "queued": mine.samples_to_score,
            "everyone": {"labeled": everyone.samples_scored,
                         "queued": everyone.samples_to_score}}
  if rate_scale is None:
    return {"kind": "pair", "labeled": mine.pairs_judged, "queued": mine.pairs_queued,
            "everyone": {"labeled": everyone.pairs_judged, "queued": everyone.pairs_queued,
                         "judgements": everyone.comparisons}}
  return {"kind": "rating", "labeled": mine.samples_rated, "queued": mine.samples_queued,
          "everyone": {"labeled": everyone.samples_rated, "queued": everyone.samples_queued,
                       "judgements": everyone.ratings}}


def _judge(store: FeedbackStore, labeler: str, body: Mapping[str, Any],
           rate_scale: int | None, rubric: Rubric | None = None) -> dict[str, Any]:
  """Checks a judgement body for this server's mode and stores it as `labeler`'s."""
  body = _without_labeler(body, labeler)
  if rubric is not None:
    names = ", ".join(c.name for c in rubric.criteria)
    if "outcome" in body or "a" in body or "b" in body:
      raise ApiError(400, f"this server collects rubric scores ({names}), not pair comparisons; "
                     "start `rlhf-jax label` without --rubric to compare pairs")
    if "value" in body:
      raise ApiError(400, f"this server collects rubric scores ({names}), not single ratings; "
                     "start `rlhf-jax label` with --rate N instead of --rubric to rate samples")
    _check_fields(body, ("sample", "scores"))
    sample = _check_id(body, "sample")
    scores = _check_scores(body["scores"], rubric)
    return {"kind": "scores",
            "id": store.score(sample, scores, scales=rubric.scales, labeler=labeler)}
  if "scores" in body:
    collects = "pair comparisons" if rate_scale is None else f"ratings 1..{rate_scale}"
    raise ApiError(400, f"this server collects {collects}, not rubric scores; start "
                   "`rlhf-jax label` with --rubric SPEC (and no --rate) to score answers")
  if rate_scale is None:
    if "value" in body or "sample" in body:
      raise ApiError(400, "this server collects pair comparisons, not ratings; start "
                     "`rlhf-jax label` with --rate N to rate single samples")
    _check_fields(body, ("a", "b", "outcome"))
    a, b = _check_id(body, "a"), _check_id(body, "b")
    outcome = body["outcome"]
    if outcome not in OUTCOMES:
      raise ApiError(400, f"outcome: expected one of {list(OUTCOMES)}, got {outcome!r}")
    return {"kind": "comparison", "id": store.compare(a, b, outcome, labeler=labeler)}
  if "outcome" in body or "a" in body or "b" in body:
    raise ApiError(400, f"this server collects ratings 1..{rate_scale}, not pair comparisons; "
                   "start `rlhf-jax label` without --rate to compare pairs")
  _check_fields(body, ("sample", "value"))
  sample = _check_id(body, "sample")
  value = body["value"]
  if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= rate_scale:
    raise ApiError(400, f"value: expected an int in 1..{rate_scale}, got {value!r}")
  return {"kind": "rating", "id": store.rate(sample, value, scale=rate_scale, labeler=labeler)}


def _undo(store: FeedbackStore, labeler: str, body: Mapping[str, Any]) -> dict[str, Any]:
  """Retracts the last judgement of `labeler` (the token's), never anyone else's."""
  _check_fields(_without_labeler(body, labeler), ())
  undone = store.undo_last(labeler)
  if undone is None:
    return {"undone": None}
  return {"undone": {"kind": type(undone).__name__.lower(), "id": undone.id}}


# ---------------------------------------------------------------------------------------------
# The app.

Handler = Callable[[Request, str], Awaitable[Any]]


def _api(tokens: Mapping[str, str], handler: Handler) -> Callable[[Request], Awaitable[Response]]:
  """Wraps an endpoint: the token first, then `handler(request, labeler)` with the token's
  labeler; ApiError and FeedbackError become JSON."""

  async def endpoint(request: Request) -> Response:
    try:
      labeler = _labeler_of(request, tokens)
      if "labeler" in request.query_params:
        _check_same_labeler(request.query_params["labeler"], labeler)
      return SafeJSONResponse(await handler(request, labeler))
    except ApiError as e:
      return _error(e.status, e.message)
    except LeaseHeldError as e:  # not a bad request: the task is someone else's for now
      return _error(409, str(e))
    except FeedbackError as e:  # the store names the field and what it expected
      return _error(400, str(e))
    except Exception as e:  # caught here, not by Starlette's outermost handler, to keep the CSP
      _log.exception("%s %s failed", request.method, request.url.path)
      return _error(500, f"internal error in {request.url.path}: {type(e).__name__}: {e}")

  return endpoint


def _check_tokens(tokens: Mapping[str, str] | None, token: str | None,
                  labeler: str | None) -> dict[str, str]:
  """{token: labeler} from `tokens`, or from the one-labeler shorthand `token` and `labeler`."""
  if tokens is None:
    if not token:
      raise FeedbackError("token: expected a non-empty secret (see secrets.token_urlsafe)")
    if labeler is None:
      raise FeedbackError("labeler: a token needs the name of the labeler it belongs to")
    tokens = {token: labeler}
  elif token is not None or labeler is not None:
    raise FeedbackError("tokens: pass tokens={token: labeler}, or token= with labeler=, not both")
  if not tokens:
    raise FeedbackError("tokens: expected at least one {token: labeler}")
  seen = set()
  for secret, name in tokens.items():
    if not isinstance(secret, str) or not secret:
      raise FeedbackError("token: expected a non-empty secret (see secrets.token_urlsafe)")
    try:
      _check_labeler(name)
    except ApiError as e:
      raise FeedbackError(e.message) from None
    if name in seen:  # two URLs for one name would be two people's judgements under one name
      raise FeedbackError(f"labeler: {name!r} given twice; expected one token per labeler")
    seen.add(name)
  return dict(tokens)


def create_app(store_path: str | Path, *, tokens: Mapping[str, str] | None = None,
               token: str | None = None, labeler: str | None = None,
               rate_scale: int | None = None, rubric: Rubric | None = None,
               seed: int | None = None, host: str = "127.0.0.1") -> Starlette:
  """The ASGI app on the store at `store_path` (opened now, so a bad file fails before serving).

  `tokens` maps each labeler's secret token to their name: a request with a token judges as that
  labeler and no other; `token=` with `labeler=` is the one-labeler form. `host` is the address
  the server binds (`--host`): every request's Host header must name it or a loopback name, with
  the port; `rate_scale` N switches from pairs to ratings 1..N, `rubric` to scoring each sample
  on every criterion of the rubric (one or the other); `seed` fixes the left/right order of
  pairs (tests).
  """
  tokens = _check_tokens(tokens, token, labeler)
  if rate_scale is not None and (isinstance(rate_scale, bool) or not isinstance(rate_scale, int)
                                 or rate_scale < 2):
    raise FeedbackError(f"rate_scale: expected an int >= 2 (--rate N), got {rate_scale!r}")
  if rubric is not None:
    if not isinstance(rubric, Rubric):
      raise FeedbackError(f"rubric: expected a feedback.rubric.Rubric (--rubric SPEC), got "
                          f"{type(rubric).__name__}")
    if rate_scale is not None:  # a server collects one kind of judgement
      raise FeedbackError("rubric, rate_scale: pass one (--rubric SPEC to score answers on a "
                          "rubric, or --rate N to rate them), not both")
  mode = "rubric" if rubric is not None else "pair" if rate_scale is None else "rating"
  store = FeedbackStore(store_path)
  rng = random.Random(seed)

  async def task(request: Request, who: str) -> dict[str, Any]:
    return await run_in_threadpool(_task_json, store, who, rate_scale, rng, rubric)

  async def progress(request: Request, who: str) -> dict[str, Any]:
    return await run_in_threadpool(_progress_json, store, who, rate_scale, rubric)

  async def judge(request: Request, who: str) -> dict[str, Any]:
    body = await read_json_object(request, MAX_BODY_BYTES)
    return await run_in_threadpool(_judge, store, who, body, rate_scale, rubric)

  async def undo(request: Request, who: str) -> dict[str, Any]:
    body = await read_json_object(request, MAX_BODY_BYTES)
    return await run_in_threadpool(_undo, store, who, body)

  async def config(request: Request, who: str) -> dict[str, Any]:
    # "labeler" is who this page judges as: the page shows it and has no way to change it.
    return {"kind": mode, "scale": rate_scale, "labeler": who, "outcomes": list(OUTCOMES),
            "criteria": None if rubric is None else _criteria_json(rubric)}

  async def page(request: Request) -> Response:
    # A file, not a template: nothing from the store or the request is ever put into HTML.
    return FileResponse(STATIC_DIR / "label.html", media_type="text/html; charset=utf-8")

  async def favicon(request: Request) -> Response:
    return Response(status_code=204)

  async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    response.headers.update(exc.headers or {})  # e.g. Allow on a 405
    return response

  async def server_error(request: Request, exc: Exception) -> Response:
    # Outside the API (static files); the traceback still goes to the server's log.
    return _error(500, f"internal error in {request.url.path}: {type(exc).__name__}: {exc}")

  @contextlib.asynccontextmanager
  async def lifespan(app: Starlette) -> AsyncIterator[None]:
    try:
      yield
    finally:
      store.close()

  routes = [
      Route("/", page, methods=["GET"]),
      Route("/favicon.ico", favicon, methods=["GET"]),
      Route("/api/config", _api(tokens, config), methods=["GET"]),
      Route("/api/task", _api(tokens, task), methods=["GET"]),
      Route("/api/progress", _api(tokens, progress), methods=["GET"]),
      Route("/api/judge", _api(tokens, judge), methods=["POST"]),
      Route("/api/undo", _api(tokens, undo), methods=["POST"]),
      Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
  ]
  app = Starlette(routes=routes, lifespan=lifespan,
                  exception_handlers={HTTPException: http_error, Exception: server_error})
  app.add_middleware(HostCheck, names=(*LOOPBACK_NAMES, host_name(host)))
  app.add_middleware(SecurityHeaders)  # added last, so outermost: a Host refusal gets it too
  app.state.store = store
  return app


def page_url(host: str, port: int, token: str) -> str:
  """The URL to open: the token travels in the query and the page moves it into a header."""
  shown = f"[{host}]" if ":" in host else host
  return f"http://{shown}:{port}/?{urlencode({'token': token})}"


def serve(store_path: str | Path, *, labelers: Sequence[str] = (),
          tokens: Mapping[str, str] | None = None, host: str = "127.0.0.1", port: int = 8765,
          rate_scale: int | None = None, rubric: Rubric | None = None) -> None:
  """Serves the labeling page until Ctrl-C; prints one URL per labeler to open.

  Each of `labelers` gets a fresh token of their own; `tokens` ({token: labeler}) is used as
  given instead (tests). Raises FeedbackError for a bad store or argument and OSError when the
  port cannot be had, both before anything is printed.
  """
  if tokens is None:
    tokens = {secrets.token_urlsafe(32): name for name in labelers}
    if len(tokens) < len(labelers):  # astronomically unlikely; refuse rather than drop a labeler
      raise FeedbackError("labelers: two fresh tokens collided; start again")
  elif labelers:
    raise FeedbackError("labelers: pass labelers (fresh tokens) or tokens, not both")
  app = create_app(store_path, tokens=tokens, rate_scale=rate_scale, rubric=rubric, host=host)
  sock = bind(host, port)
  try:
    if not is_loopback(host):
      print(f"warning: serving on {host}, not 127.0.0.1: anyone who can reach this address and "
            "sees the URL below can read the samples and write judgements, and the traffic "
            "(token included) is plain, unencrypted HTTP", file=sys.stderr)
    if rubric is not None:
      what = "answers to score on " + ", ".join(f"{c.name} 1..{c.scale}" for c in rubric.criteria)
    else:
      what = "pairs to compare" if rate_scale is None else f"samples to rate 1..{rate_scale}"
    width = max(len(name) for name in tokens.values())
    urls = "\n".join(f"  {name:<{width}}  {page_url(host, sock.getsockname()[1], token)}"
                     for token, name in tokens.items())
    print(f"labeling {what} in {store_path}\neach labeler opens their own URL (it holds their "
          "secret token, and every judgement made through it is stored under their name):\n\n"
          f"{urls}\n\nCtrl-C stops the server; every answer is already saved.", flush=True)
    _run_uvicorn(app, sock)
  finally:
    sock.close()
