"""Serving the explorer: a socket on 127.0.0.1, a random token, uvicorn on one event loop.

:func:`serve` blocks until interrupted; :class:`BackgroundServer` runs the same server in a
thread (tests, benches) and stops it on exit.

Exposure: the server answers only to the ``Host`` names of :func:`allowed_hosts`. On an address
other than loopback the token would cross the network, so it is served over TLS
(``certfile``/``keyfile``: the socket is wrapped in an :class:`ssl.SSLContext`, the cookie is
``Secure``), or over plain HTTP only when the caller says so (``insecure_http``, the CLI's
``--insecure-http``); otherwise :func:`check_exposure` refuses with a :class:`UserError`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from melbo.errors import UserError
from melbo.explore.app import create_app
from melbo.explore.explorer import Explorer

__all__ = ["LOCALHOST", "LOOPBACK_NAMES", "BackgroundServer", "allowed_hosts", "check_exposure", "is_loopback",
           "new_token", "open_socket", "serve", "tls_context", "url_of"]

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_WILDCARD = ("0.0.0.0", "::", "")
_WITH_PORT = re.compile(r"(\[[^\]]+\]|[^:\[\]]+):\d{1,5}")


def new_token() -> str:
    """A fresh random access token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (``host``, ``port``); port 0 picks a free one."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r}: must be an integer in 0..65535 (0: any free port)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}; {_bind_fix(err, host)}") from err
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _bind_fix(err: OSError, host: str) -> str:
    """What to change when binding failed: the --host (not an address, or not this machine's) or the --port."""
    if isinstance(err, socket.gaierror):
        return (f"--host {host!r} is not an IP address or a name that resolves: give an address of this machine "
                "(127.0.0.1, ::1, 0.0.0.0 for all)")
    if err.errno == errno.EADDRNOTAVAIL:
        return f"--host {host!r} is not an address of this machine: give one of its addresses (127.0.0.1, 0.0.0.0 for all)"
    if err.errno == errno.EACCES:
        return "ports below 1024 need privileges: choose a --port ≥ 1024 (0: any free port)"
    return "choose another --port (0: any free port)"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def url_of(sock: socket.socket, token: str, host: str, *, tls: bool = False) -> str:
    port = sock.getsockname()[1]
    return f"{'https' if tls else 'http'}://{_bracketed(host)}:{port}/?token={token}"


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> set[str]:
    """The ``Host`` header values the server answers to, as ``name`` and ``name:port``: the
    loopback names, the bound address ``host``, for a wildcard bind (0.0.0.0, ::) this machine's
    host names and their addresses, and the names in ``extra`` (``NAME`` or ``NAME:PORT``).

    A page on another site cannot make a browser send any of these (DNS rebinding changes the
    address a name resolves to, not the name)."""
    names = {*LOOPBACK_NAMES, _bracketed(host.lower())}
    if host in _WILDCARD:
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            with contextlib.suppress(OSError):
                names.update(_bracketed(str(info[4][0]).lower()) for info in socket.getaddrinfo(name, None))
    out = {n for name in names if name for n in (name, f"{name}:{port}")}
    for given in extra:
        name = given.strip().lower()
        if not name or any(c in name for c in "/ @?#,"):
            raise UserError(f"--allow-host {given!r}: give a host name or address, optionally with :PORT")
        if _WITH_PORT.fullmatch(name):
            out.add(name)
        else:
            out.update((_bracketed(name), f"{_bracketed(name)}:{port}"))
    return out


def tls_context(certfile: str | Path, keyfile: str | Path | None = None) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` (TLS 1.2 or later) with the certificate chain in
    ``certfile`` and its private key in ``keyfile`` (or in ``certfile``); a missing or
    unreadable file or a key that does not match is a :class:`UserError` naming it."""
    for flag, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} {str(path)!r} does not exist (a PEM file)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(certfile), None if keyfile is None else str(keyfile))
    except (ssl.SSLError, OSError) as err:
        raise UserError(f"--certfile {str(certfile)!r} / --keyfile {str(keyfile)!r}: not a PEM certificate and its "
                        f"private key ({err.strerror or err})") from None
    return ctx


def check_exposure(host: str, *, tls: bool, insecure_http: bool) -> None:
    """Refuse (:class:`UserError`) to serve the token over plain HTTP on an address other than
    loopback unless ``insecure_http``; warn when the caller insists."""
    if is_loopback(host):
        return
    if not tls and not insecure_http:
        raise UserError(
            f"--host {host}: listening beyond this machine would send the access token over the network in clear "
            "text; give a certificate (--certfile FILE --keyfile FILE) to serve HTTPS, use an SSH tunnel to "
            "127.0.0.1 instead, or pass --insecure-http on a network you trust")
    logger.warning("melbo explore: listening on %s, not only this machine: anyone who can reach it and has the "
                   "token can run the model and read your notes%s", host,
                   "" if tls else " (plain HTTP: the token crosses the network in clear text)")


def _server(explorer: Explorer, token: str, port: int, hosts: set[str], tls: ssl.SSLContext | None) -> Any:
    import uvicorn

    app = create_app(explorer, token=token, hosts=hosts, cookie=f"melbo_explore_{port}", secure=tls is not None)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    config.load()
    config.ssl = tls  # uvicorn wraps the listening socket in it (loop.create_server(ssl=...))
    return uvicorn.Server(config)


def serve(explorer: Explorer, *, host: str = LOCALHOST, port: int = 8765, token: str | None = None,
          say: Callable[[str], None] = logger.info, certfile: str | Path | None = None,
          keyfile: str | Path | None = None, insecure_http: bool = False, allow_hosts: Iterable[str] = ()) -> None:
    """Serve ``explorer`` until interrupted; ``say`` gets the URL with the token. Over TLS with
    ``certfile``/``keyfile``; beyond loopback only with TLS or ``insecure_http``
    (:func:`check_exposure`); ``allow_hosts``: more ``Host`` names to answer to."""
    tls = tls_context(certfile, keyfile) if certfile is not None else None
    check_exposure(host, tls=tls is not None, insecure_http=insecure_http)
    token = token or new_token()
    sock = open_socket(host, port)
    bound = int(sock.getsockname()[1])
    server = _server(explorer, token, bound, allowed_hosts(host, bound, allow_hosts), tls)
    say(f"melbo explore: open {url_of(sock, token, host, tls=tls is not None)}  (Ctrl-C stops it)")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        explorer.close()


class BackgroundServer:
    """The explorer's server in a daemon thread on ``host`` (127.0.0.1; a free port): ``url``,
    ``base`` (reached through 127.0.0.1), ``token``; TLS and exposure as :func:`serve`."""

    def __init__(self, explorer: Explorer, *, token: str | None = None, host: str = LOCALHOST,
                 certfile: str | Path | None = None, keyfile: str | Path | None = None,
                 insecure_http: bool = False, allow_hosts: Iterable[str] = ()) -> None:
        tls = tls_context(certfile, keyfile) if certfile is not None else None
        check_exposure(host, tls=tls is not None, insecure_http=insecure_http)
        self.explorer, self.token = explorer, token or new_token()
        self._sock = open_socket(host, 0)
        self.port = int(self._sock.getsockname()[1])
        self.hosts = allowed_hosts(host, self.port, allow_hosts)
        self.base = f"{'https' if tls else 'http'}://{LOCALHOST}:{self.port}"
        self.url = url_of(self._sock, self.token, LOCALHOST, tls=tls is not None)
        self._server = _server(explorer, self.token, self.port, self.hosts, tls)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the explorer's server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        with contextlib.suppress(OSError):
            self._sock.close()
        self.explorer.close()
