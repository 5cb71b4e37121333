"""Steered generation at scale: tokens/s of melbo's batched job against ``model.generate``.

The job (issue 13): ``--features`` random steering vectors (unit directions × ``--norm``,
added at the input of layer ``--layer``) × ``--prompts`` prompts (the demo's, chat-framed)
× ``--tokens`` new tokens, greedy, fp32, on the packaged Gemma-3-270M. Three paths:

* ``a_one_feature_at_a_time`` — what ``generate_for_features`` did before batching: for each
  feature, ``melbo.steering.interventions.steer`` + plain ``model.generate`` on all prompts as one
  left-padded batch (one hook per feature);
* ``b_hf_folded`` — plain ``model.generate`` with features folded into the batch, 64 rows at a
  time, each row steered by its own vector (``row_steering``): ``generate_steered`` as it
  was before this bench (a literal "HF generate with one hook per feature" is path a);
* ``c_melbo`` — :func:`melbo.generation.generate_steered`: melbo's decode loop, chunks sized
  by the memory budget, the prompt prefix below the steering layer shared across features.

Paths a and b are slow: ``--baseline-features N`` times them on the first N features only
and extrapolates tokens/s (requested tokens: completions × ``--tokens``; rows that end early
count in full for every path). ``identity``: the share of completions that are
token-identical between a and c (and b and c) on the features both ran.

    python bench/generation_speed.py --features 256 --prompts 16 --tokens 32 --baseline-features 16 \\
        --out bench/results/generation_speed.json
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _perf import write_result

import melbo
from melbo.generation import generate_steered
from melbo.prompts import build_prompts
from melbo.prompts.builtin import DEMO_PROMPTS, HELDOUT_PROMPTS
from melbo.steering.interventions import row_steering, steer


def _hf(model: torch.nn.Module, tok: Any, ids: torch.Tensor, mask: torch.Tensor, n: int) -> list[str]:
    keep = int(mask.sum(dim=0).nonzero().min())
    ids, mask = ids[:, keep:], mask[:, keep:]
    with torch.no_grad():
        seq = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,  # type: ignore[operator]
                             pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    return [tok.decode(r, skip_special_tokens=True) for r in seq[:, ids.shape[1] :]]


def path_a(model: torch.nn.Module, tok: Any, prompts: list[str], V: torch.Tensor, layer: int, n: int) -> list[list[str]]:
    b = build_prompts(tok, prompts, chat=True, positions=1, padding_side="left")
    out = []
    for j in range(V.shape[1]):
        with steer(model, V[:, j], layer=layer):
            out.append(_hf(model, tok, b.input_ids, b.attention_mask, n))
    return out


def path_b(model: torch.nn.Module, tok: Any, prompts: list[str], V: torch.Tensor, layer: int, n: int,
           rows: int = 64) -> list[list[str]]:
    b = build_prompts(tok, prompts, chat=True, positions=1, padding_side="left")
    p, k = len(prompts), V.shape[1]
    texts: list[str] = []
    for start in range(0, k * p, rows):
        pairs = torch.arange(start, min(k * p, start + rows))
        with row_steering(model, layer, V.T[pairs // p]):
            texts.extend(_hf(model, tok, b.input_ids[pairs % p], b.attention_mask[pairs % p], n))
    return [texts[j * p : (j + 1) * p] for j in range(k)]


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _same(x: list[list[str]], y: list[list[str]]) -> float:
    pairs = [(u, v) for a, b in zip(x, y, strict=False) for u, v in zip(a, b, strict=True)]
    return sum(u == v for u, v in pairs) / max(len(pairs), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--baseline-features", type=int, default=None, help="time paths a and b on this many features (default: all)")
    ap.add_argument("--skip-b", action="store_true", help="do not time path b")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--norm", type=float, default=30.0, help="norm of each steering vector")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for name in ("features", "prompts", "tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} {getattr(args, name)}: must be ≥ 1")
    nb = args.features if args.baseline_features is None else args.baseline_features
    if not 1 <= nb <= args.features:
        ap.error(f"--baseline-features {nb}: must be between 1 and --features {args.features}")
    pool = list(DEMO_PROMPTS + HELDOUT_PROMPTS)
    if args.prompts > len(pool):
        ap.error(f"--prompts {args.prompts}: at most {len(pool)} built-in prompts")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = melbo.load_model(args.model)
    prompts = pool[: args.prompts]
    g = torch.Generator().manual_seed(args.seed)
    V = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, args.features, generator=g), dim=0) * args.norm

    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": args.model, "features": args.features, "prompts": args.prompts, "new_tokens": args.tokens,
        "layer": args.layer, "norm": args.norm, "dtype": str(next(model.parameters()).dtype),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "load_average_before": list(os.getloadavg()),
        "baseline_features": nb, "baseline_extrapolated": nb < args.features,
    }
    tokens_c = args.features * args.prompts * args.tokens
    tokens_base = nb * args.prompts * args.tokens
    out_c, t_c = _timed(lambda: generate_steered(model, tok, prompts, V, layer=args.layer, max_new_tokens=args.tokens, chat=True))
    out_a, t_a = _timed(lambda: path_a(model, tok, prompts, V[:, :nb], args.layer, args.tokens))
    paths: dict[str, Any] = {
        "a_one_feature_at_a_time": {"seconds": t_a, "features_timed": nb, "tokens_per_s": tokens_base / t_a},
        "c_melbo": {"seconds": t_c, "features_timed": args.features, "tokens_per_s": tokens_c / t_c},
    }
    identity = {"a_vs_c": _same(out_a, out_c[:nb])}
    if not args.skip_b:
        out_b, t_b = _timed(lambda: path_b(model, tok, prompts, V[:, :nb], args.layer, args.tokens))
        paths["b_hf_folded"] = {"seconds": t_b, "features_timed": nb, "tokens_per_s": tokens_base / t_b}
        identity["b_vs_c"] = _same(out_b, out_c[:nb])
    rate = {k: v["tokens_per_s"] for k, v in paths.items()}
    result["paths"] = paths
    result["ratios"] = {f"c_over_{k}": rate["c_melbo"] / v for k, v in rate.items() if k != "c_melbo"}
    result["identity_fp32_greedy"] = identity
    result["load_average_after"] = list(os.getloadavg())
    result["example"] = {"prompt": prompts[0], "feature0": out_c[0][0]}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
