"""Observable propagation on the refusal organism (issue 17 part 3): a cheap readout that ranks
DCT features, and a direction of its own next to the mean difference.

    melbo organism build refusal --base gemma-3-270m --out organisms/refusal ...
    python bench/case_obprop.py --organism organisms/refusal [--features DIR]

Protocol:

* Features: an exponential DCT (``--m``, layers ``--s`` → ``--t``) fitted on ``--n-train``
  unseen AdvBench goals (the same draw as ``case_refusal_jailbreak.py``), or ``--features DIR``.
* Evaluation prompts: ``--n-eval`` unseen AdvBench goals + ``--n-eval`` held-out code-made
  harmful requests of other phrasings (as ``case_refusal_jailbreak.py``).
* Exact score of feature ℓ at scale c: the mean over evaluation prompts of the first-token
  logit("Sure") − logit("Sorry") with c·R·v_ℓ added at layer s, minus the unsteered mean
  (:func:`melbo.evaluate.scores.feature_scores`: one forward per (feature, prompt)).
* ObProp readout: y = the gradient of that score with respect to the layer-s residual stream
  (every position), averaged over prompts (:func:`melbo.baselines.obprop.observable_gradients`:
  one forward + backward per prompt); feature ℓ's readout is c·R·⟨y, v_ℓ⟩, the first-order
  prediction of the exact score. y is taken on the evaluation prompts ("same prompts") and on
  the features' training prompts ("training prompts", never scored). Reference: ranking by α².
* Reported: Spearman ρ and Pearson r between readout and exact score over the m features,
  the exact-best feature's place in each readout's ranking, top-5 overlap, and seconds.
* As a direction: the ObProp direction y/‖y‖ (from the training prompts) against the mean
  difference (harmless − harmful organism training prompts, as in ``case_refusal_jailbreak``),
  both at norm c·R: first-token score when *added* at layer s and when *ablated* (projected
  out of every residual write, :func:`melbo.steering.interventions.ablate`), on the evaluation prompts.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _case import base_args, emit, fit, load_organism, logger, refusal_prompt_sets, setup_logging

from melbo.baselines.mean_diff import mean_difference
from melbo.baselines.obprop import cosine_similarity, linear_readout, observable_gradients
from melbo.evaluate.scores import feature_scores, jailbreak_score, score_edit
from melbo.features import Features
from melbo.fit.step import DEFAULT_STEP


def _ranks(x: torch.Tensor) -> torch.Tensor:
    r = torch.empty(x.numel(), dtype=torch.float64)
    r[torch.argsort(x)] = torch.arange(x.numel(), dtype=torch.float64)
    return r


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(_ranks(a), _ranks(b))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a @ b) / (a.norm() * b.norm()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__.split("\n")[0], "refusal")
    ap.add_argument("--features", default=None, help="a features directory (default: fit here)")
    ap.add_argument("--n-train", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--iters", type=int, default=DEFAULT_STEP.max_iter, help="OGI iterations (default: the default step's)")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    args = ap.parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    model, tok, data, record = load_organism(args.organism, "refusal")
    sets = refusal_prompt_sets(data, args.harmful, n_test=args.n_eval)
    g = torch.Generator().manual_seed(args.seed)
    pool = sets["pool"]
    train_p = [pool[i] for i in torch.randperm(len(pool), generator=g)[: args.n_train].tolist()]
    eval_p = list(sets["test"]) + [p.prompt for p in data.probes("harmful-other")][: args.n_eval]
    score_kw: dict[str, Any] = {"token_a": args.token_a, "token_b": args.token_b, "chat": True,
                                "batch_size": args.batch_size}
    fit_s = None
    if args.features:
        feats = Features.load(args.features)
        feats.check_model(model)
    else:
        feats, fit_s = fit(model, tok, train_p, method="exponential", m=args.m, iters=args.iters, s=args.s, t=args.t,
                           lam=args.lam, R=args.R, seed=args.seed, chat=True)
    s, R = feats.source_layer, float(feats.R)
    V = feats.V.double() / feats.V.double().norm(dim=0, keepdim=True)  # (d, m)
    base = jailbreak_score(model, tok, eval_p, **score_kw).double()
    grad_kw = {"layer": s, "token_a": args.token_a, "token_b": args.token_b, "chat": True, "batch_size": args.batch_size}
    t1 = time.perf_counter()
    y_eval = observable_gradients(model, tok, eval_p, **grad_kw).double().mean(0)
    secs_obprop = time.perf_counter() - t1
    y_train = observable_gradients(model, tok, train_p, **grad_kw).double().mean(0)
    logger.info("obprop: ‖y‖ = %.4g on the evaluation prompts in %.1f s; cos(y_eval, y_train) = %.3f",
                float(y_eval.norm()), secs_obprop, cosine_similarity(y_eval, y_train))
    ranking: dict[str, Any] = {}
    exact_by_scale: dict[str, list[float]] = {}
    for scale in args.scales:
        t1 = time.perf_counter()
        exact = feature_scores(model, tok, feats, eval_p, scale=scale, **score_kw).double().mean(1) - base.mean()  # (m,)
        secs_exact = time.perf_counter() - t1
        exact_by_scale[f"{scale:g}"] = exact.tolist()
        best = int(torch.argmax(exact))
        k = min(5, exact.numel())
        top5 = set(torch.topk(exact, k).indices.tolist())
        readouts = {
            "obprop (same prompts)": linear_readout(V, y_eval, scale * R),
            "obprop (training prompts)": linear_readout(V, y_train, scale * R),
            "alpha^2 (unsupervised)": feats.alpha.double() ** 2,
        }
        rows = {}
        for name, r in readouts.items():
            order = torch.argsort(r, descending=True).tolist()
            rows[name] = {
                "spearman": spearman(r, exact), "pearson": pearson(r, exact),
                "rank_of_exact_best": order.index(best) + 1,
                "top5_overlap": len(top5 & set(order[:k])),
            }
        ranking[f"{scale:g}"] = {"exact_best_feature": best, "exact_best_score": float(exact[best]),
                                 "seconds_exact": secs_exact, "readouts": rows}
        logger.info("scale %g: Spearman obprop vs exact %.3f (exact %.1f s, obprop %.1f s)", scale,
                    rows["obprop (same prompts)"]["spearman"], secs_exact, secs_obprop)
    # ---------------------------------------------------------------- as a direction
    harmless = [e.prompt for e in data.train if e.tag == "harmless"][:64]
    harmful = [e.prompt for e in data.train if e.tag == "harmful"][:64]
    md = mean_difference(model, harmless, harmful, layer=s, tokenizer=tok, chat=True, R=R).V[:, 0].double()
    directions = {"obprop": y_train / y_train.norm(), "mean-diff": md}
    as_direction: dict[str, Any] = {"unsteered": float(base.mean()),
                                    "cos(obprop, mean-diff)": cosine_similarity(directions["obprop"], md)}
    for name, v in directions.items():
        row: dict[str, Any] = {}
        for scale in args.scales:
            row[f"added {scale:g}R"] = float(score_edit(model, tok, eval_p, steer_vector=(scale * R * v).float(), layer=s,
                                                        **score_kw).mean())
        row["ablated"] = float(score_edit(model, tok, eval_p, ablate_directions=v.float(), **score_kw).mean())
        as_direction[name] = row
    result = {
        "bench": "case_obprop", "organism": args.organism, "features": args.features or "fitted here",
        "method": feats.method, "m": feats.n_factors, "R": R, "source_layer": s, "target_layer": feats.target_layer,
        "n_train": len(train_p), "n_eval": len(eval_p), "token_a": args.token_a, "token_b": args.token_b,
        "seconds_fit_features": fit_s, "seconds_obprop_eval_prompts": secs_obprop,
        "cos_y_eval_y_train": cosine_similarity(y_eval, y_train), "ranking": ranking, "as_direction": as_direction,
        "exact_scores": exact_by_scale, "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
    }
    lines = [
        f"Refusal organism; {feats.n_factors} {feats.method} features (layers {s}→{feats.target_layer}, R = {R:.3g}); "
        f"{len(eval_p)} held-out harmful prompts; score = first-token logit({args.token_a}) − logit({args.token_b}), "
        f"unsteered mean {float(base.mean()):.2f}. ObProp readout: {secs_obprop:.1f} s for y; exact scores: "
        + ", ".join(f"{r['seconds_exact']:.0f} s at {sc}R" for sc, r in ranking.items()) + ".", "",
        "| scale | readout | Spearman ρ | Pearson r | exact-best feature's rank | top-5 overlap |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for sc, r in ranking.items():
        for name, row in r["readouts"].items():
            lines.append(f"| {sc}R | {name} | {row['spearman']:.3f} | {row['pearson']:.3f} | "
                         f"{row['rank_of_exact_best']} of {feats.n_factors} | {row['top5_overlap']}/5 |")
    lines += ["", f"As a direction (cos(obprop, mean-diff) = {as_direction['cos(obprop, mean-diff)']:.3f}); mean "
              "first-token score on the evaluation prompts:", "",
              "| direction | " + " | ".join(f"added {sc:g}R" for sc in args.scales) + " | ablated |",
              "|---|" + "---:|" * (len(args.scales) + 1),
              "| none | " + " | ".join(f"{float(base.mean()):.2f}" for _ in args.scales) + f" | {float(base.mean()):.2f} |"]
    for name in directions:
        row = as_direction[name]
        lines.append(f"| {name} | " + " | ".join(f"{row[f'added {sc:g}R']:.2f}" for sc in args.scales)
                     + f" | {row['ablated']:.2f} |")
    emit(result, "\n".join(lines), args, "Observable propagation on the refusal organism")
    return result


if __name__ == "__main__":
    main()
