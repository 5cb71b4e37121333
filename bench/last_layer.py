"""The saving of running the slice's last layer MLP at the target positions only, in FLOPs and
seconds from the same run. Prints JSON (``-o`` also writes it).

    python bench/last_layer.py -o bench/results/last_layer.json

On the packaged Gemma-3-270M (``--dtype``), ``n`` random prompts of ``T`` tokens, slice
``s → t``, ``k`` target positions: two :class:`melbo.maps.transformer.TransformerCausalMap` on the
same recorded slice, ``last_layer_targets_only`` True (melbo's default) and False, time
``value_and_vjp`` on ``m`` factors (one OGI iteration's work) alternately, ``--reps`` times
each after a warm-up, and report the median seconds, the FLOPs of each
(``bench/_perf.slice_flops``, which ``tests/test_perf_bench.py`` checks against torch's FLOP
counter on the same code path), both ratios, and the largest difference between the two
results (they compute the same Δ). CPU timings taken while other processes use the cores are
noisy; the load average is recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _perf import LayerShape, slice_flops, write_result  # noqa: E402

from melbo.maps.transformer import TransformerCausalMap  # noqa: E402
from melbo.models.loading import load_model  # noqa: E402
from melbo.prompts import PromptBatch, resolve_positions  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--s", type=int, default=4)
    ap.add_argument("--t", type=int, default=10)
    ap.add_argument("--n", type=int, default=4, help="prompts")
    ap.add_argument("--prompt-len", type=int, default=32, help="T")
    ap.add_argument("--k", type=int, default=3, help="target positions (last k)")
    ap.add_argument("--m", type=int, default=32, help="factors")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args(argv)
    if not 1 <= args.k <= args.prompt_len:
        ap.error("need 1 <= --k <= --prompt-len")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loadavg_before = os.getloadavg()
    model, _tok = load_model("gemma-3-270m", dtype=getattr(torch, args.dtype), progress=False)[:2]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.n, args.prompt_len), generator=g)
    ids[:, 0] = int(model.config.bos_token_id)
    T = args.prompt_len
    batch = PromptBatch(ids, torch.ones_like(ids), resolve_positions(args.k, [T] * args.n, [0] * args.n),
                        tuple("random" for _ in range(args.n)), "none")
    maps = {name: TransformerCausalMap(model, batch, args.s, args.t, chunk_size=args.m, last_layer_targets_only=flag)
            for name, flag in (("targets", True), ("all", False))}
    W = torch.nn.functional.normalize(torch.randn(maps["all"].d_model, args.m, generator=g), dim=0) * 4.0
    results = {name: cm.value_and_vjp(W, W) for name, cm in maps.items()}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in maps}
    for _ in range(args.reps):
        for name, cm in maps.items():
            t0 = time.perf_counter()
            cm.value_and_vjp(W, W)
            seconds[name].append(time.perf_counter() - t0)
    shape = LayerShape.from_model(model)
    flops = {name: slice_flops(shape, n_tokens=T, n_layers=args.t - args.s, n_sequences=args.m * args.n,
                               last_layer_mlp_rows=args.k if name == "targets" else None).vjp for name in maps}
    med = {name: statistics.median(v) for name, v in seconds.items()}
    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(results["targets"], results["all"], strict=True))
    result: dict[str, Any] = {
        "benchmark": "last_layer",
        "command": "python bench/last_layer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "gemma-3-270m (packaged)",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_before": loadavg_before,
        "seconds_value_and_vjp": seconds,
        "median_seconds": med,
        "flops_value_and_vjp": flops,
        "flops_ratio_targets_over_all": flops["targets"] / flops["all"],
        "seconds_ratio_targets_over_all": med["targets"] / med["all"],
        "max_rel_diff_targets_vs_all": diff,
        "loadavg_after": os.getloadavg(),
    }
    write_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
