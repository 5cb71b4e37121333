"""The slice's last layer runs its MLP at the target positions only: every primitive equals
the full computation (fp64, every tiny family), Δ equals the model's own steered hidden
states, the MLP really sees k rows, and no hook is left on the model."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from melbo.maps.transformer import TransformerCausalMap
from melbo.models.hooks import position_ids
from melbo.prompts import PromptBatch, resolve_positions

F64 = torch.float64


def _batch() -> PromptBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # right padding: prompt 0's targets are positions 2-4, prompt 1's 4-6
    return PromptBatch(ids, mask, resolve_positions(3, [5, 7], [0, 0]), ("a", "b"), "none")


def _units(d: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(d, m, generator=g, dtype=F64)
    return V / V.norm(dim=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_targets_only_last_layer_equals_the_full_computation(family: str) -> None:
    model = tiny_model(family, dtype=F64, attn="sdpa")
    full = TransformerCausalMap(model, _batch(), 1, 3, last_layer_targets_only=False)
    fast = TransformerCausalMap(model, _batch(), 1, 3)
    assert fast.last_layer_targets_only and not full.last_layer_targets_only
    d = fast.d_model
    V, U = _units(d, 3, 1), _units(d, 3, 2)
    for a, b in zip(fast.value_and_vjp(0.7 * V, U), full.value_and_vjp(0.7 * V, U), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.value(0.7 * V), full.value(0.7 * V), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.jvp0(V), full.jvp0(V), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.hvv0(V), full.hvv0(V), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.uhv0(U, V), full.uhv0(U, V), rtol=1e-10, atol=1e-12)
    fn = lambda h: h.sum(dim=-1)  # noqa: E731
    torch.testing.assert_close(fast.readout(V, fn), full.readout(V, fn), rtol=1e-10, atol=1e-12)

    # independent ground truth: the model's own hidden states under a steering pre-hook
    theta = 0.7 * V[:, 0]

    def steer(mod, args, kwargs):  # type: ignore[no-untyped-def]
        if args:
            return (args[0] + theta,) + args[1:], kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + theta}

    b = fast.prompts
    h = fast.access.layers[1].register_forward_pre_hook(steer, with_kwargs=True)
    try:
        with torch.no_grad():
            hs = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=position_ids(b.attention_mask),
                       output_hidden_states=True, use_cache=False).hidden_states
    finally:
        h.remove()
    rows = torch.arange(2)[:, None]
    want = (hs[3][rows, b.positions] - fast.slice.y[rows, b.positions]).mean(dim=(0, 1))
    torch.testing.assert_close(fast.value(theta[:, None])[:, 0], want, rtol=1e-8, atol=1e-10)


def test_the_last_mlp_sees_only_the_target_rows_and_no_hook_is_left() -> None:
    model = tiny_model("llama", dtype=F64, attn="sdpa")
    cm = TransformerCausalMap(model, _batch(), 1, 3, chunk_size=2)
    seen: dict[int, list[tuple[int, ...]]] = {1: [], 2: []}
    handles = [cm.access.layers[i].mlp.register_forward_pre_hook(
        lambda mod, args, i=i: seen[i].append(tuple(args[0].shape))) for i in (1, 2)]
    before = {id(m): (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in model.modules()}
    try:
        cm.value_and_vjp(_units(cm.d_model, 3, 1), _units(cm.d_model, 3, 2))
    finally:
        for handle in handles:
            handle.remove()
    # chunks of 2 and 1 factors on 2 prompts: layer 1 sees all 7 positions, layer 2 only 3
    assert seen[1] == [(4, 7, 32), (2, 7, 32)]
    assert seen[2] == [(4, 3, 32), (2, 3, 32)]
    for m in model.modules():
        hooks = (dict(m._forward_pre_hooks), dict(m._forward_hooks))
        assert hooks == before[id(m)] or not any(hooks), m
