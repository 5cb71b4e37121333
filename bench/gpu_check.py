"""The GPU check, ready to run in one call on a lent H100/H200. Writes one JSON.

    python bench/gpu_check.py                 # on the device: writes $OUT/gpu_check.json
    python bench/gpu_check.py --dry-run       # CPU, tiny shapes (the fast suite runs this)

Installs nothing: the device's image has torch and transformers; melbo runs from ``src/``
(``PYTHONPATH=src``) and ``$MELBO_CACHE`` defaults to a temporary directory, so melbo's
own optional dependencies are not needed. Three parts, each recorded with pass/fail:

1. **Correctness on the device** (tiny random-init Llama, Qwen2 and Gemma-3, fp32, two
   prompts of different lengths left-padded):
   * the slice is exact: the recorded target activations equal the model's own
     ``output_hidden_states`` at layer t, and Δ(θ) equals a full forward with θ added by a
     plain forward-pre-hook written here (independent of melbo's hooks), minus the clean run;
   * the primitives (value, vjp, jvp0, hvv0, uhv0) on the device in fp32 agree with the
     same model in fp64 on the CPU (relative error ≤ 1e-4; 1e-3 for the second-order ones);
   * bf16: Δ from the model cast to bf16, and from the fp32 model with
     ``compute_dtype="bfloat16"``, against fp64 (reported; ≤ 0.1 passes).
2. **The publication's job** on the Qwen1.5-7B layer shape (random init, 1 prompt × 27
   tokens, m = 512, s = 10, t = 20, calibration + init + 10 OGI iterations) in bf16, next
   to the vmap reference in the same process (``bench/ogi_speed.py --mode both``).
3. **Targets** (issue 13, for an H100): total ≤ 3 s, ≥ 10× the reference per iteration,
   ≥ 40 % of the bf16 matmul peak in the OGI loop — each reported as met or missed.

The dry run does the same on the CPU with one family and a two-layer Qwen2-0.5B shape,
m = 4, 2 iterations: it checks that the script runs, not the speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]  # melbo from the checkout; tiny configs
os.environ.setdefault("MELBO_CACHE", tempfile.mkdtemp(prefix="melbo-cache-"))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

FP32_TOL = 1e-4
SECOND_ORDER_TOL = 1e-3
BF16_TOL = 0.1
TARGETS = {"total_seconds_max": 3.0, "ratio_vs_vmap_min": 10.0, "peak_fraction_min": 0.40}
FULL_JOB = ["--model", "qwen1.5-7b", "--s", "10", "--t", "20", "--n", "1", "--prompt-len", "27",
            "--m", "512", "--iters", "10", "--dtype", "bfloat16", "--mode", "both"]
DRY_JOB = ["--model", "qwen2-0.5b", "--s", "1", "--t", "2", "--n", "1", "--prompt-len", "8",
           "--m", "4", "--iters", "2", "--dtype", "bfloat16", "--mode", "both", "--peak-sizes", "128"]


def rel(a: Tensor, b: Tensor) -> float:
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-300))


def padded_batch(vocab: int, device: torch.device) -> Any:
    """Two prompts of 7 and 5 tokens, left-padded; targets: the last 2 tokens of each."""
    from melbo.prompts import PromptBatch, resolve_positions

    g = torch.Generator().manual_seed(0)
    lens, T = (7, 5), 7
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, T - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, T - n:] = 1
    pos = resolve_positions(2, list(lens), [T - n for n in lens])
    return PromptBatch(ids, mask, pos, ("a", "b"), "none").to(device)


def hooked_hidden(model: nn.Module, layers: Any, batch: Any, s: int, t: int, theta: Tensor | None) -> Tensor:
    """hidden_states[t] of a full forward, θ added to the input of layer s by a plain hook."""
    handle = None
    if theta is not None:
        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (args[0] + theta.to(args[0].dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + theta.to(kwargs["hidden_states"].dtype)}
        handle = layers[s].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        pos_ids = (batch.attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        with torch.no_grad():
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=pos_ids, output_hidden_states=True, use_cache=False)
    finally:
        if handle is not None:
            handle.remove()
    return out.hidden_states[t]


def check_family(family: str, device: torch.device) -> dict[str, Any]:
    from tiny_models import tiny_model

    from melbo.maps.transformer import TransformerCausalMap

    s, t, m = 1, 3, 4
    attn = "sdpa"  # eager attention in fp64 turns left-padded rows into NaN (transformers)
    base = tiny_model(family, attn=attn)  # fp32 weights; the fp64 and bf16 models are casts of them
    model64 = copy.deepcopy(base).double()
    model32 = base.to(device)
    vocab = int(model32.config.vocab_size)
    batch = padded_batch(vocab, device)
    d32 = TransformerCausalMap(model32, batch, s, t)
    d64 = TransformerCausalMap(model64, batch.to("cpu"), s, t)
    res: dict[str, Any] = {"family": family, "attn": attn}

    # 1a. the slice is exact against the model's own hidden states
    layers = d32.access.layers
    clean = hooked_hidden(model32, layers, batch, s, t, None)
    mask = batch.attention_mask.bool()
    res["slice_y_vs_hidden_states"] = rel(d32.slice.y[mask], clean[mask])
    d = d32.d_model
    g = torch.Generator().manual_seed(1)
    R = float(d32.slice.x[mask].float().norm(dim=-1).mean()) * 0.5
    V = torch.randn(d, m, generator=g, dtype=torch.float64)
    V = V / V.norm(dim=0)
    U = torch.randn(d, m, generator=g, dtype=torch.float64)
    U = U / U.norm(dim=0)
    theta0 = (R * V[:, 0]).float().to(device)
    steered = hooked_hidden(model32, layers, batch, s, t, theta0)
    rows = torch.arange(2, device=device)[:, None].expand_as(batch.positions)
    truth = (steered[rows, batch.positions] - clean[rows, batch.positions]).mean(dim=(0, 1))
    res["delta_vs_hooked_forward"] = rel(d32.value((R * V[:, :1]).float().to(device))[:, 0], truth)

    # 1b. primitives, device fp32 against CPU fp64
    def on32(x: Tensor) -> Tensor:
        return x.to(device=device, dtype=d32.dtype)

    val32, vjp32 = d32.value_and_vjp(on32(R * V), on32(U))
    val64, vjp64 = d64.value_and_vjp(R * V, U)
    res["value"] = rel(val32, val64)
    res["vjp"] = rel(vjp32, vjp64)
    res["jvp0"] = rel(d32.jvp0(on32(V)), d64.jvp0(V))
    res["hvv0"] = rel(d32.hvv0(on32(V)), d64.hvv0(V))
    res["uhv0"] = rel(d32.uhv0(on32(U), on32(V)), d64.uhv0(U, V))

    # 1c. bf16: the model cast, and fp32 weights with bf16 matmuls
    dbf = TransformerCausalMap(copy.deepcopy(model32).to(torch.bfloat16), batch, s, t)
    res["bf16_model_value"] = rel(dbf.value(on32(R * V)), val64)
    dac = TransformerCausalMap(model32, batch, s, t, compute_dtype="bfloat16")
    res["bf16_compute_value"] = rel(dac.value(on32(R * V)), val64)

    first = ("slice_y_vs_hidden_states", "delta_vs_hooked_forward", "value", "vjp", "jvp0")
    res["passed"] = bool(
        all(res[k] <= FP32_TOL for k in first)
        and all(res[k] <= SECOND_ORDER_TOL for k in ("hvv0", "uhv0"))
        and all(res[k] <= BF16_TOL for k in ("bf16_model_value", "bf16_compute_value"))
    )
    return res


def run_job(argv: list[str], device: str) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "ogi_speed.py"), *argv, "--device", device]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out: dict[str, Any] = {"command": " ".join(["python", "bench/ogi_speed.py", *argv]), "wall_seconds": time.perf_counter() - t0}
    if proc.returncode != 0:
        out["error"] = proc.stderr[-4000:]
        return out
    out["result"] = json.loads(proc.stdout)
    return out


def targets(job: dict[str, Any]) -> dict[str, Any]:
    r = job.get("result")
    if not r:
        return {"evaluated": False}
    mel = r["melbo"]
    total = float(mel["seconds_calibration"] + mel["seconds_init"] + sum(mel["seconds_iters"]))
    ratio = float(r.get("ratio_vs_vmap", 0.0))
    peak = float(mel["peak_fraction"])
    return {
        "evaluated": True,
        "total_seconds": total,
        "ratio_vs_vmap": ratio,
        "peak_fraction": peak,
        "R": mel.get("R"),
        "met": {
            "total_seconds": total <= TARGETS["total_seconds_max"],
            "ratio_vs_vmap": ratio >= TARGETS["ratio_vs_vmap_min"],
            "peak_fraction": peak >= TARGETS["peak_fraction_min"],
        },
        "targets": TARGETS,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: check the script runs")
    ap.add_argument("--out", default=None, help="output JSON (default: $OUT/gpu_check.json, else stdout only)")
    ap.add_argument("--skip-job", action="store_true", help="correctness only")
    args = ap.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        ap.error("no CUDA device: run on a lent GPU, or pass --dry-run")
    import transformers

    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "dry_run": args.dry_run,
    }
    t0 = time.perf_counter()
    families = ("llama",) if args.dry_run else ("llama", "qwen2", "gemma3")
    report["correctness"] = []
    for fam in families:
        try:
            report["correctness"].append(check_family(fam, device))
        except Exception as err:  # recorded, and the rest still runs
            report["correctness"].append({"family": fam, "passed": False, "error": f"{type(err).__name__}: {err}"})
    report["seconds_correctness"] = time.perf_counter() - t0
    if not args.skip_job:
        job = run_job(DRY_JOB if args.dry_run else FULL_JOB, device.type)
        report["job"] = job
        report["targets"] = targets(job)
    report["passed"] = all(c.get("passed") for c in report["correctness"]) and "error" not in report.get("job", {})
    text = json.dumps(report, indent=2)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(text)
    print(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
