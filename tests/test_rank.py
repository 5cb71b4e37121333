"""Readout ranking against the model's own logits."""

import torch
from tiny_models import tiny_model

from melbo.models.access import get_layer_access
from melbo.prompts import build_prompts
from melbo.rank import rank_by_alpha, readout_scores, resolve_token
from melbo.testing import tiny_tokenizer


def test_readout_score_equals_logit_difference_change_from_full_model() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gemma3", vocab=len(tok))
    access = get_layer_access(model)
    prompts = ["a b c", "the quick brown fox"]
    a, b = "a", "b"
    ia, ib = resolve_token(tok, a), resolve_token(tok, b)
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(access.d_model, 3, generator=g), dim=0)
    R = 2.0
    scores = readout_scores(model, tok, prompts, V, R=R, source_layer=1, token_a=a, token_b=b, access=access)
    batch = build_prompts(tok, prompts)
    want = []
    for ell in range(3):
        def hook(mod, args, kwargs, v=V[:, ell]):  # type: ignore[no-untyped-def]
            return (args[0] + R * v,) + args[1:], kwargs
        with torch.no_grad():
            base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
            h = access.layers[1].register_forward_pre_hook(hook, with_kwargs=True)
            try:
                steered = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
            finally:
                h.remove()
        diff = (steered[:, ia] - steered[:, ib]) - (base[:, ia] - base[:, ib])
        want.append(diff.mean())
    torch.testing.assert_close(scores, torch.stack(want).to(scores.dtype), rtol=1e-4, atol=1e-4)


def test_rank_by_alpha_orders_by_square() -> None:
    assert rank_by_alpha(torch.tensor([0.5, -3.0, 2.0])).tolist() == [1, 2, 0]
