"""The primitives of Δ against autograd Jacobians and finite differences (fp64)."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from melbo.maps.transformer import TransformerCausalMap, _math_sdpa
from melbo.models.hooks import position_ids
from melbo.prompts import PromptBatch, resolve_positions

F64 = torch.float64


def _batch() -> PromptBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # right padding (fp64 eager attention NaNs on fully masked left-pad rows)
    return PromptBatch(ids, mask, resolve_positions(3, [5, 7], [0, 0]), ("a", "b"), "none")


def _map(family: str, **kw: object) -> TransformerCausalMap:
    model = tiny_model(family, dtype=F64, attn="sdpa")
    return TransformerCausalMap(model, _batch(), 1, 3, **kw)  # type: ignore[arg-type]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _jac(cm: TransformerCausalMap, theta: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(lambda th: cm._delta(th[:, None])[:, 0], theta)


def _units(d: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(d, m, generator=g, dtype=F64)
    return V / V.norm(dim=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_vjp_and_jvp0_match_autograd_jacobian(family: str) -> None:
    cm = _map(family)
    d = cm.d_model
    V, U = _units(d, 3, 1), _units(d, 3, 2)
    theta = 0.7 * V
    vals, vjps = cm.value_and_vjp(theta, U)
    for ell in range(3):
        J = _jac(cm, theta[:, ell])
        assert _rel(vjps[:, ell], J.T @ U[:, ell]) < 1e-4
    J0 = _jac(cm, torch.zeros(d, dtype=F64))
    assert _rel(cm.jvp0(V), J0 @ V) < 1e-4
    assert torch.allclose(vals, cm.value(theta), rtol=1e-10, atol=1e-12)


def _richardson(f, h: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Central differences with two Richardson steps: error O(h^6), so h can stay large
    enough that the fp32 inside RMSNorm layers does not swamp the difference."""
    d = [(f(h / 2**k) - f(-h / 2**k)) / (2 * h / 2**k) for k in range(3)]
    r = [(4 * d[k + 1] - d[k]) / 3 for k in range(2)]
    return (16 * r[1] - r[0]) / 15


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "qwen3", "gpt_neox"])
def test_second_order_products_match_finite_differences_of_the_jacobian(family: str) -> None:
    cm = _map(family)
    d = cm.d_model
    V, U = _units(d, 2, 3), _units(d, 2, 4)
    hvv, uhv = cm.hvv0(V), cm.uhv0(U, V)
    # RMSNorm layers (Llama, Gemma, Qwen) compute in fp32 even in an fp64 model, which puts
    # a noise floor of ~1e-4 under any finite difference of their Jacobian; GPT-2 and
    # GPT-NeoX are fp64 throughout. The exact check is the autograd Hessian test below.
    tol = 1e-4 if family in ("gpt2", "gpt_neox") else 5e-4
    for ell in range(2):
        v, u = V[:, ell], U[:, ell]
        fd_hvv = _richardson(lambda h, v=v: _jac(cm, h * v) @ v, 2e-2)  # d/dε J(εv) v
        fd_uhv = _richardson(lambda h, v=v, u=u: _jac(cm, h * v).T @ u, 2e-2)  # d/dε J(εv)ᵀu
        assert _rel(hvv[:, ell], fd_hvv) < tol
        assert _rel(uhv[:, ell], fd_uhv) < tol


def test_delta_is_zero_at_zero_and_uses_only_target_positions() -> None:
    cm = _map("llama")
    d = cm.d_model
    assert cm.value(torch.zeros(d, 2, dtype=F64)).abs().max() < 1e-12
    # explicit positions equal to the default (last 3) give the same map
    b = _batch()
    b2 = PromptBatch(b.input_ids, b.attention_mask, resolve_positions([[-3, -2, -1]] * 2, [5, 7], [0, 0]), b.texts, b.template)
    cm2 = TransformerCausalMap(cm.model, b2, 1, 3)
    th = _units(d, 2, 5)
    assert torch.equal(cm.value(th), cm2.value(th))
    # ground truth from the model's own hidden states with a steering pre-hook
    theta = th[:, 0]

    def hook(mod, args, kwargs):  # type: ignore[no-untyped-def]
        return (args[0] + theta,) + args[1:], kwargs

    h = cm.access.layers[1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            hs = cm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=position_ids(b.attention_mask), output_hidden_states=True, use_cache=False).hidden_states
    finally:
        h.remove()
    rows = torch.arange(2)[:, None]
    want = (hs[3][rows, b.positions] - cm.slice.y[rows, b.positions]).mean(dim=(0, 1))
    torch.testing.assert_close(cm.value(th)[:, 0], want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_second_order_products_match_the_autograd_hessian(family: str) -> None:
    cm = _map(family)
    d = cm.d_model
    V, U = _units(d, 2, 9), _units(d, 2, 10)
    hvv, uhv = cm.hvv0(V), cm.uhv0(U, V)
    zero = torch.zeros(d, dtype=F64)
    for ell in range(2):
        u, v = U[:, ell], V[:, ell]
        with _math_sdpa():  # the CPU flash kernel has no double-backward
            H_u = torch.autograd.functional.hessian(lambda th, u=u: cm._delta(th[:, None])[:, 0] @ u, zero)
            # T(·, v, v)_k = vᵀ H_k v for every output coordinate k
            T = torch.autograd.functional.jacobian(
                lambda th, v=v: torch.autograd.functional.jacobian(lambda x: cm._delta(x[:, None])[:, 0], th, create_graph=True) @ v,
                zero,
            )
        assert _rel(uhv[:, ell], H_u @ v) < 1e-6
        assert _rel(hvv[:, ell], T @ v) < 1e-6


@pytest.mark.parametrize("method", ["value", "vjp", "jvp0", "hvv0", "uhv0"])
def test_results_do_not_depend_on_chunk_size(method: str) -> None:
    big, small = _map("gemma3"), _map("gemma3", chunk_size=2)
    d = big.d_model
    V, U = _units(d, 5, 6), _units(d, 5, 7)
    args = {"value": (V,), "vjp": (V, U), "jvp0": (V,), "hvv0": (V,), "uhv0": (U, V)}[method]
    a, b = getattr(big, method)(*args), getattr(small, method)(*args)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_model_parameters_bit_identical_after_every_call_and_after_errors() -> None:
    cm = _map("llama")
    before = {k: v.clone() for k, v in cm.model.state_dict().items()}
    grads_before = [p.grad for p in cm.model.parameters()]
    d = cm.d_model
    V = _units(d, 2, 8)
    cm.value(V), cm.vjp(V, V), cm.jvp0(V), cm.hvv0(V), cm.uhv0(V, V)
    with pytest.raises(ValueError, match="shape"):
        cm.vjp(V, V[:, :1])
    with pytest.raises(ValueError, match="d_model"):
        cm.value(torch.zeros(d + 1, 2, dtype=F64))
    after = cm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.grad for p in cm.model.parameters()] == grads_before
    for mod in cm.model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks


def test_bf16_autocast_matches_fp32_closely_and_returns_fp32() -> None:
    model = tiny_model("llama", attn="sdpa")
    full = TransformerCausalMap(model, _batch(), 1, 3)
    half = TransformerCausalMap(model, _batch(), 1, 3, compute_dtype="bfloat16")
    V, U = _units(full.d_model, 4, 11).float(), _units(full.d_model, 4, 12).float()
    (a, ga), (b, gb) = full.value_and_vjp(2 * V, U), half.value_and_vjp(2 * V, U)
    assert b.dtype == torch.float32 and gb.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0).min() > 0.99 and cos(ga, gb, dim=0).min() > 0.99
    assert not torch.equal(a, b)  # autocast really ran in bf16
    with pytest.raises(ValueError, match="compute_dtype='int8'"):
        TransformerCausalMap(model, _batch(), 1, 3, compute_dtype="int8")


def test_out_of_memory_halves_the_chunk_and_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _map("llama", chunk_size=1)
    cm = _map("llama")
    real = cm._delta
    sizes: list[int] = []  # chunk sizes that ran
    failed: list[int] = []  # and those that ran out of memory

    def delta_with_small_memory(theta: torch.Tensor) -> torch.Tensor:
        if theta.shape[1] > 2:
            failed.append(theta.shape[1])
            raise torch.OutOfMemoryError("simulated: more than 2 factors do not fit")
        sizes.append(theta.shape[1])
        return real(theta)

    monkeypatch.setattr(cm, "_delta", delta_with_small_memory)
    d = cm.d_model
    V, U = _units(d, 7, 3), _units(d, 7, 4)
    vals, grads = cm.value_and_vjp(0.5 * V, U)
    want_vals, want_grads = ref.value_and_vjp(0.5 * V, U)
    assert failed[0] == 7 and sum(sizes) == 7 and max(sizes) <= 2  # tried all 7, halved until it fit
    assert torch.allclose(vals, want_vals, rtol=1e-12, atol=1e-14)
    assert torch.allclose(grads, want_grads, rtol=1e-12, atol=1e-14)
    failed.clear()
    assert torch.allclose(cm.value(0.5 * V), ref.value(0.5 * V), rtol=1e-12, atol=1e-14)
    assert failed and failed[0] == 7  # order 0 has its own chunk size: it tries big first
    failed.clear()
    cm.value_and_vjp(0.5 * V, U)
    assert not failed  # the reduced size is remembered for order 1


def test_out_of_memory_with_one_factor_per_chunk_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    cm = _map("llama")

    def no_memory(theta: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(cm, "_delta", no_memory)
    with pytest.raises(torch.OutOfMemoryError):
        cm.value(_units(cm.d_model, 3, 5))


def test_default_memory_budget_uses_half_the_free_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from melbo.maps.transformer import DEFAULT_MEMORY_BUDGET, default_memory_budget

    assert default_memory_budget(torch.device("cpu")) == DEFAULT_MEMORY_BUDGET
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * 1024**3, 140 * 1024**3))
    assert default_memory_budget(torch.device("cuda")) == 50 * 1024**3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024**3, 140 * 1024**3))
    assert default_memory_budget(torch.device("cuda")) == DEFAULT_MEMORY_BUDGET  # never below the CPU budget


# ------------------------------------------------------------ half-precision models
def _half_and_full(family: str) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    import copy

    from melbo.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    half = tiny_model(family, vocab=len(tok)).to(torch.bfloat16).eval()
    full = copy.deepcopy(half).float()  # the same (bf16-rounded) weights, in fp32
    return half, full, tok


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "qwen2_moe"])
def test_a_bf16_model_with_fp32_compute_is_the_fp32_model(family: str) -> None:
    """compute_dtype="float32" on a bf16 model: every layer runs on fp32 copies of its weights
    and an fp32 residual stream, so Δ and Jᵀu equal those of the fp32 model with the same
    weights; the model keeps its own bf16 parameters."""
    half, full, tok = _half_and_full(family)
    before = {k: v.clone() for k, v in half.state_dict().items()}
    prompts = ["Tell me about owls.", "Rain falls on the sea."]
    d16 = TransformerCausalMap(half, prompts, 1, 3, tokenizer=tok, compute_dtype="float32")
    d32 = TransformerCausalMap(full, prompts, 1, 3, tokenizer=tok)
    g = torch.Generator().manual_seed(0)
    V = torch.randn(d16.d_model, 3, generator=g)
    theta = 0.01 * d32.slice.x.norm(dim=-1).median() * V / V.norm(dim=0)  # small: bf16 would round it
    U = torch.randn(d16.d_model, 3, generator=g)
    a, ga = d16.value_and_vjp(theta, U)
    # ground truth: the fp32 model's own layer modules, from the bf16 model's layer-s stream and
    # with the arguments its forward pass gave the layers (rotary tables, masks), differentiated
    # by autograd
    from melbo.models.slice import LayerSlice

    x = d16.slice.x.float()
    ref = LayerSlice(d32.access, 1, 3, x, x, d16.slice._calls)
    pos = d16.positions
    rows = torch.arange(pos.shape[0])[:, None].expand_as(pos)
    th = theta.clone().requires_grad_(True)
    outs = [ref(x + th[:, j])[rows, pos] - ref(x)[rows, pos] for j in range(3)]
    b = torch.stack([o.mean(dim=(0, 1)) for o in outs], dim=1)
    gb = torch.autograd.grad((b * U).sum(), th)[0]
    b = b.detach()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5 * float(gb.abs().max()))
    assert d16.describe()["residual_dtype"] == "float32"
    after = half.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_a_bf16_model_by_default_keeps_the_residual_in_fp32_and_delta_zero_at_zero() -> None:
    half, full, tok = _half_and_full("gpt2")
    prompts = ["Tell me about owls.", "Rain falls on the sea."]
    d16 = TransformerCausalMap(half, prompts, 1, 3, tokenizer=tok)  # matmuls in bf16 (autocast)
    d32 = TransformerCausalMap(full, prompts, 1, 3, tokenizer=tok)
    assert d16.value(torch.zeros(d16.d_model, 1)).abs().max().item() == 0.0  # targets from the same path
    g = torch.Generator().manual_seed(1)
    V = torch.randn(d16.d_model, 4, generator=g)
    theta = 0.01 * d32.slice.x.norm(dim=-1).median() * V / V.norm(dim=0)
    a, b = d16.value(theta), d32.value(theta)
    # bf16 matmul inputs still round x + θ: ~5 % here; a bf16 residual stream gave ~20 %
    assert float(((a - b).norm(dim=0) / b.norm(dim=0)).max()) < 0.1
