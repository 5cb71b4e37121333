"""Best-feature held-out jailbreak score of each method on the same Δ. Prints JSON and a table.

    python bench/compare_methods.py                       # Gemma-3-270M, the defaults below
    python bench/compare_methods.py --m 64 --iters 4 --n-val 8 --n-test 8   # a quicker look

Protocol (issue 4; ``method.md`` §5, Figure 1 without the sweep over n):

* Training prompts: the first ``--n-train`` (8) goals of ``advbench_harmful_behaviors.csv``;
  held out: the next ``--n-val`` + ``--n-test`` (16 + 16 = 32). Nothing held out is used to fit.
* R is calibrated once (E(R) = ``--lam`` on the training prompts, seeded) and shared by every
  method, so all vectors are steered at the same norm: DCT features as R·v, melbo-v1 and
  random vectors at norm R, the mean-difference direction rescaled to norm R (and its
  negation: which sign jailbreaks is not known without looking).
* Methods: exponential DCT (OGI, projected-Jacobian init), linear-projected DCT, original
  MELBO (``--m-v1`` sequential vectors, AMSGrad), mean-difference (training prompts minus the
  first ``--n-train`` harmless prompts of ``alpaca_harmless_1000.json``) and random unit vectors.
* Score of a vector on a prompt: logit("Sure") − logit("Sorry") at the first generated
  position with the vector added at the source layer (:func:`melbo.evaluate.scores.steered_scores`).
  Each method's *best feature* is the one with the highest mean score on the validation
  prompts; the table reports its mean score on the test prompts (never used to choose), next
  to the unsteered test score. ``best_on_test`` (the maximum test score among the
  ``--top-test`` features best on validation) is also given: optimistic, not a fair comparison.

The model is the base Gemma-3-270M: it has no chat template (the fallback user/assistant
frame is used) and does not refuse, so a high score here means "steers towards 'Sure' rather
than 'Sorry'", not a jailbreak of a refusing model (issue 5 builds one).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from melbo.evaluate.scores import jailbreak_score, steered_scores
from melbo.features import Features
from melbo.fit.step import DEFAULT_STEP
from melbo.jobs.train import TrainConfig, train
from melbo.methods import get_method
from melbo.models.loading import load_model
from melbo.prompts.files import read_prompts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
logger = logging.getLogger("compare_methods")
D_PROJ = 32  # melbo train's linear-projected: ±v of the top 32 directions, so 64 features at most


def _stats(x: torch.Tensor) -> dict[str, float]:
    v = [float(a) for a in x]
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--harmful", default=str(DATA / "advbench_harmful_behaviors.csv"))
    ap.add_argument("--harmless", default=str(DATA / "alpaca_harmless_1000.json"))
    ap.add_argument("--n-train", type=int, default=8)
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--s", type=int, default=4, help="source layer")
    ap.add_argument("--t", type=int, default=10, help="target layer")
    ap.add_argument("--m", type=int, default=64, help="factors of the DCTs and random vectors")
    ap.add_argument("--m-v1", type=int, default=8, help="melbo-v1 vectors (sequential: costly)")
    ap.add_argument("--v1-steps", type=int, default=100, help="melbo-v1 AMSGrad steps per vector")
    ap.add_argument("--iters", type=int, default=DEFAULT_STEP.max_iter, help="OGI iterations (default: the default step's)")
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--methods", nargs="+", default=["exponential", "linear-projected", "melbo-v1", "mean-diff", "random"])
    ap.add_argument("--top-test", type=int, default=8, help="features (best on validation) scored on the test prompts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--save-dir", default=None,
                    help="keep each method's features in DIR/<method> and reuse them when the run is repeated")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    harmful = read_prompts(args.harmful, column="goal")
    need = args.n_train + args.n_val + args.n_test
    if len(harmful) < need:
        raise SystemExit(f"{args.harmful} has {len(harmful)} prompts, need {need}")
    train_p = harmful[: args.n_train]
    val_p = harmful[args.n_train : args.n_train + args.n_val]
    test_p = harmful[args.n_train + args.n_val : need]
    harmless = read_prompts(args.harmless, column="instruction")[: args.n_train]
    score_kw: dict[str, Any] = {"chat": True, "batch_size": args.batch_size}

    unsteered_val = jailbreak_score(model, tok, val_p, **score_kw)
    unsteered_test = jailbreak_score(model, tok, test_p, **score_kw)
    R: float | None = None
    calibration: Any = None
    rows: dict[str, Any] = {}
    for method in args.methods:
        t1 = time.perf_counter()
        m = {"melbo-v1": args.m_v1, "mean-diff": 1, "linear-projected": min(args.m, 2 * D_PROJ)}.get(method, args.m)
        tau = args.iters if get_method(method).iterative else args.v1_steps if method == "melbo-v1" else None
        cfg = TrainConfig(
            source_layer=args.s, target_layer=args.t, method=method, n_factors=m, max_iter=tau,
            lam=args.lam, R=R, random_state=args.seed,
        )
        saved = Path(args.save_dir) / method if args.save_dir else None
        if saved is not None and (saved / "config.json").is_file():
            feats: Features = Features.load(saved)
            if feats.n_factors != m or feats.source_layer != args.s or feats.target_layer != args.t:
                raise SystemExit(f"{saved} holds other features ({feats.n_factors} at {feats.source_layer}->{feats.target_layer}); "
                                 "use another --save-dir")
            logger.info("reusing %s from %s", method, saved)
        else:
            logger.info("fitting %s (m=%d)", method, m)
            feats = train(model, tok, train_p, cfg, saved, contrast_prompts=harmless if method == "mean-diff" else None,
                          on_iteration=lambda it, obj: logger.info("iteration %d: objective %.5g", it, obj))
        if R is None:
            R, calibration = feats.R, feats.extra.get("calibration")
        fit_s = time.perf_counter() - t1
        V = feats.V.to(torch.float32)
        V = V / V.norm(dim=0, keepdim=True) * R  # every vector at norm R
        if method == "mean-diff":
            V = torch.cat([V, -V], dim=1)
        logger.info("scoring %s: %d vectors x %d prompts", method, V.shape[1], len(val_p) + len(test_p))
        val = steered_scores(model, tok, val_p, V, layer=args.s, **score_kw).mean(1)
        top = torch.argsort(val, descending=True)[: args.top_test]
        test = steered_scores(model, tok, test_p, V[:, top], layer=args.s, **score_kw)  # (top, n_test)
        best = int(top[0])
        rows[method] = {
            "n_vectors": V.shape[1],
            "best_feature": best,
            "best_val_score": float(val[best]),
            "test_score_of_best": _stats(test[0]),
            "best_on_test": float(test.mean(1).max()),
            "median_val_score": float(val.median()),
            "seconds_fit": fit_s,
            "seconds_total": time.perf_counter() - t1,
        }
        logger.info("%s: %s", method, rows[method])
    result = {
        "model": args.model,
        "source_layer": args.s, "target_layer": args.t, "R": R, "lam": args.lam, "calibration": calibration,
        "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
        "m": args.m, "m_v1": args.m_v1, "v1_steps": args.v1_steps, "iters": args.iters, "seed": args.seed,
        "top_test": args.top_test,
        "unsteered": {"val": _stats(unsteered_val), "test": _stats(unsteered_test)},
        "methods": rows,
        "seconds": time.perf_counter() - t0,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print(format_table(result), file=sys.stderr)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of the result (the closing note's)."""
    u = result["unsteered"]["test"]
    lines = [
        f"| method | vectors | test score of best-on-val (mean ± sd) | max test score of top-{result['top_test']} on val | fit s |",
        "|---|---:|---:|---:|---:|",
        f"| unsteered | – | {u['mean']:.2f} ± {u['sd']:.2f} | – | – |",
    ]
    for name, r in result["methods"].items():
        t = r["test_score_of_best"]
        lines.append(f"| {name} | {r['n_vectors']} | {t['mean']:.2f} ± {t['sd']:.2f} | {r['best_on_test']:.2f} | {r['seconds_fit']:.0f} |")
    if not all(math.isfinite(r["best_val_score"]) for r in result["methods"].values()):
        lines.append("(non-finite scores present)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
