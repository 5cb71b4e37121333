"""bench/_perf.py (bench-only helpers of bench/ogi_speed.py): its FLOP count against torch's
own FLOP counter, and its publication-style vmap reference against melbo's batched Δ."""

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model
from torch.utils.flop_counter import FlopCounterMode

from melbo.maps.transformer import TransformerCausalMap
from melbo.prompts import PromptBatch, resolve_positions

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def perf() -> Iterator[Any]:
    sys.path.insert(0, str(BENCH))
    try:
        import _perf

        yield _perf
    finally:
        sys.path.remove(str(BENCH))


def test_slice_flops_match_torch_flop_counter(perf: Any) -> None:
    """A whole forward pass of a tiny Llama costs, in torch's count, exactly the layers' FLOPs
    from bench/_perf.py plus the unembedding (2·d·V per token)."""
    model = tiny_model("llama", attn="eager")
    cfg = model.config
    n, T = 2, 6
    ids = torch.randint(3, 90, (n, T), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids)
    shape = perf.LayerShape.from_model(model)
    layers = perf.slice_flops(shape, n_tokens=T, n_layers=cfg.num_hidden_layers, n_sequences=n).forward
    assert counter.get_total_flops() == layers + n * T * 2 * cfg.hidden_size * cfg.vocab_size


def test_vmap_reference_agrees_with_transformer_causal_map(perf: Any) -> None:
    model = tiny_model("llama", dtype=torch.float64, attn="eager")
    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(1))
    batch = PromptBatch(ids, torch.ones_like(ids), resolve_positions(3, [7, 7], [0, 0]), ("a", "b"), "none")
    cmap = TransformerCausalMap(model, batch, 1, 3)
    ref = perf.VmapCausalMap.from_causal_map(cmap, chunk_size=2)
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(cmap.d_model, 3, generator=g, dtype=torch.float64)
    U = torch.randn(cmap.d_model, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ref.value(theta), cmap.value(theta))
    torch.testing.assert_close(ref.vjp(theta, U), cmap.vjp(theta, U))
    torch.testing.assert_close(ref.jvp0(theta), cmap.jvp0(theta))


@pytest.mark.parametrize("targets_only", [True, False])
def test_slice_flops_count_what_the_causal_map_computes(perf: Any, targets_only: bool) -> None:
    """torch's FLOP counter on Δ and its VJP (m factors × n prompts through layers 1-2) equals
    the count with the last layer's MLP at the k target positions (or at all T)."""
    model = tiny_model("llama", attn="eager")
    n, T, k, m = 2, 7, 3, 3
    ids = torch.randint(3, 90, (n, T), generator=torch.Generator().manual_seed(1))
    batch = PromptBatch(ids, torch.ones_like(ids), resolve_positions(k, [T] * n, [0] * n), ("a", "b"), "none")
    cmap = TransformerCausalMap(model, batch, 1, 3, last_layer_targets_only=targets_only)
    theta = torch.randn(cmap.d_model, m, generator=torch.Generator().manual_seed(2))
    shape = perf.LayerShape.from_model(model)
    want = perf.slice_flops(shape, n_tokens=T, n_layers=2, n_sequences=m * n,
                            last_layer_mlp_rows=k if targets_only else None)
    counter = FlopCounterMode(display=False)
    with counter:
        cmap.value(theta)
    assert counter.get_total_flops() == want.forward
    counter = FlopCounterMode(display=False)
    with counter:
        cmap.value_and_vjp(theta, theta)
    assert counter.get_total_flops() == want.vjp  # forward + input-gradient backward
