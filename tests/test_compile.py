"""``compile=True`` runs the slice through torch.compile: same Δ and VJP as eager, no weight
gradients, the model untouched."""

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from melbo.jobs.train import TrainConfig
from melbo.maps.transformer import TransformerCausalMap
from melbo.prompts import PromptBatch, resolve_positions


def _batch() -> PromptBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (2, 7), generator=g)
    return PromptBatch(ids, torch.ones_like(ids), resolve_positions(3, [7, 7], [0, 0]), ("a", "b"), "none")


# aot_eager traces and differentiates the layers as inductor does (functional_call with
# detached parameters, dynamic shapes, the grad-mode guard) without generating C++; the
# inductor run takes ~1 min on 2 cores and is in the slow suite.
@pytest.mark.parametrize(
    ("family", "backend"),
    [("llama", "aot_eager"), ("gemma3", "aot_eager"), pytest.param("gemma3", True, marks=pytest.mark.slow)],
)
def test_compiled_slice_matches_eager_and_leaves_the_model_alone(family: str, backend: bool | str, tmp_path: Path) -> None:
    model = tiny_model(family, dtype=torch.float32, attn="sdpa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model.modules())
    eager = TransformerCausalMap(model, _batch(), 1, 3)
    comp = TransformerCausalMap(model, _batch(), 1, 3, compile=backend, compile_cache=tmp_path)  # not the user's cache
    assert comp.describe()["compiled"] and not eager.describe()["compiled"]
    g = torch.Generator().manual_seed(1)
    V = torch.nn.functional.normalize(torch.randn(eager.d_model, 5, generator=g), dim=0) * 2.0
    U = torch.nn.functional.normalize(torch.randn(eager.d_model, 5, generator=g), dim=0)
    d0, g0 = eager.value_and_vjp(V, U)
    for chunk in (None, 2):  # one chunk, then chunks of 2 + a remainder of 1 (new shapes)
        comp.chunk_size = chunk
        d1, g1 = comp.value_and_vjp(V, U)
        torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(comp.value(V), d0, rtol=1e-4, atol=1e-5)
    # higher-order primitives (create_graph) bypass the compiled layers: a compiled backward
    # donates its buffers and cannot be differentiated again (RuntimeError on CUDA)
    torch.testing.assert_close(comp.jvp0(V), eager.jvp0(V), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp.hvv0(V), eager.hvv0(V), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp.uhv0(U, V), eager.uhv0(U, V), rtol=1e-4, atol=1e-5)
    # parameters require grad, yet none was computed or accumulated
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert list(model.modules()) == modules
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_compile_must_be_a_bool() -> None:
    model = tiny_model("llama", dtype=torch.float32)
    with pytest.raises(ValueError, match="compile='yes': not a torch.compile backend; valid: .*inductor"):
        TransformerCausalMap(model, _batch(), 1, 3, compile="yes")
    with pytest.raises(ValueError, match="compile=3"):
        TransformerCausalMap(model, _batch(), 1, 3, compile=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile=1"):
        TrainConfig(source_layer=1, target_layer=3, compile=1).validate()  # type: ignore[arg-type]
