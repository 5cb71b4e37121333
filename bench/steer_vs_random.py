"""Do top-ranked DCT features change greedy completions where random vectors of the same
norm do not? Prints JSON.

    python bench/steer_vs_random.py --features runs/gemma_exp \
        --prompts ../shared/data/advbench_harmful_behaviors.csv --skip 8 --n-prompts 4

A vector "changes" a prompt's completion when the steered greedy continuation differs from
the unsteered one; a vector counts as changing completions when it does so on at least
half of the held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from melbo.evaluate.rank import rank_by_alpha, readout_scores
from melbo.features import Features
from melbo.generation import generate, generate_steered
from melbo.models.loading import load_model
from melbo.prompts.files import read_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", required=True)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--column", default="goal")
    ap.add_argument("--skip", type=int, default=8, help="skip the first N prompts (the training ones)")
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--top", type=int, default=32)
    ap.add_argument("--n-random", type=int, default=32)
    ap.add_argument("--rank", choices=("alpha", "readout"), default="alpha")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    feats = Features.load(args.features)
    feats.check_model(model)
    all_prompts = read_prompts(args.prompts, column=args.column)
    held_out = all_prompts[args.skip : args.skip + args.n_prompts]
    if args.rank == "alpha":
        order = rank_by_alpha(feats.alpha)
    else:
        train_prompts = all_prompts[: args.skip]
        s = readout_scores(model, tok, train_prompts, feats.V, R=feats.R, source_layer=feats.source_layer, chat=True)
        order = torch.argsort(s, descending=True)
    top = order[: args.top].tolist()
    g = torch.Generator().manual_seed(args.seed)
    rand = torch.nn.functional.normalize(torch.randn(feats.d_model, args.n_random, generator=g, dtype=torch.float64), dim=0)

    kw = {"max_new_tokens": args.max_new_tokens, "chat": True}
    base = generate(model, tok, held_out, **kw)  # type: ignore[arg-type]

    # every (vector, prompt) pair as one batched job: the top features, then the random vectors
    vecs = torch.cat([feats.V[:, top].double(), rand], dim=1) * (args.scale * feats.R)
    comps = generate_steered(model, tok, held_out, vecs.float(), layer=feats.source_layer, **kw)  # type: ignore[arg-type]
    frac = [sum(a != b for a, b in zip(out, base)) / len(base) for out in comps]
    feat_frac, rand_frac = frac[: len(top)], frac[len(top) :]
    example = None
    if top:
        example = {"prompt": held_out[0], "unsteered": base[0], "steered_top1": comps[0][0]}
    print(json.dumps({
        "features": args.features, "R": feats.R, "scale": args.scale, "ranking": args.rank,
        "n_heldout_prompts": len(held_out), "max_new_tokens": args.max_new_tokens,
        "top_features_changing": sum(f >= 0.5 for f in feat_frac), "of_top": len(top),
        "random_changing": sum(f >= 0.5 for f in rand_frac), "of_random": args.n_random,
        "mean_changed_fraction_top": sum(feat_frac) / max(1, len(feat_frac)),
        "mean_changed_fraction_random": sum(rand_frac) / max(1, len(rand_frac)),
        "example": example, "seconds": time.perf_counter() - t0,
    }, indent=1))


if __name__ == "__main__":
    main()
