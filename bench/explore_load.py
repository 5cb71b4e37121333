"""``melbo explore`` under load: many concurrent clients for a while against one server.

The server runs in a child process (this script with ``--serve-in``): a tiny random-init Llama
and 16 random features (or ``--model``, e.g. ``gemma-3-270m``, with random features at its middle
layer), ``BackgroundServer`` on 127.0.0.1, torch on ``--threads`` threads. ``--clients`` client
threads then send, for ``--duration`` seconds, a mix of

* steering requests (``/api/generate``, streamed to the end) at many distinct float scales —
  each a new completion-cache entry — and some at a few popular scales (cache hits);
* steering requests dropped after the first event (a closed tab);
* reads: the page, the script, ``/api/run``, ``/api/status``, ``/api/features``, search, curves;
  and notes saved;
* bad requests, each with the status it must get: no token (403), a foreign ``Host`` (421), a
  body announced as 1 GB (413, answered before it is sent), a chunked body over the limit
  (413), JSON nested 50 000 deep (400), a bad scale or feature (400), invalid JSON (400), a
  cross-origin write (403), an unknown path (404).

Recorded: every request's outcome by kind — answered (2xx), refused as expected (429 for a full
queue, the 4xx above), or a failure (a connection error, a 5xx, an unexpected status, a stream
that ended without its ``done`` event); the server's RSS sampled every ``--sample`` s (from
``/proc``); the model's weights hashed (SHA-256 of every parameter and buffer) before the load
and after it, in the server process; the server process's exit status after SIGTERM. Passes
(exit 0) when there was no failure, the weights are unchanged, the server exited cleanly and
its RSS did not grow after the first quarter by more than ``--rss-slack-mb``.

    python bench/explore_load.py --out bench/results/explore_load.json   # 60 s, 50 clients
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from _cpu import cpu_description

N_FEATURES = 16


# ------------------------------------------------------------------ the server (child process)


def _weights_hash(model: Any) -> str:
    import torch

    h = hashlib.sha256()
    for name, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def serve_child(args: argparse.Namespace) -> int:
    import torch

    from melbo.explore.explorer import Explorer
    from melbo.explore.run import load_run
    from melbo.explore.server import BackgroundServer
    from melbo.features import Features
    from melbo.models.fingerprint import model_fingerprint

    torch.set_num_threads(args.threads)
    work = Path(args.serve_in)
    if args.model:
        import melbo

        model, tok = melbo.load_model(args.model)
    else:
        import transformers as tf

        from melbo.testing import tiny_tokenizer

        tok = tiny_tokenizer(with_chat_template=True)
        cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             pad_token_id=0, bos_token_id=2, eos_token_id=1)
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(d, N_FEATURES, generator=g), dim=0)
    U = torch.nn.functional.normalize(torch.randn(d, N_FEATURES, generator=g), dim=0)
    Features(U=U, V=V, alpha=torch.linspace(0.5, 2.0, N_FEATURES), R=4.0, method="exponential",
             source_layer=max(1, n_layers // 2 - 2), target_layer=min(n_layers - 1, n_layers // 2 + 2),
             model=model_fingerprint(model)).save(work / "run" / "features")
    before = _weights_hash(model)
    run = load_run(work / "run", n_prompts=args.n_prompts)
    explorer = Explorer(run, model, tok, max_new_tokens=args.max_new_tokens, max_queue=args.max_queue,
                        cache_size=args.cache_size)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with BackgroundServer(explorer) as srv:
        (work / "ready.json").write_text(json.dumps({"base": srv.base, "port": srv.port, "token": srv.token,
                                                     "hash_before": before, "n_features": N_FEATURES}))
        stop.wait()
        status = explorer.engine.status()
        after = _weights_hash(model)
    (work / "after.json").write_text(json.dumps({"hash_after": after, "status": status}))
    return 0


# ------------------------------------------------------------------ the clients


class Client:
    """One simulated user: requests of every kind until ``deadline``; outcomes into ``tally``."""

    def __init__(self, i: int, base: str, port: int, token: str, deadline: float, tally: Counter[str],
                 lock: threading.Lock, failures: list[str]) -> None:
        self.rng = random.Random(i)
        self.base, self.port, self.token, self.deadline = base, port, token, deadline
        self.tally, self.lock, self.failures = tally, lock, failures

    def record(self, kind: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.tally[f"{kind}|{outcome}"] += 1
            if outcome.startswith("FAIL") and len(self.failures) < 50:
                self.failures.append(f"{kind}: {outcome} {detail}"[:300])

    def http(self, path: str, *, data: bytes | None = None, token: bool = True, stream: str = "",
             **headers: str) -> tuple[int, bytes]:
        if token:
            headers.setdefault("X-Melbo-Token", self.token)
        req = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                if stream == "drop":
                    r.readline()
                    return int(r.status), b""
                return int(r.status), r.read()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read()

    def raw(self, head: bytes, body: bytes = b"") -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
            s.sendall(head + body)
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return int(data.split(b" ", 2)[1])

    def head(self, method: str, path: str, extra: str) -> bytes:
        return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nX-Melbo-Token: {self.token}\r\n"
                f"Content-Type: application/json\r\n{extra}\r\n").encode()

    def one(self) -> None:
        r = self.rng.random()
        k = self.rng.randrange(N_FEATURES)
        if r < 0.35:
            scale = round(self.rng.uniform(-4, 4), 6)  # a new cache entry almost every time
            self.generate("steer_new_scale", f"feature={k}&scale={scale}")
        elif r < 0.45:
            self.generate("steer_popular_scale", f"feature={k % 4}&scale={self.rng.choice([1, 2])}")
        elif r < 0.50:
            status, _ = self.http(f"/api/generate?feature={k}&scale={self.rng.uniform(-4, 4):.5f}", stream="drop")
            self.record("steer_dropped", "answered" if status == 200 else "refused_429" if status == 429
                        else f"FAIL_status_{status}")
        elif r < 0.72:
            path = self.rng.choice(["/", "/static/app.js", "/api/run", "/api/status", "/api/features",
                                    "/api/search?q=the", f"/api/curve/{k}"])
            status, _ = self.http(path)
            self.record("read", "answered" if status == 200 else f"FAIL_status_{status}", path)
        elif r < 0.75:
            body = json.dumps({"label": f"label {self.rng.random():.4f}", "note": "n" * self.rng.randrange(500)})
            status, _ = self.http(f"/api/notes/{k}", data=body.encode(), **{"Content-Type": "application/json"})
            self.record("write_note", "answered" if status == 200 else f"FAIL_status_{status}")
        else:
            self.bad(k)

    def generate(self, kind: str, query: str) -> None:
        status, body = self.http(f"/api/generate?{query}")
        if status == 429:
            self.record(kind, "refused_429")
        elif status != 200:
            self.record(kind, f"FAIL_status_{status}", body[:200].decode("utf-8", "replace"))
        else:
            last = json.loads(body.rstrip().rsplit(b"data:", 1)[-1]) if b"data:" in body else {}
            self.record(kind, "answered" if last.get("type") == "done" else "FAIL_stream_without_done",
                        str(last)[:200])

    def bad(self, k: int) -> None:
        c = self.rng.randrange(10)
        js = {"Content-Type": "application/json"}
        if c == 0:
            kind, want, status = "bad_no_token", 403, self.http("/api/run", token=False)[0]
        elif c == 1:
            kind, want, status = "bad_host", 421, self.http("/api/run", Host=f"evil.example:{self.port}")[0]
        elif c == 2:
            kind, want = "bad_huge_content_length", 413
            status = self.raw(self.head("POST", f"/api/notes/{k}", "Content-Length: 1000000000\r\n"))
        elif c == 3:
            kind, want = "bad_chunked_over_limit", 413
            chunk = b"x" * 65536
            status = self.raw(self.head("POST", f"/api/notes/{k}", "Transfer-Encoding: chunked\r\n"),
                              b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n")
        elif c == 4:
            kind, want = "bad_deep_json", 400
            status = self.http(f"/api/notes/{k}", data=b'{"label":' + b"[" * 50_000 + b"]" * 50_000 + b"}", **js)[0]
        elif c == 5:
            kind, want, status = "bad_scale", 400, self.http(f"/api/generate?feature={k}&scale=1e309")[0]
        elif c == 6:
            kind, want, status = "bad_feature", 400, self.http("/api/generate?feature=999&scale=1")[0]
        elif c == 7:
            kind, want, status = "bad_json", 400, self.http(f"/api/notes/{k}", data=b"{nope", **js)[0]
        elif c == 8:
            kind, want = "bad_cross_origin_write", 403
            status = self.http(f"/api/notes/{k}", data=b"{}", Origin="http://evil.example", **js)[0]
        else:
            kind, want, status = "bad_path", 404, self.http("/api/nothing")[0]
        self.record(kind, f"refused_{status}" if status == want else f"FAIL_status_{status}")

    def loop(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                self.one()
            except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
                self.record("any", "FAIL_connection_error", f"{type(err).__name__}: {err}")


# ------------------------------------------------------------------ the bench


def _rss_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of ``pid`` in MiB, from /proc."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return None
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    ap.add_argument("--model", default=None, help="a real model (e.g. gemma-3-270m); default: a tiny random Llama")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--n-prompts", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=None, help="the engine's queue bound (default: melbo's)")
    ap.add_argument("--cache-size", type=int, default=256,
                    help="the engine's completion cache bound (small, so that eviction runs under the load)")
    ap.add_argument("--sample", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--rss-slack-mb", type=float, default=64.0)
    ap.add_argument("--out", default=None, help="write the JSON here and a .md next to it")
    ap.add_argument("--serve-in", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.max_queue is None:
        from melbo.explore.engine import MAX_QUEUE

        args.max_queue = MAX_QUEUE
    if args.serve_in:
        return serve_child(args)

    with tempfile.TemporaryDirectory(prefix="melbo-explore-load-") as tmp:
        child_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-in", tmp, "--threads", str(args.threads),
                     "--max-new-tokens", str(args.max_new_tokens), "--n-prompts", str(args.n_prompts),
                     "--max-queue", str(args.max_queue), "--cache-size", str(args.cache_size),
                     *(["--model", args.model] if args.model else [])]
        child = subprocess.Popen(child_cmd, stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "server.log", "w"))
        ready = Path(tmp) / "ready.json"
        t_start = time.monotonic()
        while not ready.exists():
            if child.poll() is not None or time.monotonic() - t_start > 600:
                sys.stderr.write((Path(tmp) / "server.log").read_text())
                raise SystemExit("the explorer did not start")
            time.sleep(0.1)
        time.sleep(0.1)
        info = json.loads(ready.read_text())
        startup_s = time.monotonic() - t_start

        samples: list[tuple[float, float]] = []
        sampling = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not sampling.is_set():
                r = _rss_mb(child.pid)
                if r is not None:
                    samples.append((round(time.monotonic() - t0, 2), round(r[0], 1)))
                sampling.wait(args.sample)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        tally: Counter[str] = Counter()
        failures: list[str] = []
        lock = threading.Lock()
        load0 = os.getloadavg()
        deadline = time.monotonic() + args.duration
        clients = [Client(i, info["base"], info["port"], info["token"], deadline, tally, lock, failures)
                   for i in range(args.clients)]
        threads = [threading.Thread(target=c.loop, daemon=True) for c in clients]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.duration + 300)
        elapsed = time.monotonic() - t0
        load1 = os.getloadavg()
        alive_after = child.poll() is None
        try:
            status_after = json.loads(urllib.request.urlopen(urllib.request.Request(
                info["base"] + "/api/status", headers={"X-Melbo-Token": info["token"]}), timeout=30).read())
        except (OSError, ValueError) as err:
            status_after = {"error": str(err)}
        sampling.set()
        sampler.join(5)
        hwm = _rss_mb(child.pid)
        child.send_signal(signal.SIGTERM)
        try:
            exit_code = child.wait(120)
        except subprocess.TimeoutExpired:
            child.kill()
            exit_code = child.wait()
        after_path = Path(tmp) / "after.json"
        after = json.loads(after_path.read_text()) if after_path.exists() else {}
        server_log = (Path(tmp) / "server.log").read_text()[-4000:]

    by_kind: dict[str, dict[str, int]] = {}
    for key, n in sorted(tally.items()):
        kind, outcome = key.split("|", 1)
        by_kind.setdefault(kind, {})[outcome] = n
    total = sum(tally.values())
    answered = sum(n for k, n in tally.items() if k.endswith("|answered"))
    refused = sum(n for k, n in tally.items() if "|refused_" in k)
    failed = sum(n for k, n in tally.items() if "|FAIL" in k)
    conn_errors = sum(n for k, n in tally.items() if k.endswith("FAIL_connection_error"))
    server_errors = sum(n for k, n in tally.items() if "FAIL_status_5" in k)
    rss = [r for _, r in samples]
    quarter = max(1, len(rss) // 4)
    growth = (max(rss[quarter:]) - max(rss[:quarter])) if len(rss) > quarter else 0.0
    weights_unchanged = bool(after.get("hash_after")) and after["hash_after"] == info["hash_before"]
    checks = {
        "server_alive_until_stopped": alive_after,
        "server_exit_status_0": exit_code == 0,
        "no_connection_error": conn_errors == 0,
        "no_5xx": server_errors == 0,
        "every_request_answered_or_refused_as_expected": failed == 0,
        "weights_unchanged": weights_unchanged,
        "rss_bounded": growth <= args.rss_slack_mb,
        "cache_within_bound": isinstance(status_after.get("cached"), int) and status_after["cached"] <= args.cache_size,
    }
    step = max(1, int(round(1.0 / args.sample)))
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "ok": all(checks.values()), "checks": checks,
        "model": args.model or "tiny random-init Llama (d=32, 4 layers)", "n_features": N_FEATURES,
        "clients": args.clients, "duration_s": args.duration, "elapsed_s": round(elapsed, 1),
        "server_startup_s": round(startup_s, 1),
        "settings": {"max_queue": args.max_queue, "cache_size": args.cache_size, "max_new_tokens": args.max_new_tokens,
                     "n_prompts": args.n_prompts, "threads": args.threads},
        "requests": {"total": total, "per_s": round(total / elapsed, 1), "answered_2xx": answered,
                     "refused_as_expected": refused, "refused_429": sum(n for k, n in tally.items()
                                                                        if k.endswith("|refused_429")),
                     "failed": failed, "connection_errors": conn_errors, "server_errors_5xx": server_errors},
        "by_kind": by_kind, "failures": failures,
        "rss_mb": {"start": rss[0] if rss else None, "peak": max(rss, default=None), "end": rss[-1] if rss else None,
                   "growth_after_first_quarter": round(growth, 1), "hwm_at_end": None if hwm is None else round(hwm[1], 1),
                   "samples_every_1s": [list(s) for s in samples[::step]]},
        "weights_sha256": {"before": info["hash_before"], "after": after.get("hash_after")},
        "server_status_at_end": status_after, "server_exit_status": exit_code,
        "server_log_tail": server_log if (failed or exit_code) else "",
        "machine": {"cpu": cpu_description(), "cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": load1,
                    "python": platform.python_version()},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        out = Path(args.out)
        out.write_text(text + "\n")
        out.with_suffix(".md").write_text(_report(result))
    return 0 if result["ok"] else 1


def _report(r: dict[str, Any]) -> str:
    q = r["requests"]
    lines = [
        "# melbo explore under load", "",
        f"Command: `{r['command']}`  ", f"CPU: {r['machine']['cpu']} ({r['machine']['cpus']} CPUs; load average "
        f"{r['machine']['loadavg_before'][0]:.2f} before, {r['machine']['loadavg_after'][0]:.2f} after)  ",
        f"Model: {r['model']}, {r['n_features']} features; queue bound {r['settings']['max_queue']}, cache bound "
        f"{r['settings']['cache_size']}, {r['settings']['max_new_tokens']} new tokens × {r['settings']['n_prompts']} "
        "prompts per steer", "",
        f"**{'PASS' if r['ok'] else 'FAIL'}** — {r['clients']} clients for {r['elapsed_s']} s: {q['total']} requests "
        f"({q['per_s']}/s), {q['answered_2xx']} answered (2xx), {q['refused_as_expected']} refused as expected "
        f"({q['refused_429']} of them 429: queue full), {q['failed']} failed ({q['connection_errors']} connection "
        f"errors, {q['server_errors_5xx']} 5xx).", "",
        f"Server RSS: {r['rss_mb']['start']} MiB at start, peak {r['rss_mb']['peak']} MiB, {r['rss_mb']['end']} MiB "
        f"at end (growth after the first quarter: {r['rss_mb']['growth_after_first_quarter']} MiB). "
        f"Weights SHA-256 before = after: {r['checks']['weights_unchanged']}. Completions cached at the end: "
        f"{r['server_status_at_end'].get('cached')} (bound {r['settings']['cache_size']}).", "",
        "| check | result |", "|---|---|", *[f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["checks"].items()], "",
        "| request kind | outcomes |", "|---|---|",
        *[f"| {k} | {', '.join(f'{o}: {n}' for o, n in v.items())} |" for k, v in r["by_kind"].items()], "",
    ]
    if r["failures"]:
        lines += ["Failures (first 50):", "", *[f"- {f}" for f in r["failures"]], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
