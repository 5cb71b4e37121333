"""steer / ablate: where they act, agreement with independent ground truths, restoration."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from tiny_models import MOE_FAMILIES, VOCAB, list_moe_llama, tiny_model
from torch import Tensor, nn

from melbo.features import Features, ModelMismatchError
from melbo.models.access import LayerAccess, get_layer_access
from melbo.models.fingerprint import model_fingerprint
from melbo.models.hooks import removing
from melbo.steering.interventions import ablate, steer, steer_features, steering

FAMILIES = ("llama", "gemma3", "gpt2", *MOE_FAMILIES)
N_LAYERS = 4  # of every tiny model
D = 32


def _ids(seed: int = 0, batch: int = 2, length: int = 7) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def _vec(seed: int = 1, norm: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(D, generator=g)
    return norm * v / v.norm()


def _first(x: Any) -> Tensor:
    return x[0] if isinstance(x, tuple) else x


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
)


def _hooks(model: nn.Module) -> dict[tuple[str, str], list[int]]:
    """Every hook id of every module, to compare before/after."""
    return {
        (name, attr): sorted(getattr(mod, attr, {}))
        for name, mod in model.named_modules()
        for attr in _HOOK_DICTS
    }


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {**{f: tiny_model(f, seed=0) for f in FAMILIES}, "list_moe": list_moe_llama()}


# ---------------------------------------------------------------------- steering


@pytest.mark.parametrize("family", FAMILIES)
def test_steer_adds_scale_times_vector_to_the_layer_input_at_every_position(
    family: str, models: dict[str, Any]
) -> None:
    model = models[family]
    acc = get_layer_access(model)
    ids, v, scale = _ids(), _vec(), 3.5
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states  # N_LAYERS + 1 of (B, T, d)
    for layer in range(N_LAYERS):
        seen: list[Tensor] = []

        def capture(
            mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], seen: list[Tensor] = seen
        ) -> None:
            seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

        with torch.no_grad(), steer(model, v, layer=layer, scale=scale):
            # registered after steer's pre-hook, so it sees the steered input
            h = acc.layers[layer].register_forward_pre_hook(capture, with_kwargs=True)
            try:
                steered_hs = model(ids, output_hidden_states=True).hidden_states
            finally:
                h.remove()
        assert len(seen) == 1
        assert torch.equal(seen[0], hs[layer] + scale * v), (family, layer)
        for j in range(layer + 1):  # the stream before the layer is untouched ...
            expected = hs[j] + scale * v if (j == 0 and layer == 0) else hs[j]
            assert torch.equal(steered_hs[j], expected), (family, layer, j)
        assert not torch.allclose(steered_hs[layer + 1], hs[layer + 1])  # ... and after it is not


@pytest.mark.parametrize("family", FAMILIES)
def test_steer_at_layer_0_equals_adding_the_vector_to_the_embeddings(
    family: str, models: dict[str, Any]
) -> None:
    model = models[family]
    ids, v = _ids(), _vec(norm=5.0)
    with torch.no_grad():
        emb = get_layer_access(model).embed(ids)  # (B, T, d), Gemma's scaling included
        expected = model(inputs_embeds=emb + 2.0 * v).logits
        with steer(model, v, layer=0, scale=2.0):
            got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _greedy_no_cache(model: nn.Module, ids: Tensor, n: int) -> Tensor:
    for _ in range(n):
        logits = model(ids, use_cache=False).logits[:, -1]  # (B, vocab)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("family", FAMILIES)
def test_steered_cached_generation_equals_a_steered_no_cache_loop(
    family: str, models: dict[str, Any]
) -> None:
    model: Any = copy.deepcopy(models[family])
    model.generation_config.eos_token_id = None  # generate exactly n tokens
    ids, n = _ids(seed=3, batch=1, length=5), 8
    v = _vec(seed=2, norm=40.0)
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=n, do_sample=False, use_cache=True)
        with steer(model, v, layer=1):
            cached = model.generate(ids, max_new_tokens=n, do_sample=False, use_cache=True)
            manual = _greedy_no_cache(model, ids, n)
    assert cached.shape == (1, 5 + n)
    assert torch.equal(cached, manual)
    assert not torch.equal(cached, plain)


def test_steering_several_layers_at_once_equals_nested_steers(models: dict[str, Any]) -> None:
    model = models["llama"]
    ids, v0, v2 = _ids(), _vec(1, 3.0), _vec(2, 3.0)
    with torch.no_grad():
        with steering(model, [(0, v0), (2, v2), (2, v0)], scale=0.5):
            a = model(ids).logits
        with steer(model, v0, layer=0, scale=0.5), steer(model, v2 + v0, layer=2, scale=0.5):
            b = model(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_steering_vector_is_cast_to_the_model_dtype_and_gradients_reach_it(
    models: dict[str, Any],
) -> None:
    model = models["llama"]
    ids = _ids()
    v = _vec(norm=2.0).to(torch.float64).requires_grad_(True)
    with steer(model, v, layer=1):
        out = model(ids).logits
    assert out.dtype == torch.float32
    out.sum().backward()
    assert v.grad is not None and v.grad.shape == (D,) and bool(v.grad.abs().sum() > 0)
    model.zero_grad(set_to_none=True)


def test_steer_features_applies_R_times_v_at_the_source_layer(models: dict[str, Any]) -> None:
    model = models["gemma3"]
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(D, 4, generator=g), dim=0)
    f = Features(U=V.clone(), V=V, alpha=torch.ones(4), R=6.0, method="exponential",
                 source_layer=2, target_layer=4, model=model_fingerprint(model))
    ids = _ids()
    with torch.no_grad():
        with steer_features(model, f, 3, scale=0.5):
            a = model(ids).logits
        with steer(model, 3.0 * V[:, 3], layer=2):
            b = model(ids).logits
    assert torch.equal(a, b)
    other = tiny_model("gemma3", seed=7)
    with pytest.raises(ModelMismatchError), steer_features(other, f, 0):
        pass
    with torch.no_grad(), steer_features(other, f, 0, force=True):
        other(ids)


# ---------------------------------------------------------------------- ablation


def _writes(acc: LayerAccess) -> list[nn.Module]:
    return [m for i in range(acc.n_layers) for m in (acc.attn_out(i), acc.mlp_out(i))]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rank", [1, 2])
def test_ablate_removes_the_directions_from_every_write_and_the_final_stream(
    family: str, rank: int, models: dict[str, Any]
) -> None:
    model = models[family]
    acc = get_layer_access(model)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(D, rank, generator=g) * 3.0  # need not be unit / orthogonal
    basis = torch.linalg.qr(w.double()).Q  # (d, r)
    ids = _ids()

    def along(x: Tensor) -> float:
        return float((x.double() @ basis).abs().max())

    writes: list[Tensor] = []
    final: list[Tensor] = []

    def capture_write(mod: nn.Module, args: Any, out: Any) -> None:
        writes.append(_first(out).detach())

    def capture_final(mod: nn.Module, args: Any, out: Any) -> None:
        final.append(_first(out).detach())  # (B, T, d), before the final norm

    with torch.no_grad():
        hf = acc.layers[-1].register_forward_hook(capture_final)
        try:
            model(ids)
            assert along(final[-1]) > 1e-2  # the direction is there to begin with
            for include_embedding in (False, True):
                writes.clear()
                with ablate(model, w.squeeze(1) if rank == 1 else w,
                            include_embedding=include_embedding) as q:
                    assert q.shape == (D, rank)
                    hooks = [m.register_forward_hook(capture_write) for m in _writes(acc)]
                    try:
                        model(ids)
                    finally:
                        for h in hooks:
                            h.remove()
                assert len(writes) == 2 * N_LAYERS
                assert max(along(x) for x in writes) <= 1e-5
                if include_embedding:
                    assert along(final[-1]) <= 1e-5
                else:
                    assert along(final[-1]) > 1e-2  # the embedding still carries it
        finally:
            hf.remove()


def _output_projections(layer: nn.Module) -> list[Tensor]:
    """Every weight whose output the layer adds to the residual stream, as (..., d, d_in):
    attention o_proj, and the MLP's down_proj — a dense MLP's, or every expert's (one 3-D
    (experts, d, d_expert) tensor, or one Linear per expert in a ModuleList) and the shared
    expert's of a mixture-of-experts block. Written out per layout here, independently of
    melbo.models.access."""
    mlp: Any = layer.mlp
    weights = [layer.self_attn.o_proj.weight]
    if isinstance(getattr(mlp, "experts", None), nn.ModuleList):
        weights += [e.down_proj.weight for e in mlp.experts]
        weights.append(mlp.shared_expert.down_proj.weight)
    elif hasattr(mlp, "experts"):
        weights.append(mlp.experts.down_proj)
        assert weights[-1].ndim == 3 and weights[-1].shape[1] == D
        if hasattr(mlp, "shared_expert"):
            weights.append(mlp.shared_expert.down_proj.weight)
    else:
        weights.append(mlp.down_proj.weight)
    return weights


@pytest.mark.parametrize("family", ["llama", *MOE_FAMILIES, "list_moe"])
def test_ablate_equals_the_weight_edit_on_a_copy(family: str, models: dict[str, Any]) -> None:
    model = models[family]
    assert not model.config.tie_word_embeddings
    w = _vec(seed=9)  # unit
    edited: Any = copy.deepcopy(model)
    n_edited = 0
    with torch.no_grad():
        for layer in edited.model.layers:
            for W in _output_projections(layer):  # W ← W − w wᵀ W, per expert for 3-D W
                W -= w[:, None] * (w @ W)[..., None, :]
                n_edited += W.shape[0] if W.ndim == 3 else 1
        emb = edited.model.embed_tokens.weight  # rows are vectors: E ← E − E w wᵀ
        emb -= torch.outer(emb @ w, w)
    # o_proj + down_proj per layer; MoE: + 4 experts (+ a shared expert) per sparse layer
    assert n_edited >= 2 * N_LAYERS + (0 if family == "llama" else 3 * (N_LAYERS - 1))
    ids = _ids(batch=2, length=9)
    with torch.no_grad():
        with ablate(model, w, include_embedding=True):
            got = model(ids).logits
        expected = edited(ids).logits
        with ablate(model, w):
            got_writes_only = model(ids).logits
        edited.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight)
        expected_writes_only = edited(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_writes_only, expected_writes_only, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, model(ids).logits.detach())


@pytest.mark.parametrize("family", FAMILIES)
def test_after_ablation_no_residual_stream_has_a_component_along_the_direction(
    family: str, models: dict[str, Any]
) -> None:
    """Ground truth of ablation with the embedding: the stream entering every layer and
    leaving the last one is orthogonal to the direction, at every position of every prompt
    of a left- and right-padded batch, and the model is bit-identical afterwards."""
    model = models[family]
    acc = get_layer_access(model)
    ids = _ids(seed=4, batch=3, length=9)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[1, -2:] = 0  # right padding
    r = _vec(seed=11)
    streams: list[Tensor] = []

    def entering(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        streams.append((args[0] if args else kwargs["hidden_states"]).detach())

    def leaving(mod: nn.Module, args: Any, out: Any) -> None:
        streams.append(_first(out).detach())

    def run() -> Tensor:
        streams.clear()
        with removing() as handles:  # registered last: they see what the layers see
            handles += [layer.register_forward_pre_hook(entering, with_kwargs=True) for layer in acc.layers]
            handles.append(acc.layers[-1].register_forward_hook(leaving))
            logits = model(input_ids=ids, attention_mask=mask).logits
        assert len(streams) == N_LAYERS + 1
        return logits

    params = {k: t.clone() for k, t in model.state_dict().items()}
    with torch.no_grad():
        before = run()
        assert min(float((h @ r).abs().max()) for h in streams) > 1e-2  # it is there to begin with
        with ablate(model, r, include_embedding=True):
            ablated = run()
            # fp32 eps relative to the stream's size (the direction is a unit vector)
            for i, h in enumerate(streams):
                along = float((h.double() @ r.double()).abs().max())
                assert along <= 1e-6 * max(1.0, float(h.norm(dim=-1).max())), (family, i, along)
        after = run()
    assert not torch.allclose(ablated, before)
    assert torch.equal(after, before)
    assert all(torch.equal(t, params[k]) for k, t in model.state_dict().items())


@pytest.mark.parametrize(
    ("directions", "err", "match"),
    [
        (torch.zeros(D), ValueError, "zero vector"),
        (torch.ones(D + 1), ValueError, r"d_model = 32, got \(33,\)"),
        (torch.ones(D, 2), ValueError, "linearly dependent"),
        (torch.ones(D, dtype=torch.long), TypeError, "floating point"),
        (torch.full((D,), float("nan")), ValueError, "non-finite"),
    ],
)
def test_ablate_rejects_bad_directions(
    directions: Tensor, err: type[Exception], match: str, models: dict[str, Any]
) -> None:
    model = models["llama"]
    before = _hooks(model)
    with pytest.raises(err, match=match), ablate(model, directions):
        pass
    assert _hooks(model) == before


def test_steer_rejects_bad_vectors_and_layers(models: dict[str, Any]) -> None:
    model = models["llama"]
    with pytest.raises(ValueError, match=r"\(d_model,\) = \(32,\), got \(16,\)"), steer(
        model, torch.ones(16), layer=0
    ):
        pass
    with pytest.raises(ValueError, match=r"layer=4 is out of range.*0 ≤ layer ≤ 3"), steer(
        model, torch.ones(D), layer=N_LAYERS
    ):
        pass
    with pytest.raises(ValueError, match="scale .*must be a finite number"), steer(
        model, torch.ones(D), layer=0, scale=float("inf")
    ):
        pass


# ---------------------------------------------------------------------- keyword hidden_states


class _ToyLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(D, D)
        self.mlp = nn.Linear(D, D)

    def forward(self, *, hidden_states: Tensor) -> Tensor:
        h = hidden_states + self.attn(hidden_states)
        return h + self.mlp(torch.tanh(h))


class _Toy(nn.Module):
    """Calls its layers with ``hidden_states=`` as a keyword."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList([_ToyLayer() for _ in range(3)])
        self.norm = nn.LayerNorm(D)

    def forward(self, ids: Tensor, pre_norm: list[Tensor] | None = None) -> Tensor:
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(hidden_states=h)
        if pre_norm is not None:
            pre_norm.append(h)
        return self.norm(h)


def _toy_access(toy: _Toy) -> LayerAccess:
    return LayerAccess(model=toy, family="toy", layers_path="layers", norm_path="norm",
                       embed_path="embed", attn_out_path="attn", mlp_out_path="mlp")


def test_hooks_handle_hidden_states_passed_as_keyword() -> None:
    toy = _Toy()
    acc = _toy_access(toy)
    ids, v = _ids(), _vec(norm=2.0)
    with torch.no_grad():
        with steer(toy, v, layer=0, access=acc):
            a = toy(ids)
        b = toy.norm(toy.layers[2](hidden_states=toy.layers[1](
            hidden_states=toy.layers[0](hidden_states=toy.embed(ids) + v))))
        assert torch.equal(a, b)
        pre: list[Tensor] = []
        with ablate(toy, v, include_embedding=True, access=acc):
            toy(ids, pre_norm=pre)
    assert float((pre[0] @ (v / v.norm())).abs().max()) <= 1e-5


# ---------------------------------------------------------------------- restoration


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: t.detach().clone() for k, t in model.state_dict().items()}


def _interventions(model: nn.Module) -> Iterator[Any]:
    """Every kind of intervention, as context-manager factories."""
    v, w = _vec(seed=4, norm=10.0), torch.randn(D, 2)
    yield lambda: steer(model, v, layer=0)
    yield lambda: steering(model, [(1, v), (3, -v)], scale=2.0)
    yield lambda: ablate(model, v)
    yield lambda: ablate(model, w, include_embedding=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("raises", [False, True])
def test_model_is_bit_identical_and_hook_free_after_exit(family: str, raises: bool) -> None:
    model = tiny_model(family, seed=0)  # fresh: transformers has installed no hooks yet
    ids = _ids()
    params = _snapshot(model)
    with torch.no_grad():
        logits = model(ids).logits
    assert all(not ids_ for ids_ in _hooks(model).values())
    for make in _interventions(model):
        try:
            with torch.no_grad(), make():
                changed = model(ids).logits
                if raises:
                    raise RuntimeError("boom")
        except RuntimeError as err:
            assert raises and str(err) == "boom"
        assert not torch.equal(changed, logits)
        assert all(not ids_ for ids_ in _hooks(model).values())
        with torch.no_grad():
            assert torch.equal(model(ids).logits, logits)
    after = _snapshot(model)
    assert after.keys() == params.keys()
    assert all(torch.equal(after[k], params[k]) for k in params)


def test_hooks_of_transformers_itself_survive(models: dict[str, Any]) -> None:
    model = models["gemma3"]
    with torch.no_grad():
        model(_ids(), output_hidden_states=True)  # makes transformers install its own hooks
    before = _hooks(model)
    assert any(before.values())
    with steer(model, _vec(), layer=2), ablate(model, _vec(seed=3), include_embedding=True):
        assert _hooks(model) != before
    assert _hooks(model) == before


def test_interventions_nest_and_compose_in_either_order(models: dict[str, Any]) -> None:
    model = models["llama"]
    ids, v, w = _ids(), _vec(seed=1, norm=8.0), _vec(seed=2)
    before = _hooks(model)
    with torch.no_grad():
        with steer(model, v, layer=0):
            only_steer = model(ids).logits
            with ablate(model, v, include_embedding=True):
                a = model(ids).logits
            assert torch.equal(model(ids).logits, only_steer)  # the inner one is gone
        with ablate(model, v, include_embedding=True), steer(model, v, layer=0):
            b = model(ids).logits
        # nested ablations of orthogonal directions = one ablation of their span
        u = v / v.norm()
        w_perp = w - (w @ u) * u
        plain = model(ids).logits
        with ablate(model, w_perp, include_embedding=True), ablate(model, v, include_embedding=True):
            c = model(ids).logits
        with ablate(model, torch.stack([v, w_perp], dim=1), include_embedding=True):
            d = model(ids).logits
    assert torch.equal(a, b)  # the embedding ablation never removes the steering vector
    torch.testing.assert_close(c, d, rtol=1e-5, atol=1e-6)
    assert float((c - plain).abs().max()) > 1e-2
    assert _hooks(model) == before
