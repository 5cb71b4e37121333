"""``melbo explore`` left open for days and reached from elsewhere: a bounded queue (429), an
LRU-bounded completion cache, request-size and JSON-depth limits (413/400 before reading), the
``Host`` allow-list against DNS rebinding (421), and TLS or a refusal on a non-loopback host.

Each check runs against a real server on an ephemeral port serving the tiny random-init Llama of
``explore_fixtures``; the worker is held busy by a listener that waits, so the queue fills
deterministically."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from explore_fixtures import MAX_NEW_TOKENS, PROMPTS, make_model, make_run

from melbo.errors import UserError
from melbo.explore.engine import Engine, GenRequest, QueueFull
from melbo.explore.run import load_run

pytest.importorskip("starlette", reason="the explore extra is not installed")
pytest.importorskip("uvicorn", reason="the explore extra is not installed")

from melbo.explore.app import MAX_BODY, MAX_BODY_DEPTH  # noqa: E402
from melbo.explore.explorer import Explorer  # noqa: E402
from melbo.explore.server import BackgroundServer, allowed_hosts, tls_context  # noqa: E402


@pytest.fixture(scope="module")
def model_tok() -> tuple[Any, Any]:
    return make_model()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, model_tok: tuple[Any, Any]) -> Path:
    return make_run(tmp_path_factory.mktemp("explore-limits") / "run", model_tok[0])


@pytest.fixture(scope="module")
def server(run_dir: Path, model_tok: tuple[Any, Any]) -> Iterator[BackgroundServer]:
    with BackgroundServer(Explorer(load_run(run_dir), *model_tok, max_new_tokens=MAX_NEW_TOKENS)) as srv:
        yield srv


def _request(srv: BackgroundServer, path: str, *, data: bytes | None = None, token: bool = True,
             context: ssl.SSLContext | None = None, **headers: str) -> tuple[int, Any, bytes]:
    if token:
        headers.setdefault("X-Melbo-Token", srv.token)
    req = urllib.request.Request(srv.base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            return int(r.status), r.headers, r.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.headers, err.read()


def _raw(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10) -> bytes:
    """Send ``head`` (and ``body``) on a fresh connection; what the server answers before closing or
    within ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and len(b"".join(chunks)) > 20:
                    s.settimeout(0.5)  # the response has started: take what follows, then stop
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _hold_worker(engine: Engine) -> threading.Event:
    """Make the worker busy until the returned event is set (its listener waits on "start")."""
    release, started = threading.Event(), threading.Event()

    def listener(ev: dict[str, Any]) -> None:
        if ev["type"] == "start":
            started.set()
            release.wait(60)

    engine.submit(GenRequest(feature=0, scale=3.25, prompts=("hold",), max_new_tokens=2), listener)
    assert started.wait(30), "the worker never started the holding request"
    return release


def _drain(engine: Engine) -> None:
    deadline = time.monotonic() + 60
    while (engine.status()["queued"] or engine.status()["running"]) and time.monotonic() < deadline:
        time.sleep(0.02)


def _run(engine: Engine, req: GenRequest) -> dict[str, Any]:
    done: list[dict[str, Any]] = []
    finished = threading.Event()

    def listener(ev: dict[str, Any]) -> None:
        if ev["type"] in ("done", "error"):
            done.append(ev)
            finished.set()

    engine.submit(req, listener)
    assert finished.wait(60)
    return done[0]


# ------------------------------------------------------------------ queue and cache


def test_the_queue_is_bounded_and_a_request_whose_client_left_frees_its_place(
        run_dir: Path, model_tok: tuple[Any, Any]) -> None:
    engine = Engine(*model_tok, load_run(run_dir).features, max_queue=2)
    try:
        release = _hold_worker(engine)
        first = engine.submit(GenRequest(feature=1, scale=1.0, prompts=("a",), max_new_tokens=2), lambda ev: None)
        engine.submit(GenRequest(feature=2, scale=1.0, prompts=("a",), max_new_tokens=2), lambda ev: None)
        with pytest.raises(QueueFull, match="queue is full") as err:
            engine.submit(GenRequest(feature=3, scale=1.0, prompts=("a",), max_new_tokens=2), lambda ev: None)
        assert 1 <= err.value.retry_after <= 60 and engine.status()["queued"] == 2
        first.cancel()  # its client went away: its place is free again
        engine.submit(GenRequest(feature=3, scale=1.0, prompts=("a",), max_new_tokens=2), lambda ev: None)
        assert engine.status()["queued"] == 2
        release.set()
        _drain(engine)
        assert _run(engine, GenRequest(feature=4, scale=1.0, prompts=("a",), max_new_tokens=2))["type"] == "done"
    finally:
        engine.close()
    with pytest.raises(ValueError, match="max_queue"):
        Engine(*model_tok, load_run(run_dir).features, max_queue=0)


def test_the_session_cache_keeps_the_most_recently_used_and_never_drops_the_runs_completions(
        run_dir: Path, model_tok: tuple[Any, Any]) -> None:
    run = load_run(run_dir)
    engine = Engine(*model_tok, run.features, chat=run.chat, seen=run.seen, cache_size=3)
    n_seen = len(run.seen)
    try:
        def ask(scale: float) -> dict[str, Any]:
            return _run(engine, GenRequest(feature=0, scale=scale, prompts=(PROMPTS[0],), max_new_tokens=MAX_NEW_TOKENS))

        # the unsteered completion of PROMPTS[0] is the run's (seen): only steered ones enter the LRU
        first = {s: ask(s) for s in (1.5, 2.5, 3.5)}
        assert engine.status()["cached"] == n_seen + 3
        assert not ask(1.5)["generated"]  # 1.5 is now the most recently used; 2.5 the least
        fourth = ask(4.5)
        assert fourth["generated"] and engine.status()["cached"] == n_seen + 3
        assert not ask(1.5)["generated"] and not ask(3.5)["generated"]
        again = ask(2.5)  # evicted: made again, and (greedy) the same text
        assert again["generated"] and again["steered"] == first[2.5]["steered"]
        for i in range(40):  # a slider dragged over many scales: the cache stays at its bound
            ask(0.01 * (i + 1))
        assert engine.status()["cached"] == n_seen + 3
        assert all(engine.cached(engine.key(*k[:1], k[1], k[2], k[3])) == t for k, t in run.seen.items())
        hits = [t for (k, *_), t in engine.completions() if k == 1]
        assert len(hits) == len(PROMPTS)  # discover's completions of feature 1 are all still searchable
    finally:
        engine.close()


def test_a_full_queue_is_answered_429_with_a_message_and_retry_after(run_dir: Path,
                                                                      model_tok: tuple[Any, Any]) -> None:
    explorer = Explorer(load_run(run_dir), *model_tok, max_new_tokens=MAX_NEW_TOKENS, max_queue=1)
    with BackgroundServer(explorer) as srv:
        release = _hold_worker(explorer.engine)
        try:
            explorer.engine.submit(GenRequest(feature=1, scale=1.0, prompts=("a",), max_new_tokens=2), lambda ev: None)
            code, headers, body = _request(srv, "/api/generate?feature=2&scale=1.25&heldout=0&prompt=hi")
            assert code == 429 and headers["content-type"] == "application/json"
            assert "queue is full" in json.loads(body)["error"]
            assert 1 <= int(headers["retry-after"]) <= 60
            assert _request(srv, "/api/status")[0] == 200  # reads are still answered
        finally:
            release.set()
        _drain(explorer.engine)
        code, _, body = _request(srv, "/api/generate?feature=2&scale=1.25&heldout=0&prompt=hi&max_new_tokens=2")
        assert code == 200 and json.loads(body.split(b"data:")[-1])["type"] == "done"


# ------------------------------------------------------------------ request bodies


def test_a_body_announced_too_large_is_refused_before_it_is_read(server: BackgroundServer) -> None:
    head = (f"POST /api/notes/0 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Melbo-Token: {server.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n").encode()
    raw = _raw(server.port, head)  # not one byte of the gigabyte is sent: the answer cannot wait for it
    assert _status(raw) == 413 and b"limit" in raw and b"application/json" in raw
    assert _status(_raw(server.port, head.replace(b"1000000000", b"12abc"))) == 400
    assert _status(_raw(server.port, head.replace(b"1000000000", b"9" * 5000))) in (400, 413)  # no int overflow
    assert _request(server, "/api/run")[0] == 200


def test_a_chunked_body_is_read_only_up_to_the_limit(server: BackgroundServer) -> None:
    head = (f"POST /api/notes/0 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Melbo-Token: {server.token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 2)) + b"0\r\n\r\n"
    raw = _raw(server.port, head, body)
    assert _status(raw) == 413 and b"longer than the limit" in raw
    small = json.dumps({"label": "chunked", "note": ""}).encode()
    ok = _raw(server.port, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))
    assert _status(ok) == 200 and b'"label":"chunked"' in ok
    assert _request(server, "/api/notes/0", data=json.dumps({"label": "", "note": ""}).encode(),
                    **{"Content-Type": "application/json"})[0] == 200


def test_json_nested_too_deep_or_not_utf8_is_a_400_with_a_message(server: BackgroundServer) -> None:
    def post(data: bytes) -> tuple[int, str]:
        code, _, body = _request(server, "/api/notes/0", data=data, **{"Content-Type": "application/json"})
        return code, json.loads(body)["error"]

    deep = b'{"label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # 200 kB: under the size limit
    assert len(deep) < MAX_BODY
    code, msg = post(deep)
    assert code == 400 and "nested" in msg and "100001" in msg
    just_over = b'{"label": ' + b"[" * MAX_BODY_DEPTH + b"]" * MAX_BODY_DEPTH + b"}"
    assert post(just_over)[0] == 400
    code, msg = post(b'{"label": "\xff"}')
    assert code == 400 and "UTF-8" in msg
    code, msg = post(b'{"label": [[1]]}')
    assert code == 400 and "label" in msg  # within the depth limit: the value's own check answers
    code, msg = post(b"{nope")
    assert code == 400 and "invalid JSON" in msg


# ------------------------------------------------------------------ Host header


def test_only_this_servers_own_host_names_are_answered(server: BackgroundServer) -> None:
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}", "localhost"):
        assert _request(server, "/api/run", Host=host)[0] == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"localhost.evil.example:{port}",
                 f"127.0.0.1:{port}@evil.example"):
        code, _, body = _request(server, "/api/run", Host=host)
        assert code == 421 and b"DNS rebinding" in body and b"--allow-host" in body, host
        assert _request(server, "/?token=" + server.token, token=False, Host=host)[0] == 421  # before the token
    raw = _raw(port, f"GET /api/run HTTP/1.0\r\nX-Melbo-Token: {server.token}\r\n\r\n".encode())
    assert _status(raw) == 421  # no Host at all


def test_the_allow_list_holds_the_bound_address_and_the_names_given() -> None:
    hosts = allowed_hosts("192.168.1.4", 8765, ["box.lan", "Other:9000", "fe80::1"])
    assert {"localhost:8765", "127.0.0.1:8765", "[::1]:8765", "192.168.1.4:8765", "box.lan:8765",
            "other:9000", "[fe80::1]:8765"} <= hosts
    assert "192.168.1.5:8765" not in hosts and "box.lan:1" not in hosts
    assert f"{socket.gethostname().lower()}:8765" in allowed_hosts("0.0.0.0", 8765)
    assert f"{socket.gethostname().lower()}:8765" not in allowed_hosts("127.0.0.1", 8765)
    for bad in ("http://x", "a b", "x/y", ""):
        with pytest.raises(UserError, match="--allow-host"):
            allowed_hosts("127.0.0.1", 8765, [bad])


# ------------------------------------------------------------------ exposure: TLS or a refusal


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key: made with ``cryptography`` if installed,
    else the ``openssl`` command, else the test is skipped."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available to make a certificate")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
        return cert, key
    import ipaddress

    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pk.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                     x509.DNSName("localhost")]), critical=False)
         .sign(pk, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cert, key


def test_a_non_loopback_host_is_served_over_tls_with_a_secure_cookie(tmp_path: Path, run_dir: Path,
                                                                       model_tok: tuple[Any, Any]) -> None:
    cert, key = _self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=str(cert))
    with BackgroundServer(Explorer(load_run(run_dir), *model_tok), host="0.0.0.0", certfile=cert, keyfile=key) as srv:
        assert srv.url.startswith("https://") and srv.base.startswith("https://")
        code, headers, _ = _request(srv, "/?token=" + srv.token, token=False, context=trusting)
        cookie = headers["set-cookie"]
        assert code == 200 and srv.token in cookie and "Secure" in cookie and "HttpOnly" in cookie
        assert _request(srv, "/api/run", context=trusting)[0] == 200
        # the same port spoken to in plain HTTP gives no page and no token
        raw = _raw(srv.port, f"GET /?token={srv.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(), timeout=5)
        assert srv.token.encode() not in raw and not raw.startswith(b"HTTP/1.1 200")
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _request(srv, "/api/run", context=ssl.create_default_context())  # a client that does not trust it checks


def test_a_non_loopback_host_without_tls_is_refused_unless_insecure_http_is_asked(
        tmp_path: Path, run_dir: Path, model_tok: tuple[Any, Any]) -> None:
    with pytest.raises(UserError, match="--insecure-http"):
        BackgroundServer(Explorer(load_run(run_dir), *model_tok), host="0.0.0.0")
    with BackgroundServer(Explorer(load_run(run_dir), *model_tok), host="0.0.0.0", insecure_http=True) as srv:
        code, headers, _ = _request(srv, "/?token=" + srv.token, token=False)
        assert code == 200 and "Secure" not in headers["set-cookie"]
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(UserError, match="junk.pem"):
        tls_context(tmp_path / "junk.pem")
    with pytest.raises(UserError, match="does not exist"):
        tls_context(tmp_path / "missing.pem")


def test_the_cli_refuses_an_exposed_plain_http_server_before_loading_the_model(
        tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from melbo.cli import main

    missing_model = str(tmp_path / "no-model-here")  # reaching the model load would fail differently
    cases = [
        (["--host", "0.0.0.0"], "--insecure-http"),
        (["--host", "0.0.0.0", "--certfile", str(tmp_path / "none.pem")], "does not exist"),
        (["--keyfile", str(tmp_path / "k.pem")], "needs --certfile"),
        (["--allow-host", "http://evil"], "--allow-host"),
    ]
    for extra, match in cases:
        with pytest.raises(SystemExit) as err:
            main(["explore", str(run_dir), "--model", missing_model, *extra])
        out = capsys.readouterr().err
        assert err.value.code == 2 and match in out and "no-model-here" not in out and out.count("\n") == 1, out
