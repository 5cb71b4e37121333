"""The main job behind ``melbo demo``: on the packaged Gemma-3-270M (or any model),
calibrate R, fit an exponential DCT on a small built-in prompt set, rank the features by
their jailbreak score (logit "Sure" − logit "Sorry"), show the top features' steered
completions on held-out prompts and write a self-contained HTML report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from melbo.builtin_prompts import DEMO_PROMPTS, HELDOUT_PROMPTS
from melbo.causal_map import TransformerCausalMap
from melbo.models.access import get_layer_access

logger = logging.getLogger(__name__)

DEMO_MARKER = ".melbo-demo"


def evaluate_delta(delta: TransformerCausalMap, radii: tuple[float, ...], n_directions: int = 8, seed: int = 0) -> list[dict[str, float]]:
    """‖Δ(R v)‖, ‖R J(0) v‖ and the non-linear share E(R) over random unit directions."""
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(delta.d_model, n_directions, generator=g, dtype=delta.dtype).to(delta.device)
    V = V / V.norm(dim=0)
    JV = delta.jvp0(V)  # (d, n)
    rows = []
    for R in radii:
        D = delta.value(R * V)
        lin = R * JV
        E = torch.sqrt(((D - lin).norm(dim=0) ** 2 / lin.norm(dim=0) ** 2).mean())
        rows.append({"R": R, "delta_norm": float(D.norm(dim=0).mean()), "linear_norm": float(lin.norm(dim=0).mean()), "E": float(E)})
    return rows


def _check_outputs(out: Path, report: Path, force: bool) -> None:
    """Never overwrite something the user made: only a previous demo's outputs."""
    if out.exists() and any(out.iterdir()) and not (out / DEMO_MARKER).exists() and not force:
        raise FileExistsError(f"{str(out)!r} is not empty and was not written by melbo demo; choose another --out or pass --force")
    if report.exists() and not force:
        head = report.read_text(encoding="utf-8", errors="replace")[:4000]
        if 'name="generator" content="melbo' not in head:
            raise FileExistsError(f"{str(report)!r} exists and is not a melbo report; choose another -o or pass --force")


def run_demo(
    model: str = "gemma-3-270m",
    *,
    source_layer: int = 4,
    target_layer: int = 10,
    n_factors: int = 64,
    iters: int = 8,
    top_k: int = 4,
    max_new_tokens: int = 24,
    out: str | Path = "melbo-demo",
    report: str | Path = "report.html",
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    force: bool = False,
    progress: bool = True,
    token_a: str = "Sure",
    token_b: str = "Sorry",
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run the demo; ``say`` receives the human-readable progress lines."""
    from melbo.models.loading import load_model
    from melbo.report.html import compute_report_data, write_report
    from melbo.train import TrainConfig, train

    out, report = Path(out), Path(report)
    _check_outputs(out, report, force)
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    mdl, tok = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    load_s = time.perf_counter() - t0
    access = get_layer_access(mdl)
    say("Layer map\n" + "\n".join(f"  {k:>12}: {v}" for k, v in access.describe().items()))

    delta = TransformerCausalMap(mdl, list(DEMO_PROMPTS), source_layer, target_layer, tokenizer=tok, chat=True, access=access)
    evaluation = evaluate_delta(delta, (1.0, 4.0, 16.0, 64.0))
    say(f"\nCausal map Δ: {json.dumps(delta.describe())}\n  R      mean ‖Δ(Rv)‖  mean ‖R·J(0)v‖  E(R)")
    for row in evaluation:
        say(f"  {row['R']:<6.3g} {row['delta_norm']:<13.4g} {row['linear_norm']:<15.4g} {row['E']:.3f}")

    say(f"\nFitting {n_factors} exponential DCT features ({iters} OGI iterations) on {len(DEMO_PROMPTS)} built-in prompts…")
    t0 = time.perf_counter()
    cfg = TrainConfig(source_layer=source_layer, target_layer=target_layer, n_factors=n_factors, iters=iters, chat=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by melbo demo\n")
    feats = train(mdl, tok, list(DEMO_PROMPTS), cfg, out, force=True, progress=progress)
    fit_s = time.perf_counter() - t0
    say(f"  R = {feats.R:.4g} (calibrated: E(R) = 0.5), objective {feats.objective[0]:.4g} → {feats.objective[-1]:.4g}  [{fit_s:.0f} s]")

    say(f"\nScoring every feature (logit {token_a!r} − logit {token_b!r}, first generated token) and generating {top_k} features × {len(HELDOUT_PROMPTS)} held-out prompts…")
    t0 = time.perf_counter()
    data = compute_report_data(
        mdl, tok, feats, prompts=list(DEMO_PROMPTS), heldout=list(HELDOUT_PROMPTS), top_k=top_k, max_new_tokens=max_new_tokens,
        token_a=token_a, token_b=token_b,
    )
    path = write_report(
        feats, report, scores=data.scores, completions=data.completions, unsteered_score=data.unsteered_score, top_k=top_k,
        title=f"melbo demo — {feats.n_factors} exponential DCT features of {model}",
    )
    report_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "layer_map": access.describe(), "causal_map": delta.describe(), "evaluation": evaluation,
        "load_seconds": load_s, "fit_seconds": fit_s, "report_seconds": report_s,
        "total_seconds": time.perf_counter() - t_start, "features_dir": str(out), "report": str(path), "R": feats.R,
    }
    if data.completions is not None:
        comp = data.completions
        say(f"\nUnsteered mean score: {data.unsteered_score:.3g}" if data.unsteered_score is not None else "")
        for k, texts in comp.steered.items():
            score = data.scores[k] if data.scores else float("nan")
            say(f"\n── feature {k}  (score {score:+.3g}, α {float(feats.alpha[k]):.3g})")
            for p, base, steered in zip(comp.prompts[:2], comp.unsteered[:2], texts[:2]):
                say(f"  prompt    : {p}\n  unsteered : {base.strip()[:160]!r}\n  steered   : {steered.strip()[:160]!r}")
        result["top_features"] = list(comp.steered)
    say(f"\nFeatures: {out}/  Report: {path}  (total {result['total_seconds']:.0f} s)")
    return result
