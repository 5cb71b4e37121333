"""Seconds, FLOP/s and fraction of the matmul peak of OGI (exponential DCT), melbo's batched
primitives against a publication-style ``torch.func.vmap`` reference. Prints JSON.

    python bench/ogi_speed.py --model gemma-3-270m --n 2 --m 32 --iters 2 --mode both
    python bench/ogi_speed.py --model qwen1.5-7b --s 10 --t 20 --n 1 --m 512 --dtype bfloat16

Models: the packaged Gemma-3-270M (``gemma-3-270m``, loaded with
:func:`melbo.models.loading.load_model`) or a random-init stand-in of a named real shape
(:data:`_perf.SHAPES`: ``qwen1.5-7b``, ``qwen2-0.5b``, ``qwen2.5-7b``, ``llama-3-8b``,
``gemma-3-270m-random``) with ``t`` layers and a ``--vocab``-token vocabulary (the embedding
and unembedding play no part in the slice). Prompts are ``n`` random token sequences of
``--prompt-len`` tokens, no padding; the target positions are the last ``--k``.

Modes, run one after the other in the same process:

* ``melbo``: :class:`melbo.maps.transformer.TransformerCausalMap` on a model in ``--dtype`` with
  ``--attn`` attention (``--compile``: layers through ``torch.compile``, compiled once
  before the timings and reported as ``seconds_compile``): :func:`melbo.fit.calibrate_R`, the ``--init`` initialiser, then
  ``--iters`` OGI iterations (QR of V + :func:`melbo.fit.exponential.ogi_step`).
* ``vmap``: the way the publication's code computes the same quantities — fp32, eager
  attention, ``torch.func.vmap`` over factors of a ``torch.func.vjp`` of a per-factor Δ on the
  same recorded slice (:class:`_perf.VmapCausalMap`), chunked (``--vmap-chunk``,
  default the factors per chunk a 2 GiB budget gives in fp32, on every device). Same calibration,
  init and iteration code, only the primitives differ. With ``--mode both`` its
  iterations start from melbo's R, U, V, so the first iteration's G_U and updated V are
  compared (``agreement``).

FLOPs are matmul FLOPs counted from the layer shape (``bench/_perf.py``): per sequence and
layer, forward = Q/K/V/O projections + MLP (3 matrices if gated, else 2) + QKᵀ and A·V
over the prompt length (dense, as eager/SDPA compute them), except that melbo's last slice
layer runs its MLP at the k target positions only (``--last-layer-mlp targets``, melbo's
default; not when compiled, where that layer runs whole); an OGI iteration is one
forward and one input-gradient backward of the t−s slice layers on m·n sequences, i.e.
2·linear + 3·attention (weight gradients are never computed). ``achieved_flops`` =
FLOPs per iteration / ``seconds_per_iter`` (median of the iterations after the first,
which is reported apart as warm-up); ``peak_flops`` is measured in the same run with
square matmuls in the same dtype; ``peak_fraction`` = achieved / peak. Peak memory is
``torch.cuda.max_memory_allocated`` per mode on a GPU, the process's max RSS (a
high-water mark, weights included) on the CPU. CPU timings taken while others use the
machine are noisy.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import asdict
from typing import Any

import torch
import transformers
from _perf import (  # bench/_perf.py: on sys.path as the script's own directory
    SHAPES,
    LayerShape,
    VmapCausalMap,
    build_model,
    measure_matmul_peak,
    peak_memory_bytes,
    reset_peak_memory,
    slice_flops,
    synchronize,
)
from torch import Tensor, nn

from melbo.fit._common import make_generator, qr_columns
from melbo.fit.calibrate import CalibrationError, calibrate_R
from melbo.fit.exponential import ogi_step
from melbo.fit.init import INITS, initial_factors
from melbo.maps.protocol import CausalMap
from melbo.maps.transformer import DEFAULT_MEMORY_BUDGET, TransformerCausalMap
from melbo.prompts import PromptBatch, resolve_positions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PACKAGED = "gemma-3-270m"
MODELS = (PACKAGED, *(f"{k}-random" if k == PACKAGED else k for k in SHAPES))

log = logging.getLogger("ogi_speed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=PACKAGED, choices=MODELS)
    ap.add_argument("--prompt-len", type=int, default=32, help="tokens per prompt (T)")
    ap.add_argument("--n", type=int, default=1, help="prompts")
    ap.add_argument("--m", type=int, default=512, help="factors")
    ap.add_argument("--s", type=int, default=None, help="source layer (default: n_layers // 3)")
    ap.add_argument("--t", type=int, default=None, help="target layer (default: 2 * n_layers // 3)")
    ap.add_argument("--k", type=int, default=3, help="target positions (last k tokens)")
    ap.add_argument("--iters", type=int, default=3, help="OGI iterations")
    ap.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="melbo mode's model dtype")
    ap.add_argument("--mode", default="both", choices=("melbo", "vmap", "both"))
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--attn", default="sdpa", help="melbo mode's attention implementation")
    ap.add_argument("--init", default="projected", choices=INITS)
    ap.add_argument("--R", type=float, default=None, help="skip calibration and use this R")
    ap.add_argument("--memory-budget-gib", type=float, default=None, help="melbo chunking budget")
    ap.add_argument("--chunk-size", type=int, default=None, help="melbo factors per chunk")
    ap.add_argument("--vmap-chunk", type=int, default=None, help="vmap factors per chunk")
    ap.add_argument("--last-layer-queries", default="all", choices=("all", "targets"),
                    help="FLOP count only (a what-if; melbo computes all T queries): all T queries, or the k targets")
    ap.add_argument("--last-layer-mlp", default="targets", choices=("targets", "all"),
                    help="melbo mode: the last slice layer's MLP at the k targets only (melbo's default) or at all "
                         "T positions; the FLOP count follows")
    ap.add_argument("--compile", action="store_true",
                    help="melbo mode: torch.compile the slice layers (compile time reported as seconds_compile)")
    ap.add_argument("--vocab", type=int, default=256, help="vocabulary of random-init models")
    ap.add_argument("--peak-sizes", type=int, nargs="+", default=None, help="matmul sizes for the peak")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("prompt_len", "n", "m", "k", "iters"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.k > args.prompt_len:
        ap.error(f"--k={args.k} exceeds --prompt-len={args.prompt_len}")
    return args


# ------------------------------------------------------------------------------ setup
def n_layers_of(name: str) -> int:
    spec = SHAPES[PACKAGED if name == PACKAGED else name.removesuffix("-random")]
    return spec.n_layers


def make_model(args: argparse.Namespace, dtype: torch.dtype, attn: str, device: torch.device) -> nn.Module:
    if args.model == PACKAGED:
        from melbo.models.loading import load_model

        model, _ = load_model(PACKAGED, dtype=dtype, device=device, attn_implementation=attn, progress=False)
        return model
    return build_model(
        args.model.removesuffix("-random"), n_layers=args.t, vocab_size=args.vocab,
        dtype=dtype, device=device, attn_implementation=attn, seed=args.seed,
    )


def random_prompts(model: nn.Module, args: argparse.Namespace, device: torch.device) -> PromptBatch:
    """``n`` prompts of random token ids (ids ≥ 3 avoid pad/bos/eos), the bos first if any."""
    cfg = model.config
    vocab = int(getattr(cfg, "vocab_size", args.vocab))
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, min(vocab, 32000), (args.n, args.prompt_len), generator=g)
    bos = getattr(cfg, "bos_token_id", None)
    if isinstance(bos, int):
        ids[:, 0] = bos
    T = args.prompt_len
    pos = resolve_positions(args.k, [T] * args.n, [0] * args.n)
    batch = PromptBatch(ids, torch.ones_like(ids), pos, tuple("random" for _ in range(args.n)), "none")
    return batch.to(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------ phases
def timed(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


def calibrate(delta: CausalMap, args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> float:
    if args.R is not None:
        out.update(seconds_calibration=0.0, R=args.R, calibration="given")
        return float(args.R)
    t0 = timed(device)
    try:
        cal = calibrate_R(delta, 0.5, n_cal=30, random_state=args.seed)
        R, note = cal.R, f"E(R)={cal.error:.4g}, {cal.n_evals} evaluations"
    except CalibrationError as err:  # e.g. a random-init slice that never gets non-linear enough
        x = getattr(getattr(delta, "slice", None), "x", None)
        R = float(x.float().norm(dim=-1).mean()) if isinstance(x, Tensor) else 1.0
        note = f"failed ({str(err)[:200]}); R = mean residual norm"
    out.update(seconds_calibration=timed(device) - t0, R=R, calibration=note)
    return R


def init_flops(per_seq: Any, args: argparse.Namespace, d: int, d_proj: int = 32) -> float:
    """FLOPs of :func:`melbo.fit.init.initial_factors` (Δ calls only)."""
    n, m = args.n, args.m
    if args.init == "random":
        return 0.0
    if args.init == "backward":
        return float(per_seq.vjp * n * m)
    k = min(m, d_proj, d)
    return float(per_seq.vjp * n * (d_proj + max(0, m - k)) + per_seq.forward * n * m)


def iterate(
    delta: CausalMap, U: Tensor, V: Tensor, R: float, iters: int, device: torch.device
) -> tuple[list[float], list[float], Tensor, Tensor]:
    """``iters`` OGI iterations (QR + ogi_step) timed one by one; first G_U and new V."""
    seconds: list[float] = []
    objective: list[float] = []
    first: tuple[Tensor, Tensor] | None = None
    for _ in range(iters):
        t0 = timed(device)
        step = ogi_step(delta, U, qr_columns(V), R)
        seconds.append(timed(device) - t0)
        objective.append(step.objective)
        if first is None:
            first = (step.value, step.V)
        U, V = step.U, step.V
    assert first is not None
    return seconds, objective, first[0], first[1]


def summarise(out: dict[str, Any], seconds: list[float], flops: float, peak: float, device: torch.device) -> None:
    per_iter = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    out.update(
        seconds_iters=seconds,
        seconds_first_iter=seconds[0],
        seconds_per_iter=per_iter,
        flops_per_iter=flops,
        achieved_flops=flops / per_iter,
        peak_flops=peak,
        peak_fraction=flops / per_iter / peak,
        peak_memory_bytes=peak_memory_bytes(device),
    )


def run_melbo(args: argparse.Namespace, device: torch.device, peak: float) -> tuple[dict[str, Any], Any]:
    dtype = DTYPES[args.dtype]
    out: dict[str, Any] = {"dtype": args.dtype, "attn": args.attn}
    free(device)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    model = make_model(args, dtype, args.attn, device)
    out["seconds_load"] = time.perf_counter() - t0
    shape = LayerShape.from_model(model)
    out["layer_shape"] = asdict(shape)
    batch = random_prompts(model, args, device)
    budget = int(args.memory_budget_gib * 1024**3) if args.memory_budget_gib else None
    t0 = timed(device)
    cmap = TransformerCausalMap(model, batch, args.s, args.t, memory_budget=budget, chunk_size=args.chunk_size,
                                compile=args.compile, last_layer_targets_only=args.last_layer_mlp == "targets")
    out["seconds_setup"] = timed(device) - t0
    out["chunk_size"] = cmap.chunk_size or max(1, cmap.memory_budget // max(1, cmap.bytes_per_factor(1)))
    out["compile"] = args.compile
    if args.compile:  # compile the forward and forward+backward graphs once, outside the timings
        t0 = timed(device)
        w = torch.nn.functional.normalize(torch.randn(cmap.d_model, min(args.m, out["chunk_size"]), device=device), dim=0)
        cmap.value_and_vjp(w, w)
        cmap.value(w)
        out["seconds_compile"] = timed(device) - t0
    R = calibrate(cmap, args, device, out)
    t0 = timed(device)
    U, V = initial_factors(cmap, args.m, args.init, R=R, generator=make_generator(args.seed))
    out["seconds_init"] = timed(device) - t0
    L, T, n, m = args.t - args.s, args.prompt_len, args.n, args.m
    q = args.k if args.last_layer_queries == "targets" else None
    # a compiled last layer runs whole (TransformerCausalMap's last_layer_targets_only)
    mlp_rows = args.k if args.last_layer_mlp == "targets" and not args.compile else None
    out["last_layer_mlp_rows"] = mlp_rows or T
    per_seq = slice_flops(shape, n_tokens=T, n_layers=L, n_sequences=1, last_layer_queries=q,
                          last_layer_mlp_rows=None if mlp_rows is None else min(mlp_rows, q or T))
    out["flops_init"] = init_flops(per_seq, args, cmap.d_model)
    out["achieved_flops_init"] = out["flops_init"] / out["seconds_init"] if out["seconds_init"] > 0 else None
    start = (R, U.clone(), V.clone())
    seconds, objective, GU, Vn = iterate(cmap, U, V, R, args.iters, device)
    out["objective"] = objective
    summarise(out, seconds, per_seq.vjp * m * n, peak, device)
    out["flops_forward_per_iter"] = per_seq.forward * m * n
    del cmap, model
    return out, (start, GU, Vn)


def run_vmap(
    args: argparse.Namespace, device: torch.device, peak: float, start: Any
) -> tuple[dict[str, Any], Tensor, Tensor]:
    out: dict[str, Any] = {"dtype": "float32", "attn": "eager"}
    free(device)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    model = make_model(args, torch.float32, "eager", device)
    out["seconds_load"] = time.perf_counter() - t0
    shape = LayerShape.from_model(model)
    out["layer_shape"] = asdict(shape)
    batch = random_prompts(model, args, device)
    budget = int(args.memory_budget_gib * 1024**3) if args.memory_budget_gib else None
    t0 = timed(device)
    cmap = TransformerCausalMap(model, batch, args.s, args.t, memory_budget=budget)
    # the reference keeps the 2 GiB CPU budget on every device: it has no out-of-memory fallback
    chunk = args.vmap_chunk or max(1, (budget or DEFAULT_MEMORY_BUDGET) // max(1, cmap.bytes_per_factor(1)))
    vm = VmapCausalMap.from_causal_map(cmap, chunk_size=chunk)
    out["seconds_setup"] = timed(device) - t0
    out["chunk_size"] = chunk
    R = calibrate(vm, args, device, out)
    t0 = timed(device)
    U, V = initial_factors(vm, args.m, args.init, R=R, generator=make_generator(args.seed))
    out["seconds_init"] = timed(device) - t0
    if start is not None:  # iterate from melbo's starting point, to compare the iterates
        R, U, V = start[0], start[1].to(vm.dtype), start[2].to(vm.dtype)
        out["iterations_start"] = "melbo's R, U, V"
    L, T, n, m = args.t - args.s, args.prompt_len, args.n, args.m
    per_seq = slice_flops(shape, n_tokens=T, n_layers=L, n_sequences=1)
    out["flops_init"] = init_flops(per_seq, args, vm.d_model)
    out["achieved_flops_init"] = out["flops_init"] / out["seconds_init"] if out["seconds_init"] > 0 else None
    seconds, objective, GU, Vn = iterate(vm, U, V, R, args.iters, device)
    out["objective"] = objective
    summarise(out, seconds, per_seq.vjp * m * n, peak, device)
    out["flops_forward_per_iter"] = per_seq.forward * m * n
    del vm, cmap, model
    return out, GU, Vn


def rel(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_layers = n_layers_of(args.model)
    args.s = n_layers // 3 if args.s is None else args.s
    args.t = 2 * n_layers // 3 if args.t is None else args.t
    if not 0 <= args.s < args.t <= n_layers:
        raise SystemExit(f"need 0 <= s < t <= {n_layers} for {args.model}, got s={args.s}, t={args.t}")

    sizes = tuple(args.peak_sizes) if args.peak_sizes else None
    peaks: dict[str, float] = {}
    peak_detail: dict[str, dict[int, float]] = {}
    for name in {args.dtype if args.mode != "vmap" else "float32", *(["float32"] if args.mode != "melbo" else [])}:
        p = measure_matmul_peak(DTYPES[name], device, sizes)
        peaks[name], peak_detail[name] = p.flops, p.by_size

    result: dict[str, Any] = {
        "benchmark": "ogi_speed",
        "model": args.model,
        "weights": "packaged" if args.model == PACKAGED else "random-init",
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": {k: v for k, v in vars(args).items()},
        "flop_formula": "matmul FLOPs (2 per multiply-add); per iteration: m*n sequences through layers "
        "s..t-1, forward + input-gradient backward = 2*linear + 3*attention (bench/_perf.py)",
        "peak_flops_by_dtype": peaks,
        "peak_flops_by_size": peak_detail,
    }
    start = None
    if args.mode in ("melbo", "both"):
        result["melbo"], (start, GU, Vn) = run_melbo(args, device, peaks[args.dtype])
    if args.mode in ("vmap", "both"):
        result["vmap"], GU_ref, Vn_ref = run_vmap(args, device, peaks["float32"], start)
    main_mode = result["melbo"] if "melbo" in result else result["vmap"]
    for key in ("layer_shape", "seconds_per_iter", "achieved_flops", "peak_flops", "peak_fraction"):
        result[key] = main_mode[key]
    if args.mode == "both":
        result["ratio_vs_vmap"] = result["vmap"]["seconds_per_iter"] / result["melbo"]["seconds_per_iter"]
        result["ratio_vs_vmap_init"] = result["vmap"]["seconds_init"] / max(result["melbo"]["seconds_init"], 1e-12)
        if args.R is None:
            result["ratio_vs_vmap_calibration"] = (
                result["vmap"]["seconds_calibration"] / max(result["melbo"]["seconds_calibration"], 1e-12)
            )
        result["agreement"] = {
            "first_iter_G_U_rel_diff": rel(GU, GU_ref),
            "first_iter_V_rel_diff": rel(Vn, Vn_ref),
        }
    if device.type == "cpu":
        result["note"] = "CPU timings are noisy when other processes share the cores"
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()
