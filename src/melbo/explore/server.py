"""Serving the explorer: a socket on 127.0.0.1, a random token, uvicorn on one event loop.

:func:`serve` blocks until interrupted; :class:`BackgroundServer` runs the same server in a
thread (tests, benches) and stops it on exit.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from melbo.explore.app import create_app
from melbo.explore.explorer import Explorer

__all__ = ["LOCALHOST", "BackgroundServer", "is_loopback", "new_token", "open_socket", "serve", "url_of"]

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"


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


def url_of(sock: socket.socket, token: str, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def _server(explorer: Explorer, token: str, port: int) -> Any:
    import uvicorn

    app = create_app(explorer, token=token, cookie=f"melbo_explore_{port}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def serve(explorer: Explorer, *, host: str = LOCALHOST, port: int = 8765, token: str | None = None,
          say: Callable[[str], None] = logger.info) -> None:
    """Serve ``explorer`` until interrupted; ``say`` gets the URL with the token."""
    if not is_loopback(host):
        logger.warning("melbo explore: listening on %s, not only this machine: anyone who can reach it and has the "
                       "token can run the model and read your notes", host)
    token = token or new_token()
    sock = open_socket(host, port)
    server = _server(explorer, token, sock.getsockname()[1])
    say(f"melbo explore: open {url_of(sock, token, host)}  (Ctrl-C stops it)")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        explorer.close()


class BackgroundServer:
    """The explorer's server in a daemon thread on 127.0.0.1 (a free port): ``url``, ``base``, ``token``."""

    def __init__(self, explorer: Explorer, *, token: str | None = None) -> None:
        self.explorer, self.token = explorer, token or new_token()
        self._sock = open_socket(LOCALHOST, 0)
        self.port = int(self._sock.getsockname()[1])
        self.base = f"http://{LOCALHOST}:{self.port}"
        self.url = url_of(self._sock, self.token, LOCALHOST)
        self._server = _server(explorer, self.token, self.port)
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
