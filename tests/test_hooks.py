"""melbo.models.hooks against the model's own forward: positions, stopping, unpacking, steering."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny_models import VOCAB, tiny_model
from torch import nn

from melbo.models.access import get_layer_access
from melbo.models.hooks import (
    StopForward,
    adding_to_inputs,
    forward_until,
    gather_positions,
    layer_input,
    layer_output,
    map_layer_input,
    position_ids,
    removing,
    residual_stream,
)

LENGTHS = (5, 2, 4)


def _prompts() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in LENGTHS]


def _pad(prompts: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        sl = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        ids[i, sl], mask[i, sl] = p, 1
    return ids, mask


def _hooks(model: nn.Module) -> set[tuple[str, str, int]]:
    """Every forward (pre-)hook on the model. (transformers installs its own output-capturing
    hooks on the first ``output_hidden_states=True`` call, so compare with a snapshot.)"""
    return {
        (name, kind, key)
        for name, m in model.named_modules()
        for kind, d in (("post", m._forward_hooks), ("pre", m._forward_pre_hooks))
        for key in d
    }


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)


def test_position_ids_count_real_tokens_only() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "mixtral", "qwen2_moe"])  # rotary, learned absolute, sliding window, MoE
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_sees_what_each_prompt_sees_alone(family: str, side: str) -> None:
    model = tiny_model(family)
    acc = get_layer_access(model)
    prompts = _prompts()
    ids, mask = _pad(prompts, side)
    got = forward_until(model, acc.layers[3], where="input", input_ids=ids, attention_mask=mask)  # (B, T, d)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            alone = model(input_ids=p[None], output_hidden_states=True, use_cache=False).hidden_states[3][0]
        real = mask[i].bool()
        torch.testing.assert_close(got[i, real], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "olmo2"])
def test_forward_until_returns_exactly_output_hidden_states_and_stops_there(family: str) -> None:
    model = tiny_model(family)
    acc = get_layer_access(model)
    ids, mask = _pad(_prompts(), "left")
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                   output_hidden_states=True, use_cache=False).hidden_states
    hooks_before = _hooks(model)
    ran: list[int] = []
    with removing() as handles:
        for i in range(acc.n_layers):
            handles.append(acc.layers[i].register_forward_pre_hook(lambda m, a, i=i: ran.append(i)))
        for i in range(acc.n_layers - 1):  # the last layer's output is final-normed in hidden_states
            ran.clear()
            out = forward_until(model, acc.layers[i], where="output", input_ids=ids, attention_mask=mask)
            assert torch.equal(out, hs[i + 1]) and ran == list(range(i + 1))
            ran.clear()
            inp = forward_until(model, acc.layers[i], where="input", input_ids=ids, attention_mask=mask)
            assert torch.equal(inp, hs[i]) and ran == list(range(i + 1))  # layer i itself never runs
    assert _hooks(model) == hooks_before


def test_forward_until_raises_when_the_module_is_never_reached() -> None:
    model = tiny_model("llama")
    stray = nn.Linear(2, 2)
    hooks_before = _hooks(model)
    with pytest.raises(RuntimeError, match="never reached"):
        forward_until(model, stray, where="output", input_ids=torch.tensor([[3, 4]]))
    assert _hooks(model) == hooks_before and not _hooks(stray)


def test_layer_input_and_output_unpacking() -> None:
    h = torch.randn(1, 2, 3)
    assert layer_input((h, "mask"), {}) is h and layer_input((), {"hidden_states": h}) is h
    with pytest.raises(RuntimeError, match="hidden_states"):
        layer_input((), {"attention_mask": h})
    assert layer_output(h) is h and layer_output((h, None)) is h and layer_output(SimpleNamespace(hidden_states=h)) is h
    with pytest.raises(RuntimeError, match="unexpected decoder-layer output"):
        layer_output(("no tensor",))
    args, kw = map_layer_input((), {"hidden_states": h, "x": 1}, lambda t: t + 1)
    assert args == () and torch.equal(kw["hidden_states"], h + 1) and kw["x"] == 1
    args, kw = map_layer_input((h, 5), {}, lambda t: t * 2)
    assert torch.equal(args[0], h * 2) and args[1] == 5 and kw == {}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_steering_hook_adds_exactly_the_vector_and_leaves_the_model_as_it_was(family: str) -> None:
    model = tiny_model(family)
    acc = get_layer_access(model)
    ids, mask = _pad(_prompts(), "left")
    before, hooks_before = _snapshot(model), _hooks(model)
    layer, d = 2, acc.d_model
    v = torch.randn(d, generator=torch.Generator().manual_seed(3))
    rows = torch.randn(len(LENGTHS), d, generator=torch.Generator().manual_seed(4))
    clean = forward_until(model, acc.layers[layer], where="input", input_ids=ids, attention_mask=mask)
    with adding_to_inputs([("layers[2]", acc.layers[layer], v)], scale=1.5):
        steered = forward_until(model, acc.layers[layer], where="input", input_ids=ids, attention_mask=mask)
    assert torch.equal(steered, clean + 1.5 * v)  # every row and position, the same float ops
    with adding_to_inputs([("layers[2]", acc.layers[layer], rows)]):
        per_row = forward_until(model, acc.layers[layer], where="input", input_ids=ids, attention_mask=mask)
    assert torch.equal(per_row, clean + rows[:, None, :])
    assert _hooks(model) == hooks_before and _same(model, before)
    # downstream, the steered model differs from the clean one; after exit it is the clean one again
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        with adding_to_inputs([("layers[2]", acc.layers[layer], v)], scale=1.5):
            moved = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        after = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    assert (moved - ref).abs().max() > 1e-4 and torch.equal(after, ref)


def test_hooks_are_removed_when_the_body_raises() -> None:
    model = tiny_model("llama")
    acc = get_layer_access(model)
    before, hooks_before = _snapshot(model), _hooks(model)
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(KeyError), adding_to_inputs([("layers[1]", acc.layers[1], torch.ones(acc.d_model))]):
        assert _hooks(model) != hooks_before
        raise KeyError("inside")
    assert _hooks(model) == hooks_before and _same(model, before)
    # a per-row vector for the wrong batch size raises inside the forward; nothing stays behind
    with pytest.raises(RuntimeError, match="steering for 2 rows got a batch of 1"), adding_to_inputs(
        [("layers[1]", acc.layers[1], torch.ones(2, acc.d_model))]
    ):
        model(input_ids=ids)
    assert _hooks(model) == hooks_before and _same(model, before)


def test_stop_forward_is_an_exception_that_removing_survives() -> None:
    lin = nn.Linear(2, 2)

    def stop(m: nn.Module, a: Any) -> None:
        raise StopForward

    with pytest.raises(StopForward), removing() as handles:
        handles.append(lin.register_forward_pre_hook(stop))
        lin(torch.zeros(2))
    assert not _hooks(lin)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])  # rotary, learned absolute, sliding window
@pytest.mark.parametrize("side", ["left", "right"])
def test_residual_stream_at_target_positions_is_output_hidden_states_of_each_prompt_alone(family: str, side: str) -> None:
    """The one reader of hidden states, on a padded batch, against each prompt run alone (no padding)
    with the model's own ``output_hidden_states=True``: layer x < n is hidden_states[x]; layer n, the
    last layer's output, is hidden_states[-1] before the final norm."""
    model = tiny_model(family)
    acc = get_layer_access(model)
    n, k = acc.n_layers, 2
    prompts = _prompts()
    ids, mask = _pad(prompts, side)
    T = ids.shape[1]
    # the last k real tokens of each row, as indices into the padded batch
    positions = torch.tensor([[T - k + j if side == "left" else len(p) - k + j for j in range(k)] for p in prompts])
    wanted = [0, 2, n]
    hooks_before = _hooks(model)
    got = residual_stream(model, acc.layers, wanted, input_ids=ids, attention_mask=mask, positions=positions)
    full = residual_stream(model, acc.layers, [n, 2], input_ids=ids, attention_mask=mask)
    assert _hooks(model) == hooks_before and sorted(got) == wanted and sorted(full) == [2, n]
    for i, p in enumerate(prompts):
        with torch.no_grad():
            hs = model(input_ids=p[None], output_hidden_states=True, use_cache=False).hidden_states
        for x in wanted:
            assert got[x].shape == (len(prompts), k, acc.d_model)
            mine = got[x][i] if x < n else acc.final_norm(got[x][i])
            torch.testing.assert_close(mine, hs[x][0, -k:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(full[2][i, mask[i].bool()], hs[2][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(gather_positions(full[n], positions), got[n])


def test_residual_stream_refuses_layers_out_of_range_and_gather_positions_bad_shapes() -> None:
    model = tiny_model("llama")
    acc = get_layer_access(model)
    ids, mask = _pad(_prompts(), "left")
    for wanted in ([acc.n_layers + 1], [-1], []):
        with pytest.raises(ValueError, match="give one or more of 0"):
            residual_stream(model, acc.layers, wanted, input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="must be \\(B, k\\)"):
        gather_positions(torch.zeros(3, 5, 4), torch.zeros(2, 1, dtype=torch.long))
