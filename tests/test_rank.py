"""Readout ranking against the model's own logits."""

from typing import Any

import pytest
import torch
import transformers as tf
from tiny_models import tiny_model

from melbo.evaluate.rank import rank_by_alpha, readout_scores, resolve_token
from melbo.models.access import get_layer_access
from melbo.prompts import build_prompts
from melbo.testing import tiny_tokenizer


def _model(family: str, vocab: int) -> Any:
    """A tiny model whose head does more than ``W_U · norm(h)``: soft-capping or a bias."""
    if family == "gptj":  # an lm_head with a bias (zero at init: randomise it)
        cfg = tf.GPTJConfig(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, rotary_dim=4, n_positions=1024,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            model.lm_head.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
        return model
    model = tiny_model(family, vocab=vocab)
    # a cap of the order of the logits, so that tanh bends them (the forward reads the config)
    model.config.final_logit_softcapping = 0.05
    return model


def _full_model_change(model: Any, access: Any, batch: Any, V: torch.Tensor, R: float, ia: int, ib: int) -> torch.Tensor:
    """Per feature, mean change in ``model(...).logits[:, -1, A] − [..., B]`` under steering."""
    want = []
    with torch.no_grad():
        base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
    for ell in range(V.shape[1]):
        def hook(mod, args, kwargs, v=V[:, ell]):  # type: ignore[no-untyped-def]
            return (args[0] + R * v,) + args[1:], kwargs
        h = access.layers[1].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                steered = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
        finally:
            h.remove()
        want.append(((steered[:, ia] - steered[:, ib]) - (base[:, ia] - base[:, ib])).mean())
    return torch.stack(want)


def _raw_readout(model: Any, access: Any, batch: Any, V: torch.Tensor, R: float, ia: int, ib: int) -> torch.Tensor:
    """The former readout: ⟨norm(h), W_U[A] − W_U[B]⟩ (no bias, no soft-capping), for contrast."""
    W = access.unembed.weight
    w = W[ia] - W[ib]

    def last_norm(extra: torch.Tensor | None) -> torch.Tensor:
        def hook(mod, args, kwargs):  # type: ignore[no-untyped-def]
            return (args[0] + R * extra,) + args[1:], kwargs
        hs = [access.layers[1].register_forward_pre_hook(hook, with_kwargs=True)] if extra is not None else []
        try:
            with torch.no_grad():
                out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        finally:
            for h in hs:
                h.remove()
        return out.hidden_states[-1][:, -1]  # transformers applies the final norm to the last entry

    base = last_norm(None) @ w
    return torch.stack([(last_norm(V[:, ell]) @ w - base).mean() for ell in range(V.shape[1])])


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "gptj"])
def test_readout_score_equals_logit_difference_change_from_full_model(family: str) -> None:
    tok = tiny_tokenizer()
    model = _model(family, len(tok))
    access = get_layer_access(model)
    prompts = ["a b c", "the quick brown fox"]
    a, b = "a", "b"
    ia, ib = resolve_token(tok, a), resolve_token(tok, b)
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(access.d_model, 3, generator=g), dim=0)
    R = 2.0
    scores = readout_scores(model, tok, prompts, V, R=R, source_layer=1, token_a=a, token_b=b, access=access)
    batch = build_prompts(tok, prompts)
    want = _full_model_change(model, access, batch, V, R, ia, ib).to(scores.dtype)
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-4)
    if family != "gptj":  # a bias cancels in a change of a difference; soft-capping does not
        raw = _raw_readout(model, access, batch, V, R, ia, ib).to(scores.dtype)
        assert (raw - want).abs().max() > 1e-2, "the test cannot tell the raw readout from the model's"


def test_rank_by_alpha_orders_by_square() -> None:
    assert rank_by_alpha(torch.tensor([0.5, -3.0, 2.0])).tolist() == [1, 2, 0]
