"""The default OGI step against the published one (melbo.fit.step), same iterations, same seeds.

    python bench/default_step.py                                   # planted factors, ~2 min on 2 busy cores
    python bench/default_step.py --gemma                           # and the objective on Gemma-3-270M
    python bench/default_step.py --d 4096 --n-planted 32 --m 512 --seeds 1   # synthetic_recovery.py's size

(a) **Planted factors** (no model): :meth:`melbo.maps.synthetic.SyntheticMap.planted` with ``--n-planted``
K unit input directions v*_k in R^d (α*_k = 1), an exponential DCT of ``--m`` factors at R =
``--R`` from each step's own defaults except ``max_iter`` = ``--iters`` for both, ``tol = 0``.
Per iteration: recovery (the fraction of v*_k with max_ℓ cos(v*_k, v_ℓ) > ``--threshold``) and the
mean max cosine (signed), as in ``bench/synthetic_recovery.py``; seed s draws the map with s and
the fit with 1000 + s.

(b) **Gemma** (``--gemma``): the packaged Gemma-3-270M, the first ``--gemma-prompts`` of the
demo's built-in prompts (:mod:`melbo.prompts.builtin`),
layers 4 → 10, R calibrated once (λ = 0.5, seed 0; or ``--gemma-R``), then an exponential DCT of ``--gemma-m``
factors with each step for ``--gemma-iters`` iterations: the objective per iteration, its last
relative change, sign reversals of its change, and the median factor movement per iteration.

Writes ``--out``.json and ``--out``.md (the command, the CPU from lscpu, the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _cpu import cpu_description

from melbo.fit import ConvergenceWarning
from melbo.fit.exponential import exponential_dct
from melbo.fit.result import IterationState
from melbo.fit.step import DEFAULT_STEP, STEPS
from melbo.maps.synthetic import SyntheticMap


def step_kwargs(name: str, iters: int) -> dict[str, Any]:
    return {**STEPS[name].options(), "max_iter": iters}


def planted(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in STEPS}
    for seed in range(args.seeds):
        pm = SyntheticMap.planted(args.d, args.n_planted, seed=seed)
        for name in STEPS:
            curve: list[tuple[float, float]] = []

            def callback(it: int, st: IterationState, curve: list[tuple[float, float]] = curve, Vs: Any = pm.V) -> None:
                best = (Vs.T @ st.V).max(dim=1).values
                curve.append((float((best > args.threshold).double().mean()), float(best.mean())))

            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                res = exponential_dct(pm.delta, args.m, R=args.R, tol=0.0, random_state=1000 + seed, callback=callback,
                                      **step_kwargs(name, args.iters))
            rows[name].append({"seed": seed, "recovery": [c[0] for c in curve], "mean_max_cos": [c[1] for c in curve],
                               "objective": res.history, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"planted seed {seed} {name}: recovery {curve[-1][0]:.3f}, mean max cos {curve[-1][1]:.3f}, "
                  f"{rows[name][-1]['seconds']} s", file=sys.stderr, flush=True)
    summary = {}
    for name, rs in rows.items():
        at = {}
        for it in sorted({10, args.iters}):
            rec = [r["recovery"][it - 1] for r in rs]
            cos = [r["mean_max_cos"][it - 1] for r in rs]
            at[str(it)] = {"recovery_mean": statistics.fmean(rec), "recovery": rec,
                           "mean_max_cos_mean": statistics.fmean(cos), "mean_max_cos": cos}
        summary[name] = {"at": at, "final_objective_mean": statistics.fmean(r["objective"][-1] for r in rs),
                         "seconds_mean": statistics.fmean(r["seconds"] for r in rs)}
    return {"setup": {"d": args.d, "n_planted": args.n_planted, "m": args.m, "R": args.R, "seeds": args.seeds,
                      "iters": args.iters, "threshold": args.threshold},
            "summary": summary, "runs": rows}


def reversals(obj: list[float]) -> int:
    d = [b - a for a, b in zip(obj, obj[1:])]
    return sum(1 for a, b in zip(d, d[1:]) if a * b < 0)


def gemma(args: argparse.Namespace) -> dict[str, Any]:
    import melbo
    from melbo.fit.calibrate import calibrate_R
    from melbo.maps.transformer import TransformerCausalMap
    from melbo.prompts.builtin import DEMO_PROMPTS, HELDOUT_PROMPTS

    t0 = time.perf_counter()
    model, tok = melbo.load_model("gemma-3-270m")
    prompts = list(DEMO_PROMPTS + HELDOUT_PROMPTS)[: args.gemma_prompts]
    delta = TransformerCausalMap(model, prompts, 4, 10, tokenizer=tok, chat=True)
    R = args.gemma_R if args.gemma_R is not None else float(calibrate_R(delta, 0.5, random_state=0).R)
    print(f"gemma: R = {R:.4g} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"setup": {"model": "gemma-3-270m", "layers": [4, 10], "n_prompts": len(prompts),
                                     "m": args.gemma_m, "iters": args.gemma_iters, "R": R, "lam": 0.5}, "steps": {}}
    for name in STEPS:
        prev: list[Any] = []
        median: list[float] = []

        def track(it: int, st: IterationState, prev: list[Any] = prev, median: list[float] = median) -> None:
            if prev:
                mv = torch.maximum((st.U - prev[0]).norm(dim=0), (st.V - prev[1]).norm(dim=0))
                median.append(float(mv.median()))
            prev[:] = [st.U.clone(), st.V.clone()]

        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = exponential_dct(delta, args.gemma_m, R=R, tol=0.0, random_state=0, callback=track,
                                  **step_kwargs(name, args.gemma_iters))
        obj = res.history
        out["steps"][name] = {"objective": obj, "last_rel_change": (obj[-1] - obj[-2]) / abs(obj[-2]),
                              "reversals": reversals(obj), "median_movement": median,
                              "seconds": round(time.perf_counter() - t1, 1)}
        print(f"gemma {name}: objective {obj[-1]:.4g}, last change {out['steps'][name]['last_rel_change']:+.2%}, "
              f"{out['steps'][name]['seconds']} s", file=sys.stderr, flush=True)
    return out


def table(result: dict[str, Any]) -> str:
    p = result["planted"]
    s = p["setup"]
    lines = [f"(a) planted factors: d = {s['d']}, K = {s['n_planted']}, m = {s['m']}, R = {s['R']}, "
             f"{s['seeds']} seeds, recovery = share of v* with max cos > {s['threshold']}", "",
             "| step | recovery @ 10 | recovery @ " + str(s["iters"]) + " | mean max cos @ " + str(s["iters"])
             + " | final objective | s per fit |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in p["summary"].items():
        at10, atn = row["at"]["10"], row["at"][str(s["iters"])]
        default = " (default)" if name == result["default_step"] else ""
        lines.append(f"| {name}{default} | {at10['recovery_mean']:.3f} | {atn['recovery_mean']:.3f} | "
                     f"{atn['mean_max_cos_mean']:.3f} | {row['final_objective_mean']:.4g} | {row['seconds_mean']:.1f} |")
    g = result.get("gemma")
    if g:
        gs = g["setup"]
        lines += ["", f"(b) Gemma-3-270M, layers 4 → 10, {gs['n_prompts']} prompts, m = {gs['m']}, R = {gs['R']:.4g}, "
                  f"{gs['iters']} iterations", "",
                  "| step | objective, last 4 iterations | last change | reversals | median movement, last | s |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, row in g["steps"].items():
            last = " ".join(f"{x:.4g}" for x in row["objective"][-4:])
            lines.append(f"| {name} | {last} | {row['last_rel_change']:+.2%} | {row['reversals']} | "
                         f"{row['median_movement'][-1]:.3f} | {row['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--n-planted", type=int, default=16)
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--R", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threshold", type=float, default=0.99)
    ap.add_argument("--gemma", action="store_true", help="also (b), the objective on Gemma-3-270M")
    ap.add_argument("--gemma-m", type=int, default=32)
    ap.add_argument("--gemma-prompts", type=int, default=9)
    ap.add_argument("--gemma-iters", type=int, default=20)
    ap.add_argument("--gemma-R", type=float, default=None, help="steering norm (default: calibrated, minutes on a CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/default_step", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    if args.iters < 10:
        ap.error("--iters must be >= 10 (recovery is reported at 10 and at --iters)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    command = " ".join(["python", "bench/default_step.py", *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {"bench": "default_step", "command": command, "cpu": cpu_description(), "threads": args.threads,
                              "torch": torch.__version__, "default_step": DEFAULT_STEP.name,
                              "steps": {n: s.options() for n, s in STEPS.items()}, "planted": planted(args)}
    if args.gemma:
        result["gemma"] = gemma(args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    text = table(result)
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out + ".md").write_text(f"# Default OGI step against the published one\n\n`{command}`\n\nCPU: {result['cpu']}, "
                                      f"{args.threads} threads, torch {torch.__version__}, {result['seconds']} s\n\n"
                                      f"{text}\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
