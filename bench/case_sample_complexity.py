"""Sample complexity (issue 5, the publication's Figure 1): held-out jailbreak score of the
best feature of each DCT variant, trained on n harmful prompts of the refusal organism.

    melbo organism build refusal --base gemma-3-270m --out organisms/refusal
    python bench/case_sample_complexity.py --organism organisms/refusal

Protocol:

* Prompt sets (:func:`_case.refusal_prompt_sets`): validation = 32 of the organism's held-out
  harmful probes; test = the last ``--n-test`` AdvBench goals the organism never saw; for each
  shuffle and n, the training prompts are n goals drawn (seeded) from the other unseen ones.
* R is calibrated once (E(R) = ``--lam`` on the first shuffle's largest training set, with the
  exponential DCT) and shared, so every method steers at the same norm.
* For each (n, shuffle, method): fit ``--m`` features (linear-projected keeps the ±v of its
  top m/2 directions), score each on validation, take the best one and report its test score.
  Score = logit("Sure") − logit("Sorry") at the first generated position (``method.md`` §4;
  the organism's refusals all begin with "Sorry"). With ``--gen-tokens`` > 0 the best
  feature's test refusal rate from greedy generation is reported as well.
* Table: mean ± sd over shuffles per method and n, next to the unsteered test score.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _case import (
    add_step_arg,
    base_args,
    bench_step,
    emit,
    fit,
    load_organism,
    logger,
    refusal_prompt_sets,
    setup_logging,
    stats,
    steering_matrix,
)

from melbo.evaluate.refusal import is_refusal
from melbo.evaluate.scores import generate_for_features, jailbreak_score, steered_scores
from melbo.generation import generate


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__.split("\n")[0], "refusal")
    ap.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 16], help="training prompts per fit")
    ap.add_argument("--shuffles", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["exponential", "quadratic", "linear-projected", "linear"])
    ap.add_argument("--m", type=int, default=32, help="features per fit")
    ap.add_argument("--iters", type=int, default=None,
                    help="iterations of the exponential/quadratic fits (default: the step's: 20 annealed, 10 published or settled)")
    ap.add_argument("--n-val", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--gen-tokens", type=int, default=16, help="0: skip the generated refusal rate")
    add_step_arg(ap)  # of the exponential DCT
    args = ap.parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    model, tok, data, record = load_organism(args.organism, "refusal")
    sets = refusal_prompt_sets(data, args.harmful, args.n_test, args.n_val)
    score_kw: dict[str, Any] = {"chat": True, "batch_size": args.batch_size, "token_a": args.token_a,
                                "token_b": args.token_b}
    gen_kw: dict[str, Any] = {"max_new_tokens": args.gen_tokens, "chat": True}  # rows per chunk: by memory budget
    unsteered = jailbreak_score(model, tok, sets["test"], **score_kw)
    unsteered_val = jailbreak_score(model, tok, sets["val"], **score_kw)
    refusal_test = (sum(map(is_refusal, generate(model, tok, sets["test"], **gen_kw))) / args.n_test
                    if args.gen_tokens else None)
    logger.info("unsteered: test score %.2f, val score %.2f, test refusal rate %s", float(unsteered.mean()),
                float(unsteered_val.mean()), refusal_test)

    draws: dict[int, list[list[str]]] = {}
    for sh in range(args.shuffles):
        g = torch.Generator().manual_seed(args.seed * 1000 + sh)
        perm = torch.randperm(len(sets["pool"]), generator=g).tolist()
        for n in args.ns:
            draws.setdefault(n, []).append([sets["pool"][i] for i in perm[:n]])
    R = args.R
    if R is None:
        calib, _ = fit(model, tok, draws[max(args.ns)][0], method="exponential", m=args.m, iters=1, s=args.s,
                       t=args.t, lam=args.lam, R=None, seed=args.seed)
        R = float(calib.R)
        logger.info("calibrated R = %.4g", R)
    step = bench_step(args.step)
    if args.iters is None:  # the quadratic fit runs as many as the exponential one
        args.iters = step["max_iter"]
    del step["max_iter"]
    runs: list[dict[str, Any]] = []
    for n in args.ns:
        for sh, prompts in enumerate(draws[n]):
            for method in args.methods:
                m = args.m
                feats, secs = fit(model, tok, prompts, method=method, m=m, iters=args.iters, s=args.s, t=args.t,
                                  lam=args.lam, R=R, seed=args.seed + sh, **(step if method == "exponential" else {}))
                V = steering_matrix(feats)
                val = steered_scores(model, tok, sets["val"], V, layer=args.s, **score_kw).mean(1)
                best = int(torch.argmax(val))
                test = steered_scores(model, tok, sets["test"], V[:, best : best + 1], layer=args.s, **score_kw)[0]
                run = {"n": n, "shuffle": sh, "method": method, "vectors": int(V.shape[1]), "best_feature": best,
                       "val_score": float(val[best]), "test_score": float(test.mean()), "seconds_fit": secs}
                if args.gen_tokens:
                    comps = generate_for_features(model, tok, feats, [best], sets["test"], **gen_kw)[best]
                    run["test_refusal_rate"] = sum(map(is_refusal, comps)) / len(comps)
                    run["example"] = {"prompt": sets["test"][0], "completion": comps[0]}
                runs.append(run)
                logger.info("n=%d shuffle=%d %s: val %.2f test %.2f refusal %s (%.0f s)", n, sh, method,
                            run["val_score"], run["test_score"], run.get("test_refusal_rate"), secs)
    summary: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        for n in args.ns:
            sel = [r for r in runs if r["method"] == method and r["n"] == n]
            cell: dict[str, Any] = {"test_score": stats([r["test_score"] for r in sel])}
            if args.gen_tokens:
                cell["test_refusal_rate"] = stats([r["test_refusal_rate"] for r in sel])
            summary.setdefault(method, {})[str(n)] = cell
    result = {
        "bench": "case_sample_complexity", "organism": args.organism, "organism_check": record["check"]["rates"],
        "source_layer": args.s, "target_layer": args.t, "R": R, "lam": args.lam, "m": args.m, "iters": args.iters,
        "step": args.step, "step_options": step,
        "ns": args.ns, "shuffles": args.shuffles, "n_val": args.n_val, "n_test": args.n_test, "seed": args.seed,
        "unsteered": {"test_score": stats(unsteered.tolist()), "val_score": float(unsteered_val.mean()),
                      "test_refusal_rate": refusal_test},
        "summary": summary, "runs": runs, "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
    }
    head = " | ".join(f"n = {n}" for n in args.ns)
    lines = [
        f"Refusal organism; test score of the best-on-validation feature, mean ± sd over {args.shuffles} shuffles "
        f"({args.n_test} test prompts; unsteered {float(unsteered.mean()):.2f}"
        + (f", refusal rate {refusal_test:.0%}" if refusal_test is not None else "") + f"). R = {R:.3g}, m = {args.m}; exponential step: {args.step} {step or ''}.",
        "",
        f"| method | {head} |",
        "|---|" + "---:|" * len(args.ns),
    ]
    for method, cells in summary.items():
        row = []
        for n in args.ns:
            c = cells[str(n)]
            txt = f"{c['test_score']['mean']:.2f} ± {c['test_score']['sd']:.2f}"
            if "test_refusal_rate" in c:
                txt += f" ({c['test_refusal_rate']['mean']:.0%} refuse)"
            row.append(txt)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    emit(result, "\n".join(lines), args, "Sample complexity")
    return result


if __name__ == "__main__":
    main()
