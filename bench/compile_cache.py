"""What ``--compile`` costs in a first process and in a second one that finds melbo's compile
cache, and from how many factors it pays. Prints JSON (``-o`` also writes it).

    python bench/compile_cache.py -o bench/results/compile_cache.json

Two fresh child processes run one after the other with the same compile-cache directory
(``--compile-cache DIR``; default a new temporary one, so the first is cold). Each loads the
packaged Gemma-3-270M (``--dtype``, fp32 by default), records the slice ``s → t`` on ``n`` random prompts of ``T``
tokens, and builds a compiled :class:`melbo.maps.transformer.TransformerCausalMap` (inductor, the
cache at DIR) and an eager one. It then times

* ``seconds_first_calls``: the compiled map's first ``value_and_vjp`` and ``value`` on ``m``
  factors (one chunk): compiling the forward and backward graphs (or loading them) plus
  one run each;
* ``seconds_vjp`` / ``seconds_value``: the median of ``--reps`` later calls, compiled and eager;
* ``seconds_compile`` = first calls − one later call of each: what compiling adds
  (``torch_compile_timers``: torch's own timers of the forward graphs' compile).

torch's counters (``fxgraph_cache_hit/miss``, ``autograd_cache_hit/miss``) say whether a
process hit the cache. One OGI iteration is one ``value_and_vjp`` on all factors, so a fit of
``iters`` iterations on M factors saves ``iters · M · (eager − compiled) / m`` seconds, and
compiling pays from ``M* = seconds_compile · m / (iters · (eager − compiled))`` factors
(``pays_from_factors``, for the cold and the warm process). CPU timings taken while other
processes use the cores are noisy; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _perf import write_result

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--s", type=int, default=4, help="source layer")
    ap.add_argument("--t", type=int, default=10, help="target layer")
    ap.add_argument("--n", type=int, default=4, help="prompts")
    ap.add_argument("--prompt-len", type=int, default=32, help="tokens per prompt (T)")
    ap.add_argument("--m", type=int, default=32, help="factors per timed call (one chunk)")
    ap.add_argument("--reps", type=int, default=3, help="timed calls after the first")
    ap.add_argument("--iters", type=int, default=10, help="OGI iterations of the fit the payoff is for")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compile-cache", type=Path, default=None,
                    help="cache directory (default: a new temporary one, removed after)")
    ap.add_argument("-o", "--output", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("n", "prompt_len", "m", "reps", "iters"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _median_seconds(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One process: compile (or load) the slice, time compiled and eager calls."""
    import torch
    from torch._dynamo.utils import counters

    from melbo.maps.transformer import TransformerCausalMap
    from melbo.models.loading import load_model
    from melbo.prompts import PromptBatch, resolve_positions

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, _tok = load_model("gemma-3-270m", dtype=getattr(torch, args.dtype), progress=False)[:2]
    out: dict[str, Any] = {"phase": args.child, "seconds_load": time.perf_counter() - t0}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.n, args.prompt_len), generator=g)
    ids[:, 0] = int(model.config.bos_token_id)
    batch = PromptBatch(ids, torch.ones_like(ids), resolve_positions(3, [args.prompt_len] * args.n, [0] * args.n),
                        tuple("random" for _ in range(args.n)), "none")
    comp = TransformerCausalMap(model, batch, args.s, args.t, chunk_size=args.m, compile=True,
                                compile_cache=args.compile_cache)
    eager = TransformerCausalMap(model, batch, args.s, args.t, chunk_size=args.m)
    W = torch.nn.functional.normalize(torch.randn(comp.d_model, args.m, generator=g), dim=0)
    t0 = time.perf_counter()
    comp.value_and_vjp(W, W)
    comp.value(W)
    out["seconds_first_calls"] = time.perf_counter() - t0
    out["counters"] = {k: dict(counters[k]) for k in ("inductor", "aot_autograd", "stats")}
    # torch's own timers of the compile (wall seconds, so the cores' load still shows)
    from torch._dynamo.utils import compilation_time_metrics

    out["torch_compile_timers"] = {k: sum(v) for k, v in compilation_time_metrics.items()
                                   if k in ("_compile.compile_inner", "bytecode_tracing", "OutputGraph.call_user_compiler",
                                            "AOTAutogradCache.inductor_load", "compile_file")}
    out["seconds_vjp"] = {"compiled": _median_seconds(lambda: comp.value_and_vjp(W, W), args.reps),
                          "eager": _median_seconds(lambda: eager.value_and_vjp(W, W), args.reps)}
    out["seconds_value"] = {"compiled": _median_seconds(lambda: comp.value(W), args.reps),
                            "eager": _median_seconds(lambda: eager.value(W), args.reps)}
    out["seconds_compile"] = out["seconds_first_calls"] - out["seconds_vjp"]["compiled"] \
        - out["seconds_value"]["compiled"]
    out["threads"] = torch.get_num_threads()
    out["torch"] = torch.__version__
    return out


def pays_from(seconds_compile: float, vjp: dict[str, float], m: int, iters: int) -> float | None:
    """Factors from which ``iters`` OGI iterations save more than compiling costs."""
    saved_per_factor_iter = (vjp["eager"] - vjp["compiled"]) / m
    if saved_per_factor_iter <= 0:
        return None
    return seconds_compile / (iters * saved_per_factor_iter)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        json.dump(child(args), sys.stdout)
        return {}
    tmp = None
    given_cache = str(args.compile_cache) if args.compile_cache is not None else None
    if args.compile_cache is None:
        tmp = tempfile.TemporaryDirectory(prefix="melbo-compile-")
        args.compile_cache = Path(tmp.name)
    base = [sys.executable, str(Path(__file__).resolve()), "--s", str(args.s), "--t", str(args.t),
            "--n", str(args.n), "--prompt-len", str(args.prompt_len), "--m", str(args.m),
            "--reps", str(args.reps), "--dtype", args.dtype, "--compile-cache", str(args.compile_cache),
            *(["--threads", str(args.threads)] if args.threads else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    result: dict[str, Any] = {
        "benchmark": "compile_cache",
        "command": "python bench/compile_cache.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "gemma-3-270m (packaged)",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"}
        | {"compile_cache": given_cache or "a new temporary directory"},
        "loadavg_before": os.getloadavg(),
    }
    try:
        for phase in ("cold", "warm"):
            proc = subprocess.run([*base, "--child", phase], env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{phase} process failed:\n{proc.stderr[-4000:]}")
            result[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
            result[phase]["pays_from_factors"] = pays_from(
                result[phase]["seconds_compile"], result[phase]["seconds_vjp"], args.m, args.iters)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result["loadavg_after"] = os.getloadavg()
    cold, warm = result["cold"], result["warm"]
    result["summary"] = {
        "seconds_compile_cold": cold["seconds_compile"],
        "seconds_compile_warm": warm["seconds_compile"],
        "warm_over_cold": warm["seconds_compile"] / cold["seconds_compile"],
        "warm_hit_cache": warm["counters"]["inductor"].get("fxgraph_cache_hit", 0) > 0
        and warm["counters"]["inductor"].get("fxgraph_cache_miss", 0) == 0,
        "seconds_per_factor_iter": {k: warm["seconds_vjp"][k] / args.m for k in ("eager", "compiled")},
        f"pays_from_factors_{args.iters}_iters": {"cold": cold["pays_from_factors"], "warm": warm["pays_from_factors"]},
    }
    write_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
