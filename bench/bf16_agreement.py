"""Do features fitted with bf16 matmuls match the fp32 ones? Prints JSON.

    python bench/bf16_agreement.py                 # Gemma-3-270M, 8 advbench prompts, m = 64

Both fits use the same fp32 model, prompts, R (calibrated once in fp32), seed and init; the
second runs the slice's matmuls in bf16 under ``torch.autocast`` (``compute_dtype``), with Δ
and every update accumulated in fp32. Each bf16 feature is matched to the fp32 feature
with the largest |cos| of their input directions v; the JSON gives the mean, median and
minimum of those cosines (for V and, on the same matching, for U), the seconds of each
fit and the relative difference of the final objectives.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from melbo.fit import ConvergenceWarning
from melbo.fit.calibrate import calibrate_R
from melbo.fit.exponential import exponential_dct
from melbo.maps.transformer import TransformerCausalMap
from melbo.models.loading import load_model
from melbo.prompts.files import read_prompts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompts", default=str(DATA / "advbench_harmful_behaviors.csv"))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--s", type=int, default=4)
    ap.add_argument("--t", type=int, default=10)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    model, tok = load_model(args.model, progress=False)
    prompts = read_prompts(args.prompts)[: args.n]
    fits: dict[str, Any] = {}
    R = None
    for name, cdt in (("float32", None), ("bfloat16", "bfloat16")):
        cmap = TransformerCausalMap(model, prompts, args.s, args.t, tokenizer=tok, compute_dtype=cdt)
        if R is None:
            R = calibrate_R(cmap, 0.5, random_state=args.seed).R
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = exponential_dct(cmap, args.m, R=R, max_iter=args.iters, random_state=args.seed)
        fits[name] = (res, time.perf_counter() - t0)
    (a, ta), (b, tb) = fits["float32"], fits["bfloat16"]
    cv = (b.V.T.double() @ a.V.double()).abs()  # (m_bf16, m_fp32)
    best = cv.argmax(dim=1)
    cos_v = cv.max(dim=1).values.tolist()
    cos_u = (b.U.double() * a.U.double()[:, best]).sum(0).abs().tolist()
    out = {
        "model": args.model, "n_prompts": args.n, "source_layer": args.s, "target_layer": args.t,
        "m": args.m, "iters": args.iters, "R": R,
        "cos_v": {"mean": statistics.fmean(cos_v), "median": statistics.median(cos_v), "min": min(cos_v)},
        "cos_u_same_match": {"mean": statistics.fmean(cos_u), "median": statistics.median(cos_u), "min": min(cos_u)},
        "distinct_fp32_matches": len(set(best.tolist())),
        "objective_fp32": a.history[-1], "objective_bf16": b.history[-1],
        "objective_rel_diff": abs(a.history[-1] - b.history[-1]) / abs(a.history[-1]),
        "seconds_fit_fp32": ta, "seconds_fit_bf16": tb,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
