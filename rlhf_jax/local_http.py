"""What the two local HTTP servers share (the labeling page, `feedback.server`, and the model API,
`serving.openai_api`): a listening socket made before anything is printed, the Host check that
stops DNS rebinding, a request body read as a size-limited JSON object, and uvicorn without an
access log. Each check raises `ApiError(status, message)`; each server words its own responses.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class ApiError(Exception):
  """A request the API refuses; becomes `{"error": message}` with `status`."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def host_name(host: str) -> str:
  """`host` as a Host header writes it: IPv6 addresses in brackets; lower case, as compared."""
  return f"[{host.lower()}]" if ":" in host else host.lower()


class HostCheck:
  """ASGI middleware answering only requests whose Host header is one of `names` with the port;
  any other gets 421 Misdirected Request (RFC 9110: not a name this server answers for).

  Not Starlette's TrustedHostMiddleware: it compares the name only, never the port. The port is
  the one the connection came in on (the ASGI scope's `server`), which is the bound port, also
  when port 0 let the system pick it after the app was made.
  """

  def __init__(self, app: ASGIApp, names: tuple[str, ...], command: str = "rlhf-jax label"):
    self.app = app
    self.names = tuple(dict.fromkeys(names))
    self.command = command  # named in the refusal: how to serve under another name

  def allowed(self, port: int | None) -> list[str]:
    with_port = [f"{name}:{port}" for name in self.names]
    return with_port + list(self.names) if port == 80 else with_port  # :80 may be left out

  async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # lifespan; no websocket route exists
      await self.app(scope, receive, send)
      return
    given = [value.decode("latin-1") for name, value in scope["headers"] if name == b"host"]
    allowed = self.allowed((scope.get("server") or (None, None))[1])
    if len(given) == 1 and given[0].lower() in allowed:
      await self.app(scope, receive, send)
      return
    shown = repr(given[0]) if len(given) == 1 else f"{len(given)} Host headers"
    reason = (f"misdirected request: Host {shown} is not this server; it answers to "
              f"{', '.join(allowed)} only (start `{self.command}` with --host NAME to serve "
              "under another name)\n")
    await PlainTextResponse(reason, status_code=421)(scope, receive, send)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
  """The request body as a JSON object, read no further than `limit` bytes (then 413)."""
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > limit:
    raise ApiError(413, f"request body of {declared} bytes; the limit is {limit}")
  if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
    raise ApiError(415, "expected Content-Type: application/json")
  body = bytearray()
  async for chunk in request.stream():  # a chunked body has no Content-Length: count as it comes
    body += chunk
    if len(body) > limit:
      raise ApiError(413, f"request body over {limit} bytes; the limit is {limit}")
  try:
    value = json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ApiError(400, f"body: not valid JSON ({e})") from None
  except RecursionError:  # a few KiB of "[[[[..." reach Python's recursion limit
    raise ApiError(400, "body: JSON nested too deeply") from None
  if not isinstance(value, dict):
    raise ApiError(400, f"body: expected a JSON object, got {type(value).__name__}")
  return value


def is_loopback(host: str) -> bool:
  """Whether `host` is reachable from this machine only."""
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def bind(host: str, port: int) -> socket.socket:
  """A listening socket, made before the URL is printed, so a busy port is an error up front
  (and port 0 picks a free one whose number the URL can show)."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
    sock.listen(2048)  # listening claims the port; uvicorn accepts on this socket
  except OSError as e:
    sock.close()
    raise OSError(e.errno, f"cannot listen on {host}:{port} ({e.strerror}); pass --port with a "
                  "free port, or --host with an address of this machine") from None
  return sock


def run_uvicorn(app: ASGIApp, sock: socket.socket) -> None:
  import uvicorn  # only the command needs a server; tests use the app directly

  # No access log: it would print the page URL, token and all, on every reload.
  config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
  uvicorn.Server(config).run(sockets=[sock])
