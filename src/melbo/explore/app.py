"""The HTTP side of ``melbo explore``: a Starlette app over an :class:`~melbo.explore.explorer.Explorer`.

Safety, in one place (:class:`TokenGate`, which sees every request first):

* the ``Host`` header must name this server — a loopback name (``localhost``, ``127.0.0.1``,
  ``[::1]``), the address it is bound to or a name the user allowed — else 421: a page on
  another site whose name was rebound to this machine's address (DNS rebinding) is refused
  before the token is even looked at;
* every request needs the access token — ``?token=`` (the printed URL; it also sets an
  HttpOnly, SameSite=Strict cookie), that cookie, or an ``X-Melbo-Token`` header — compared in
  constant time (:func:`hmac.compare_digest`); anything else gets 403;
* writes are POSTs with a JSON body (so a cross-site form cannot send one) from the page's
  own origin; a body over :data:`MAX_BODY` bytes is refused with 413 from its
  ``Content-Length`` before a byte of it is read (a body of unknown length is read only up to
  that limit), and JSON nested deeper than :data:`MAX_BODY_DEPTH` with 400;
* a generation request that finds the worker's queue full is refused with 429 and a
  ``Retry-After`` (:class:`~melbo.explore.engine.QueueFull`);
* no request parameter is ever joined onto a file path: the static files are a fixed table,
  notes go to one fixed file and exports to a directory chosen by the server;
* the page is plain HTML + one script + one stylesheet served from here, under a
  Content-Security-Policy that allows nothing else (no inline script, no other origin), and
  the script writes model text only as text (``textContent``), never as HTML.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Collection
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from melbo.explore.engine import GenRequest, QueueFull
from melbo.explore.explorer import Explorer
from melbo.store.io import parse_json

__all__ = ["MAX_BODY", "MAX_BODY_DEPTH", "SECURITY_HEADERS", "create_app"]

logger = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
_STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
           "index.html": "text/html; charset=utf-8"}
MAX_BODY = 256 * 1024
"""Largest request body read, in bytes: a note (20 000 characters) or an export's list of
feature indices fit many times over."""
MAX_BODY_DEPTH = 8
"""Deepest JSON nesting of a request body; the page's bodies nest at most 2 levels."""
_REFUSED = (b"melbo explore: this page needs the access token that `melbo explore` printed "
            b"(open the URL it printed, with ?token=...)\n")


class TokenGate:
    """ASGI middleware, in this order: refuse a ``Host`` not in ``hosts`` (421), a request
    without the token (403), a body over ``max_body`` bytes (413, from ``Content-Length`` before
    reading), a cross-origin write (403); then read the body (at most ``max_body`` bytes) and
    pass the request on. Sets the cookie (``Secure`` when ``secure``: served over TLS) on a
    valid ``?token=``."""

    def __init__(self, app: ASGIApp, token: str, cookie: str, *, hosts: Collection[str], secure: bool = False,
                 max_body: int = MAX_BODY) -> None:
        self.app, self.token, self.cookie = app, token.encode(), cookie
        self.hosts = frozenset(h.lower() for h in hosts)
        self.secure, self.max_body = secure, max_body

    def _ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "").strip().lower()
        if host not in self.hosts:  # the message names no allowed name: a rebound page could read it
            await _plain(send, 421, (f"melbo explore: refused a request for host {host[:100] or '(none)'!r}: this "
                                     "server answers only to localhost, 127.0.0.1, [::1], the address it listens on "
                                     "and the names given with --allow-host (DNS rebinding protection)\n").encode())
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        from_query = self._ok((query.get("token") or [None])[0])
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            jar = SimpleCookie()
        ok = from_query or self._ok(headers.get("x-melbo-token")) or self._ok(
            jar[self.cookie].value if self.cookie in jar else None)
        if not ok:
            await _plain(send, 403, _REFUSED)
            return
        length = headers.get("content-length", "").strip()
        if length and (not length.isdigit() or len(length) > 18 or int(length) > self.max_body):
            await _refuse(send, 413 if length.isdigit() else 400,
                          f"request body of {length[:30]!r} bytes refused: the limit is {self.max_body} bytes")
            return
        if scope["method"] not in ("GET", "HEAD") and not _same_origin(headers):
            await _plain(send, 403, b"melbo explore: cross-origin write refused\n")
            return
        if scope["method"] not in ("GET", "HEAD"):
            body = await _read_body(receive, self.max_body)
            if body is None:
                await _refuse(send, 413, f"request body refused: longer than the limit of {self.max_body} bytes")
                return
            receive = _replay(body, receive)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", []))
                hdrs += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if from_query:
                    secure = "; Secure" if self.secure else ""
                    hdrs.append((b"set-cookie", f"{self.cookie}={self.token.decode()}; HttpOnly; SameSite=Strict; "
                                                f"Path=/{secure}".encode()))
                message["headers"] = hdrs
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _same_origin(headers: dict[str, str]) -> bool:
    origin, host = headers.get("origin"), headers.get("host", "")
    if origin is None:
        return True  # not a browser's cross-site request (browsers send Origin on POST)
    return origin.split("://", 1)[-1] == host


async def _plain(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            *[(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]]})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, status: int, message: str) -> None:
    """A JSON refusal ``{"error": message}``, as the API's own errors."""
    await _plain(send, status, json.dumps({"error": message}).encode(), b"application/json")


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left: what came is all there is
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that gives ``body`` (read already) first, then what the client sends next."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _static(name: str) -> Response:
    body = resources.files("melbo.explore").joinpath("static", name).read_bytes()
    return Response(body, media_type=_STATIC[name])


def _bad(err: Exception, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=status)


def _flag(value: str | None) -> bool:
    if value in (None, "", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise ValueError(f"a flag must be 0/1/true/false, got {value!r}")


def _int(value: str | None, name: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def gen_request(explorer: Explorer, q: Any) -> GenRequest:
    """A :class:`GenRequest` from the query of ``/api/generate`` (feature, scale, ablate_v,
    ablate_u, heldout, prompt, max_new_tokens)."""
    feature = None if q.get("feature") in (None, "") else _int(q.get("feature"), "feature")
    try:
        scale = float(q.get("scale", "0"))
    except ValueError:
        raise ValueError(f"scale must be a number, got {q.get('scale')!r}") from None
    prompts = list(explorer.run.prompts) if _flag(q.get("heldout", "1")) else []
    typed = q.get("prompt", "")
    if typed.strip():
        prompts.append(typed)
    mnt = _int(q.get("max_new_tokens", explorer.max_new_tokens), "max_new_tokens")
    return GenRequest(feature=feature, scale=scale, prompts=tuple(prompts), ablate_v=_flag(q.get("ablate_v")),
                      ablate_u=_flag(q.get("ablate_u")), max_new_tokens=mnt)


def create_app(explorer: Explorer, *, token: str, hosts: Collection[str], cookie: str = "melbo_explore",
               secure: bool = False, max_body: int = MAX_BODY) -> ASGIApp:
    """The web app over ``explorer``, behind the gate (:class:`TokenGate`): ``hosts`` are the
    ``Host`` header values it answers to (``name`` and ``name:port``, lower case), ``secure``
    that it is served over TLS (the cookie gets ``Secure``)."""
    if len(token) < 16:
        raise ValueError("the access token must have at least 16 characters")

    async def page(request: Request) -> Response:
        return _static("index.html")

    async def script(request: Request) -> Response:
        return _static("app.js")

    async def style(request: Request) -> Response:
        return _static("app.css")

    async def run(request: Request) -> Response:
        return JSONResponse(explorer.summary())

    async def status(request: Request) -> Response:
        return JSONResponse(explorer.engine.status())

    async def features(request: Request) -> Response:
        return JSONResponse({"rows": explorer.rows()})

    async def search(request: Request) -> Response:
        try:
            return JSONResponse({"hits": explorer.search(request.query_params.get("q", ""))})
        except ValueError as err:
            return _bad(err)

    async def notes(request: Request) -> Response:
        try:
            body = await _json(request)
            entry = await asyncio.to_thread(explorer.notes.set, request.path_params["k"],
                                            label=body.get("label", ""), note=body.get("note", ""))
        except ValueError as err:
            return _bad(err)
        return JSONResponse(entry)

    async def export(request: Request) -> Response:
        try:
            body = await _json(request)
            path = await asyncio.to_thread(explorer.export, body.get("features"))  # type: ignore[arg-type]
        except (ValueError, FileExistsError) as err:
            return _bad(err)
        return JSONResponse({"path": str(path), "n": len(body["features"])})

    async def curve(request: Request) -> Response:
        q = request.query_params
        try:
            mnt = _int(q.get("max_new_tokens", str(explorer.max_new_tokens)), "max_new_tokens")
            out = explorer.curve(request.path_params["k"], max_new_tokens=mnt, ablate_v=_flag(q.get("ablate_v")),
                                 ablate_u=_flag(q.get("ablate_u")))
        except ValueError as err:
            return _bad(err)
        return JSONResponse(out)

    async def generate(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def listener(ev: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ev)

        try:
            job = explorer.engine.submit(gen_request(explorer, request.query_params), listener)
        except ValueError as err:
            return _bad(err)
        except QueueFull as err:
            return JSONResponse({"error": str(err), "retry_after": err.retry_after}, status_code=429,
                                headers={"retry-after": str(err.retry_after)})

        async def stream() -> AsyncIterator[str]:
            try:
                while True:
                    ev = await events.get()
                    yield f"data: {json.dumps(ev, ensure_ascii=False)}\n\n"
                    if ev["type"] in ("done", "error"):
                        break
            finally:
                job.cancel()  # gone or finished: drop it from the queue, stop it at its next token

        return StreamingResponse(stream(), media_type="text/event-stream")

    routes = [
        Route("/", page), Route("/feature/{k:int}", page), Route("/static/app.js", script),
        Route("/static/app.css", style),
        Route("/api/run", run), Route("/api/status", status), Route("/api/features", features),
        Route("/api/search", search), Route("/api/notes/{k:int}", notes, methods=["POST"]),
        Route("/api/export", export, methods=["POST"]), Route("/api/curve/{k:int}", curve),
        Route("/api/generate", generate),
    ]
    return TokenGate(Starlette(routes=routes), token, cookie, hosts=hosts, secure=secure, max_body=max_body)


async def _json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ValueError("send a JSON body (Content-Type: application/json)")
    raw = await request.body()  # at most MAX_BODY bytes: the gate read it
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"the body is not UTF-8: {err}") from None
    body = parse_json(text, source="the request body", max_depth=MAX_BODY_DEPTH)  # FileFormatError: a ValueError
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body
