"""The main job behind ``melbo demo`` (grows with each milestone)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from melbo.builtin_prompts import DEMO_PROMPTS
from melbo.causal_map import TransformerCausalMap
from melbo.models.access import get_layer_access

logger = logging.getLogger(__name__)


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


def run_demo(
    model: str = "gemma-3-270m",
    *,
    source_layer: int = 4,
    target_layer: int = 10,
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    from melbo.models.loading import load_model

    t0 = time.perf_counter()
    mdl, tok = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    load_s = time.perf_counter() - t0
    access = get_layer_access(mdl)
    t0 = time.perf_counter()
    delta = TransformerCausalMap(mdl, list(DEMO_PROMPTS), source_layer, target_layer, tokenizer=tok, chat=True, access=access)
    capture_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    radii = (1.0, 4.0, 16.0, 64.0, 256.0)
    evaluation = evaluate_delta(delta, radii)
    return {
        "layer_map": access.describe(),
        "causal_map": delta.describe(),
        "load_seconds": load_s,
        "capture_seconds": capture_s,
        "eval_seconds": time.perf_counter() - t0,
        "evaluation": evaluation,
        "n_directions": 8,
    }
