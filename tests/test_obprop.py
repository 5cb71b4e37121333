"""Observable propagation (melbo.baselines.obprop): gradients against the model's own full
logits under autograd and against central finite differences of the score; the coupling
coefficient's defining properties."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import tiny_model
from torch import Tensor, nn

from melbo.baselines.obprop import (
    ObservablePropagation,
    cosine_similarity,
    coupling_coefficient,
    linear_readout,
    observable_direction,
    observable_gradients,
)
from melbo.evaluate.scores import jailbreak_score, steered_scores
from melbo.maps.synthetic import SyntheticMap
from melbo.maps.transformer import TransformerCausalMap
from melbo.methods import make_estimator
from melbo.steering.interventions import steer

A, B = "Sure", "I"  # single tokens of the tiny tokenizer ("Sorry" is not)
S = 1
PROMPTS = ["hello there", "write a poem about cats and dogs", "tea?"]


@pytest.fixture(scope="module")
def llama64(tok: Any) -> nn.Module:
    """float64 Llama (finite differences need the precision). Eager attention in float64 puts
    NaN at fully padded rows, so its scores are read one prompt at a time (batch_size=1)."""
    return tiny_model("llama", vocab=len(tok), dtype=torch.float64)


def _own_gradient(model: nn.Module, tok: Any, prompt: str, a: int, b: int) -> Tensor:
    """d(logits[-1, a] − logits[-1, b]) / dv for v added to every position entering layers[S],
    from the model's full forward on the unpadded prompt and a hook written here."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    v = torch.zeros(model.config.hidden_size, dtype=next(model.parameters()).dtype, requires_grad=True)

    def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (args[0] + v.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + v.to(kwargs["hidden_states"].dtype)}

    h = model.model.layers[S].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        logits = model(input_ids=ids).logits[0, -1]
        (g,) = torch.autograd.grad(logits[a] - logits[b], v)
    finally:
        h.remove()
    return g


@pytest.mark.parametrize("family,dtype,tol", [("gemma3", torch.float32, 1e-4), ("llama", torch.float64, 1e-5)])
def test_gradient_equals_autograd_of_the_models_own_logits(tok: Any, family: str, dtype: torch.dtype, tol: float) -> None:
    model = tiny_model(family, vocab=len(tok), dtype=dtype)
    ia, ib = tok.convert_tokens_to_ids(A), tok.convert_tokens_to_ids(B)
    got = observable_gradients(model, tok, PROMPTS, layer=S, token_a=A, token_b=B, batch_size=2)  # padded batches
    assert got.shape == (len(PROMPTS), model.config.hidden_size)
    for i, p in enumerate(PROMPTS):
        torch.testing.assert_close(got[i], _own_gradient(model, tok, p, ia, ib), rtol=tol, atol=tol)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_matches_central_finite_differences_of_the_score(tok: Any, llama64: nn.Module) -> None:
    g = observable_gradients(llama64, tok, PROMPTS, layer=S, token_a=A, token_b=B)
    gen = torch.Generator().manual_seed(0)
    eps = 1e-5
    for _ in range(3):
        u = torch.randn(llama64.config.hidden_size, generator=gen, dtype=torch.float64)
        with steer(llama64, eps * u, layer=S):
            up = jailbreak_score(llama64, tok, PROMPTS, token_a=A, token_b=B, batch_size=1)
        with steer(llama64, -eps * u, layer=S):
            down = jailbreak_score(llama64, tok, PROMPTS, token_a=A, token_b=B, batch_size=1)
        fd = (up.double() - down.double()) / (2 * eps)
        # jailbreak_score returns float32, so the difference quotient carries ~1e-7/eps of rounding
        torch.testing.assert_close(fd, g @ u, rtol=1e-3, atol=5e-2)


def test_linear_readout_is_the_first_order_change_of_the_exact_score(tok: Any, llama64: nn.Module) -> None:
    y = observable_direction(llama64, tok, PROMPTS, layer=S, token_a=A, token_b=B).V[:, 0]
    gen = torch.Generator().manual_seed(1)
    V = torch.linalg.qr(torch.randn(llama64.config.hidden_size, 5, generator=gen, dtype=torch.float64)).Q
    grads = observable_gradients(llama64, tok, PROMPTS, layer=S, token_a=A, token_b=B)
    yv = grads.mean(0)
    R = 1e-3  # the second-order term is ~10 % of the first at 1e-2 on this model
    base = jailbreak_score(llama64, tok, PROMPTS, token_a=A, token_b=B, batch_size=1).double().mean()
    exact = steered_scores(llama64, tok, PROMPTS, R * V, layer=S, token_a=A, token_b=B, batch_size=1).double().mean(1) - base
    torch.testing.assert_close(linear_readout(V, yv, R), exact, rtol=0.05, atol=5e-5)
    torch.testing.assert_close(y, yv / yv.norm())


def test_estimator_from_the_registry_equals_the_function(tok: Any, llama: nn.Module) -> None:
    delta = TransformerCausalMap(llama, PROMPTS, S, 3, tokenizer=tok, chat=True)
    est = make_estimator("obprop", token_a=A, token_b=B, R=2.0).fit(delta)
    ref = observable_direction(llama, tok, PROMPTS, layer=S, token_a=A, token_b=B, R=2.0, delta=delta)
    assert est.U_ is None and est.V_.shape == (llama.config.hidden_size, 1) and est.R_ == 2.0
    torch.testing.assert_close(est.V_, ref.V)
    torch.testing.assert_close(est.alpha_, ref.alpha)
    feats = est.to_features()
    assert feats.method == "obprop" and feats.U is None
    torch.testing.assert_close(est.V_[:, 0].cpu() * est.scores_[0], observable_gradients(
        llama, tok, PROMPTS, layer=S, token_a=A, token_b=B).mean(0))
    with pytest.deprecated_call(match=r"use V_\[:, 0\] \* scores_\[0\]"):  # the old name, with a warning
        torch.testing.assert_close(est.feature_vector_, est.V_[:, 0].cpu() * est.scores_[0])


def test_errors_name_the_bad_value(tok: Any, llama64: nn.Module) -> None:
    with pytest.raises(ValueError, match="not one"):
        observable_gradients(llama64, tok, PROMPTS, layer=S, token_a="Sorry", token_b=B)
    with pytest.raises(ValueError, match="layer"):
        observable_gradients(llama64, tok, PROMPTS, layer=99, token_a=A, token_b=B)
    with pytest.raises(ValueError, match="R must be"):
        observable_direction(llama64, tok, PROMPTS, layer=S, R=0.0, token_a=A, token_b=B)
    with pytest.raises(TypeError, match="TransformerCausalMap"):
        ObservablePropagation(R=1.0).fit(SyntheticMap.planted(16, 3, seed=0).delta)


# ---------------------------------------------------------------- coupling coefficient


def test_coupling_coefficient_properties() -> None:
    g = torch.Generator().manual_seed(2)
    y1, y2 = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    assert coupling_coefficient(y1, y1) == pytest.approx(1.0)
    assert coupling_coefficient(y1, 3 * y2) == pytest.approx(3 * coupling_coefficient(y1, y2))
    assert coupling_coefficient(2 * y1, y2) == pytest.approx(coupling_coefficient(y1, y2) / 2)
    assert coupling_coefficient(y1, y2) * coupling_coefficient(y2, y1) == pytest.approx(cosine_similarity(y1, y2) ** 2)
    w = y2 - (y2 @ y1) / (y1 @ y1) * y1
    assert coupling_coefficient(y1, w) == pytest.approx(0.0, abs=1e-12)
    assert cosine_similarity(y1, y2) == pytest.approx(cosine_similarity(y2, 5 * y1))
    assert cosine_similarity(y1, -y1) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="non-zero"):
        coupling_coefficient(torch.zeros(16), y2)
    with pytest.raises(ValueError, match="different sizes"):
        cosine_similarity(y1, y2[:3])


def test_coupling_is_the_expected_second_observable_per_unit_of_the_first() -> None:
    """x uniform on {‖x‖ = r, ⟨x, y₁⟩ = k}: the mean of ⟨x, y₂⟩ over many draws is k·C(y₁, y₂)."""
    g = torch.Generator().manual_seed(3)
    d, k, r, n = 12, 2.0, 5.0, 200_000
    y1, y2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    e1 = y1 / y1.norm()
    base = k / y1.norm() * e1  # the point of the constraint plane nearest 0
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    w -= (w @ e1)[:, None] * e1
    w *= (r ** 2 - base.norm() ** 2).sqrt() / w.norm(dim=1, keepdim=True)
    x = base + w  # (n, d): ‖x‖ = r and ⟨x, y₁⟩ = k
    torch.testing.assert_close(x @ y1, torch.full((n,), k, dtype=torch.float64))
    mean = float((x @ y2).mean())
    se = float((x @ y2).std()) / n ** 0.5
    assert abs(mean - k * coupling_coefficient(y1, y2)) < 5 * se
