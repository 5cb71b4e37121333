"""The prompt's unsteered prefix, computed once and shared by every steering vector.

Steering at the input of ``layers[s]`` leaves layers ``0..s-1`` untouched, so on a prompt
their key/value cache is the same for every vector. :func:`shared_prefix` runs the prompts
once (n rows, all but the last token) and records

* the keys and values each layer below ``s`` writes to the cache (the arguments of the
  cache's ``update`` — the same call the model makes, so sliding-window layers trim as they
  would), and
* the hidden states entering ``layers[s]`` and the arguments every layer ``s..L-1`` is called
  with (masks, rotary embeddings, positions), as :mod:`melbo.models.slice` does.

:meth:`SharedPrefix.prefill` then builds a chunk's cache: the recorded keys and values of
each row's prompt go into a fresh cache for layers ``< s``, layers ``s..L-1`` are replayed on
the rows (steering hook active), and the last prompt token runs through the whole model,
giving the first logits through the model's own head. Only the model's own modules run,
and nothing is changed on it; every hook is removed on exit.

This needs a transformers ``Cache`` that the attention layers ``update`` with their layer
index; :func:`shared_prefix` returns None (and the caller runs whole prompts) when a model
does not record a full prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from melbo.generation.decode import Forward, new_cache
from melbo.models.hooks import StopForward, layer_input, position_ids, removing

__all__ = ["SharedPrefix", "shared_prefix"]

logger = logging.getLogger(__name__)


def _select_rows(obj: Any, n: int, idx: Tensor, old: Any, new: Any) -> Any:
    """``obj`` with every tensor of leading dim ``n`` (≥ 2-D) indexed by ``idx`` and the
    object ``old`` (the recording cache) replaced by ``new``."""
    if obj is old:
        return new
    if isinstance(obj, Tensor):
        return obj[idx.to(obj.device)] if obj.ndim >= 2 and obj.shape[0] == n else obj
    if isinstance(obj, tuple):
        return tuple(_select_rows(o, n, idx, old, new) for o in obj)
    if isinstance(obj, list):
        return [_select_rows(o, n, idx, old, new) for o in obj]
    if isinstance(obj, dict):
        return {k: _select_rows(v, n, idx, old, new) for k, v in obj.items()}
    return obj


@dataclass
class SharedPrefix:
    """What :meth:`prefill` needs, recorded on ``n`` prompts (all but their last token)."""

    model: nn.Module
    layers: list[nn.Module]
    layer: int
    n: int
    input_ids: Tensor
    attention_mask: Tensor
    kv: dict[int, tuple[Tensor, Tensor, tuple[Any, ...], dict[str, Any]]]
    h: Tensor
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    recorder: Any

    def prefill(self, forward: Forward, prompt_idx: Tensor, steering: Callable[[Tensor], Any]) -> tuple[Any, Tensor]:
        """A fresh cache holding the prompts ``prompt_idx`` (one per row) and the rows'
        first logits. ``steering(rows)`` is the context manager that steers those rows."""
        cache = new_cache(self.model)
        for i in range(self.layer):
            k, v, args, kwargs = self.kv[i]
            idx = prompt_idx.to(k.device)
            cache.update(k[idx], v[idx], i, *args, **kwargs)
        B = int(prompt_idx.shape[0])
        rows = torch.arange(B)
        h = self.h[prompt_idx.to(self.h.device)]
        with torch.no_grad(), steering(rows):
            for j, layer in enumerate(self.layers[self.layer :]):
                args, kwargs = _select_rows(self.calls[j], self.n, prompt_idx, self.recorder, cache)
                if args and isinstance(args[0], Tensor):
                    out = layer(h.to(args[0].device), *args[1:], **kwargs)
                else:
                    out = layer(*args, **{**kwargs, "hidden_states": h})
                h = out if isinstance(out, Tensor) else out[0]
        ids = self.input_ids[prompt_idx.to(self.input_ids.device)]
        mask = self.attention_mask[prompt_idx.to(self.attention_mask.device)]
        pos = position_ids(mask)[:, -1:]
        with torch.no_grad():
            logits = forward(ids[:, -1:], mask, pos, cache, rows.to(ids.device))
        return cache, logits


def shared_prefix(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layer: int, *, access: Any) -> SharedPrefix | None:
    """Record the unsteered prefix of left-padded prompts below ``layer`` (see the module
    docstring); None when the prompts are one token long or the model does not fill a
    ``Cache`` layer by layer."""
    from melbo.generation.decode import forward_kwargs

    n, T = input_ids.shape
    if T < 2 or layer < 1:
        return None
    layers = list(access.layers)
    recorder = new_cache(model)
    kv: dict[int, tuple[Tensor, Tensor, tuple[Any, ...], dict[str, Any]]] = {}
    orig_update = recorder.update

    def update(key: Tensor, value: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        if layer_idx < layer and layer_idx not in kv:
            kv[layer_idx] = (key, value, args, kwargs)
        return orig_update(key, value, layer_idx, *args, **kwargs)

    recorder.update = update
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    store: dict[str, Tensor] = {}

    def record(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not calls:
            store["h"] = layer_input(args, kwargs)
        calls.append((args, dict(kwargs)))
        if len(calls) == len(layers) - layer:
            raise StopForward

    ids, mask = input_ids[:, :-1], attention_mask[:, :-1]
    cache_name, keep = forward_kwargs(model)
    kw: dict[str, Any] = {cache_name: recorder, "use_cache": True}
    with removing() as handles, torch.no_grad():
        for mod in layers[layer:]:
            handles.append(mod.register_forward_pre_hook(record, with_kwargs=True))
        try:
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), **kw)  # type: ignore[operator]
        except StopForward:
            pass
    if sorted(kv) != list(range(layer)) or len(calls) != len(layers) - layer or "h" not in store:
        logger.info("shared prefix: the model did not fill its cache layer by layer; running whole prompts")
        return None
    return SharedPrefix(model=model, layers=layers, layer=layer, n=n, input_ids=input_ids,
                        attention_mask=attention_mask, kv=kv, h=store["h"], calls=calls, recorder=recorder)
