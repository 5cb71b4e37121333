"""The forward-hook plumbing every part of melbo shares; nothing here changes a model.

Every hook is registered inside a context manager and removed on exit — also when the
body raises — so after the ``with`` block the model's hook dictionaries are what they were.

* :func:`position_ids` — positions counted over real tokens only, for a left- or
  right-padded batch (as ``model.generate`` computes them).
* :func:`layer_input` / :func:`layer_output` — the hidden states a decoder layer receives
  (positional or keyword ``hidden_states``) and returns (a Tensor, a tuple starting with one,
  or an output object with ``hidden_states``); :func:`map_layer_input` rewrites the former.
* :func:`forward_until` — run the model until a module is reached, return the hidden states
  entering or leaving it, and stop the forward pass there (:class:`StopForward`).
* :func:`residual_stream` — *the* reader of the residual stream: ``hidden_states[x]`` (as
  ``output_hidden_states`` numbers them) at several layers in one stopped forward pass,
  optionally only at each prompt's target positions (:func:`gather_positions`).
* :func:`adding_to_inputs` — *the* steering hook: add a vector (or one vector per batch row)
  to the residual stream entering decoder layers, on every forward.
* :func:`removing` — remove a list of hook handles on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "StopForward",
    "adding_to_inputs",
    "forward_until",
    "gather_positions",
    "layer_input",
    "layer_output",
    "map_layer_input",
    "position_ids",
    "removing",
    "residual_stream",
]

PreHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Any]


class StopForward(Exception):
    """Raised by a capture hook to end the forward pass once what it needs is recorded."""


def position_ids(attention_mask: Tensor) -> Tensor:
    """``cumsum(mask) − 1`` with padding set to 0, as ``model.generate`` counts positions.

    A prompt in a left- or right-padded batch then sees the positions it sees unpadded, for
    every position-embedding scheme (rotary or learned).

    Parameters
    ----------
    attention_mask : Tensor, shape (n, T) — 1 = token, 0 = padding

    Returns
    -------
    Tensor, shape (n, T), int64
    """
    pos = attention_mask.long().cumsum(dim=-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def layer_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The ``hidden_states`` a decoder layer was called with (first positional or keyword)."""
    if args and isinstance(args[0], Tensor):
        return args[0]
    hs = kwargs.get("hidden_states")
    if isinstance(hs, Tensor):
        return hs
    raise RuntimeError(
        "a decoder layer was called without a hidden_states tensor (neither as first positional "
        f"argument nor as keyword 'hidden_states'); got {len(args)} positional args and keywords "
        f"{sorted(kwargs)}"
    )


def map_layer_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], fn: Callable[[Tensor], Tensor]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A decoder layer's call arguments with ``fn`` applied to its ``hidden_states``, for a
    forward pre-hook (``with_kwargs=True``) to return. The inputs are not modified."""
    if args and isinstance(args[0], Tensor):
        return (fn(args[0]), *args[1:]), kwargs
    new_kwargs = dict(kwargs)
    new_kwargs["hidden_states"] = fn(layer_input(args, kwargs))
    return args, new_kwargs


def layer_output(out: Any) -> Tensor:
    """The hidden states a decoder layer returned: the Tensor itself, the first element of a
    tuple, or the ``hidden_states`` field of an output object."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    hs = getattr(out, "hidden_states", None)
    if isinstance(hs, Tensor):
        return hs
    raise RuntimeError(f"unexpected decoder-layer output of type {type(out).__name__}")


@contextmanager
def removing(handles: list[RemovableHandle] | None = None) -> Iterator[list[RemovableHandle]]:
    """Yield a list to append hook handles to; every handle in it is removed on exit (last
    registered first), also when the body raises."""
    held: list[RemovableHandle] = [] if handles is None else handles
    try:
        yield held
    finally:
        for h in reversed(held):
            h.remove()
        held.clear()


def forward_until(
    model: nn.Module,
    module: nn.Module,
    *,
    where: Literal["input", "output"],
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    extra_hooks: Sequence[tuple[nn.Module, PreHook]] = (),
    grad: bool = False,
) -> Tensor:
    """Run ``model`` on a (padded) batch until ``module`` is reached and return its hidden
    states — the ``hidden_states`` it is called with (``where="input"``, a pre-hook) or the
    hidden states it returns (``"output"``, see :func:`layer_output`) — then stop the
    forward pass, so later layers and the unembedding are never computed.

    Runs under ``torch.no_grad()`` (``grad=True``: with gradients, and the result is not
    detached — for gradients with respect to something the hooks add, e.g. a steering
    vector) with ``use_cache=False`` and :func:`position_ids` when a mask is given. ``extra_hooks``: further forward pre-hooks (``with_kwargs=True``) to hold
    during the pass (e.g. recorders on earlier layers); all hooks are removed on exit.

    Returns
    -------
    Tensor, detached unless ``grad``, the module's dtype; shape (B, T, d) for a decoder layer.
    """
    if where not in ("input", "output"):
        raise ValueError(f"where={where!r}: choose 'input' or 'output'")
    store: dict[str, Tensor] = {}

    def keep(h: Tensor) -> Tensor:
        return h if grad else h.detach()

    def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        store["h"] = keep(layer_input(args, kwargs))
        raise StopForward

    def post(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        store["h"] = keep(layer_output(out))
        raise StopForward

    pos = None if attention_mask is None else position_ids(attention_mask)
    with removing() as handles:
        for mod, hook in extra_hooks:
            handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
        if where == "input":
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(post))
        try:
            with torch.enable_grad() if grad else torch.no_grad():
                model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False)
        except StopForward:
            pass
    if "h" not in store:
        raise RuntimeError(f"the model's forward pass never reached {type(module).__name__} ({where})")
    return store["h"]


def gather_positions(h: Tensor, positions: Tensor) -> Tensor:
    """Hidden states ``h`` (B, T, d) at each row's own token positions ``positions`` (B, k):
    ``out[b, j] = h[b, positions[b, j]]``, shape (B, k, d). The positions index the padded
    batch (as :class:`melbo.prompts.PromptBatch` resolves them, left or right padding alike)."""
    if positions.ndim != 2 or positions.shape[0] != h.shape[0]:
        raise ValueError(f"positions {tuple(positions.shape)} must be (B, k) for hidden states {tuple(h.shape)}")
    pos = positions.to(h.device)
    rows = torch.arange(pos.shape[0], device=h.device)[:, None].expand_as(pos)
    return h[rows, pos]


def residual_stream(
    model: nn.Module,
    layers: nn.ModuleList | Sequence[nn.Module],
    wanted: Sequence[int],
    *,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    positions: Tensor | None = None,
    extra_hooks: Sequence[tuple[nn.Module, PreHook]] = (),
    grad: bool = False,
) -> dict[int, Tensor]:
    """The residual stream ``hidden_states[x]`` of a (left- or right-) padded batch for each
    layer index ``x`` in ``wanted``: the one way melbo reads hidden states.

    ``x < len(layers)`` is what decoder layer ``x`` receives (where melbo steers; equal to
    ``model(..., output_hidden_states=True).hidden_states[x]``); ``x = len(layers)`` is what the
    last decoder layer returns, *before* the final norm (which ``hidden_states[-1]`` has
    applied). One forward pass, stopped at the deepest layer wanted (:func:`forward_until`:
    padding-free position ids, no KV cache, ``torch.no_grad()`` unless ``grad``);
    ``extra_hooks`` are held during it.

    Parameters
    ----------
    layers : the model's decoder layers (``LayerAccess.layers``)
    positions : Tensor (B, k), optional — read only these tokens of each row
        (:func:`gather_positions`)

    Returns
    -------
    dict x → Tensor, the model's dtype, (B, k, d) at ``positions`` or (B, T, d) (rows at
    padding are meaningless); detached unless ``grad``.
    """
    n = len(layers)
    want = sorted({int(x) for x in wanted})
    if not want or want[0] < 0 or want[-1] > n:
        raise ValueError(f"layers {list(wanted)}: give one or more of 0 … {n} (the model has {n} decoder layers)")
    store: dict[int, Tensor] = {}

    def recorder(x: int) -> PreHook:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            h = layer_input(args, kwargs)
            store[x] = h if grad else h.detach()
        return hook

    deepest = want[-1]
    stop, where = (layers[deepest], "input") if deepest < n else (layers[n - 1], "output")
    hooks = [*extra_hooks, *((layers[x], recorder(x)) for x in want[:-1])]
    store[deepest] = forward_until(model, stop, where=where, input_ids=input_ids,  # type: ignore[arg-type]
                                   attention_mask=attention_mask, extra_hooks=hooks, grad=grad)
    if positions is None:
        return {x: store[x] for x in want}
    return {x: gather_positions(store[x], positions) for x in want}


@contextmanager
def adding_to_inputs(
    additions: Sequence[tuple[str, nn.Module, Tensor]], *, scale: float = 1.0
) -> Iterator[None]:
    """The one steering hook: while open, every forward of ``module`` gets
    ``scale * vector`` added to its input ``hidden_states``, for each ``(label, module, vector)``.

    ``vector`` is (d,) — added at every row and position — or (B, d) — row b gets
    ``vector[b]`` at every position, and a forward with another batch size raises. It is
    cast to the hidden states' dtype and device on every forward (so gradients flow to it and
    in-place updates are seen); under KV-cache generation each new token is steered too.
    ``label`` names the module in errors; the caller checks shapes and values. Hooks are
    removed on exit, also on errors.
    """
    def make(label: str, vec: Tensor) -> PreHook:
        def add(h: Tensor) -> Tensor:  # h: (B, T, d)
            v = vec.to(dtype=h.dtype, device=h.device)
            if v.ndim == 2:
                if v.shape[0] != h.shape[0]:
                    raise RuntimeError(f"{label}: steering for {v.shape[0]} rows got a batch of {h.shape[0]}")
                v = v[:, None, :]  # (B, 1, d)
            return h + scale * v

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return map_layer_input(args, kwargs, add)

        return hook

    with removing() as handles:
        for label, mod, vec in additions:
            handles.append(mod.register_forward_pre_hook(make(label, vec), with_kwargs=True))
        yield
