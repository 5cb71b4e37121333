"""Training curves (issue 5, the publication's Figure 2): the OGI objective per iteration for
several numbers of factors m.

    python bench/case_training_curves.py --organism organisms/refusal
    python bench/case_training_curves.py --model gemma-3-270m      # any model, AdvBench prompts

Protocol: ``--n-train`` harmful prompts (unseen AdvBench goals for an organism, else the
first AdvBench goals); R is calibrated once (E(R) = ``--lam``) and shared; for each m in
``--ms`` the exponential DCT runs ``--iters`` OGI iterations from the projected-Jacobian
init with the same seed. Reported per m: the objective Σ_ℓ α_ℓ² ‖…‖ as the fit reports it
after each iteration (``objective``), the same divided by its final value
(``relative``), the iteration from which it stays within 1 % of the final value, the objective per
factor, and seconds per iteration. The publication: with m = 512 the objective converges in
about 10 iterations, and more factors converge faster.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _case import (
    base_args,
    emit,
    fit,
    load_organism,
    logger,
    refusal_prompt_sets,
    setup_logging,
)

from melbo.fit.step import DEFAULT_STEP
from melbo.models.loading import load_model
from melbo.prompts.files import read_prompts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__.split("\n")[0], "refusal")
    ap.add_argument("--model", default=None, help="use this model instead of an organism")
    ap.add_argument("--n-train", type=int, default=4)
    ap.add_argument("--ms", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--iters", type=int, default=DEFAULT_STEP.max_iter, help="OGI iterations (default: the default step's)")
    args = ap.parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    if args.model:
        model, tok = load_model(args.model, progress=False)
        prompts = read_prompts(args.harmful, column="goal")[: args.n_train]
        check = None
    else:
        model, tok, data, record = load_organism(args.organism, "refusal")
        pool = refusal_prompt_sets(data, args.harmful, n_test=0, n_val=0, min_pool=args.n_train)["pool"]
        g = torch.Generator().manual_seed(args.seed)
        prompts = [pool[i] for i in torch.randperm(len(pool), generator=g)[: args.n_train].tolist()]
        check = record["check"]["rates"]
    R = args.R
    curves: dict[str, Any] = {}
    for m in args.ms:
        objective: list[float] = []
        stamps: list[float] = []

        def on_iteration(it: int, obj: float, objective: list[float] = objective, stamps: list[float] = stamps) -> None:
            objective.append(float(obj))
            stamps.append(time.perf_counter())

        t1 = time.perf_counter()
        feats, secs = fit(model, tok, prompts, method="exponential", m=m, iters=args.iters, s=args.s, t=args.t,
                          lam=args.lam, R=R, seed=args.seed, on_iteration=on_iteration)
        R = float(feats.R)
        final = objective[-1]
        rel = [o / final for o in objective]
        # settled: the first iteration from which every later objective stays within 1 % of the final one
        within = next(i for i in range(len(rel)) if all(abs(r - 1) <= 0.01 for r in rel[i:]))
        steps = [b - a for a, b in zip(stamps, stamps[1:])]
        curves[str(m)] = {
            "objective": objective, "relative": rel, "settled_within_1pct": within + 1,
            "objective_per_factor": final / m, "seconds_fit": secs,
            "seconds_per_iter": sum(steps) / len(steps) if steps else None,
            "seconds_before_first_iter": stamps[0] - t1 if stamps else None,
        }
        logger.info("m=%d: objective %s; within 1%% of the final value from iteration %d on", m,
                    [round(o, 4) for o in objective], within + 1)
    result = {
        "bench": "case_training_curves", "model": args.model or args.organism, "organism_check": check,
        "source_layer": args.s, "target_layer": args.t, "R": R, "lam": args.lam, "n_train": args.n_train,
        "iters": args.iters, "seed": args.seed, "curves": curves, "seconds": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "publication": "m = 512: converged in about 10 iterations; more factors converge faster",
    }
    its = range(1, args.iters + 1)
    lines = [
        f"Objective after each OGI iteration divided by its final value; n = {args.n_train} prompts, R = {R:.3g}.",
        "",
        "| m | " + " | ".join(str(i) for i in its) + " | within 1 % from | objective / m | s / iter |",
        "|---:|" + "---:|" * (args.iters + 3),
    ]
    for m, c in curves.items():
        spi = "–" if c["seconds_per_iter"] is None else f"{c['seconds_per_iter']:.1f}"
        lines.append(f"| {m} | " + " | ".join(f"{r:.3f}" for r in c["relative"]) +
                     f" | {c['settled_within_1pct']} | {c['objective_per_factor']:.4g} | {spi} |")
    emit(result, "\n".join(lines), args, "Training curves")
    return result


if __name__ == "__main__":
    main()
