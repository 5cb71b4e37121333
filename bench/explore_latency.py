"""Latency of ``melbo explore`` as a user feels it: from a click to the first streamed token,
and to the whole completion, through the app's HTTP stream (Server-Sent Events).

The explorer serves a features directory on 127.0.0.1 (a real server, the real model), and each
case is one request to ``/api/generate`` timed from the client's side:

* ``first click`` — a feature page opens: the unsteered and steered completions of the prompts,
  neither cached (both run as one batch);
* ``slider`` — the scale moves: only the steered completions are new (the unsteered are cached);
* ``cached`` — back to a scale already seen.

Each case runs on ``--repeats`` different features; the medians are reported next to the
targets (first token < 1 s, a 32-token completion of 4 prompts < 5 s). The load average is
recorded: other jobs on the cores slow every wall time; the process's CPU seconds per request
(``cpu_s``, ``first_token_cpu_s``) are what the request costs, close to its wall time on an idle
core with ``--threads 1``. Under contention use ``--threads 1``: OpenMP threads spin-waiting
for a busy core made a 2-thread run many times slower.

    python bench/explore_latency.py --dir runs/gemma16 --out bench/results/explore_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch


def one_request(base: str, token: str, query: str) -> dict[str, Any]:
    """Time one ``/api/generate`` request: first streamed token, done, tokens streamed."""
    req = urllib.request.Request(f"{base}/api/generate?{query}", headers={"X-Melbo-Token": token})
    t0, c0 = time.perf_counter(), time.process_time()
    first = first_cpu = None
    tokens: dict[tuple[str, int], int] = {}
    with urllib.request.urlopen(req) as r:
        for line in r:
            if not line.startswith(b"data:"):
                continue
            ev = json.loads(line[5:])
            if ev["type"] == "text" and not ev.get("final"):
                if first is None:
                    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
                tokens[(ev["side"], ev["prompt"])] = tokens.get((ev["side"], ev["prompt"]), 0) + 1
            elif ev["type"] == "error":
                raise RuntimeError(ev["message"])
            elif ev["type"] == "done":
                break
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"first_token_s": first, "total_s": total, "first_token_cpu_s": first_cpu, "cpu_s": cpu,
            "rows": len(tokens), "tokens": sum(tokens.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="a features directory or a melbo discover run")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scales", type=float, nargs=2, default=(1.0, 2.0), help="first click, then slider")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import melbo
    from melbo.explore.explorer import Explorer
    from melbo.explore.run import load_run
    from melbo.explore.server import BackgroundServer
    from melbo.prompts.builtin import HELDOUT_PROMPTS

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    model, tok = melbo.load_model(args.model)
    load_s = time.perf_counter() - t0
    run = load_run(args.dir, prompts=list(HELDOUT_PROMPTS), n_prompts=args.n_prompts)
    run.features.check_model(model, force=True)
    explorer = Explorer(run, model, tok, max_new_tokens=args.max_new_tokens)
    cases: dict[str, list[dict[str, Any]]] = {"first click": [], "slider": [], "cached": []}
    with BackgroundServer(explorer) as srv:
        # warm-up (first-call allocations, tokenizer caches) on a feature not measured
        one_request(srv.base, srv.token, f"feature={run.features.n_factors - 1}&scale=1&max_new_tokens=4")
        for k in range(args.repeats):
            q = f"feature={k}&max_new_tokens={args.max_new_tokens}"
            for store in (explorer.engine._seen, explorer.engine._cache):  # noqa: SLF001 - cold clicks measured
                # the unsteered completions are cached after the first click on any feature
                for key in [key for key in store if k == 0 or key[0] is None]:
                    del store[key]
            for case, scale in (("first click", args.scales[0]), ("slider", args.scales[1]), ("cached", args.scales[0])):
                cases[case].append(one_request(srv.base, srv.token, f"{q}&scale={scale}"))
                print(f"feature {k}, {case}: {cases[case][-1]}", file=sys.stderr, flush=True)
    load1 = os.getloadavg()

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None]
        return statistics.median(vals) if vals else None

    summary = {
        case: {"first_token_s": med(rows, "first_token_s"), "total_s": med(rows, "total_s"),
               "first_token_cpu_s": med(rows, "first_token_cpu_s"), "cpu_s": med(rows, "cpu_s"),
               "rows": rows[0]["rows"], "tokens": med(rows, "tokens")}
        for case, rows in cases.items()
    }
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model, "n_features": run.features.n_factors, "layers": [run.features.source_layer,
                                                                              run.features.target_layer],
        "n_prompts": args.n_prompts, "max_new_tokens": args.max_new_tokens, "scales": list(args.scales),
        "model_load_s": load_s, "summary": summary, "runs": cases,
        "targets": {"first_token_s": 1.0, "completion_4_prompts_32_tokens_s": 5.0},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "loadavg_before": load0, "loadavg_after": load1},
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    for case, s in summary.items():
        ft = "–" if s["first_token_s"] is None else f"{s['first_token_s']:.2f} s"
        print(f"{case:12s}: first token {ft}, done {s['total_s']:.2f} s ({s['rows']} rows streamed, "
              f"{s['tokens']} tokens; CPU {s['cpu_s']:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
