"""A lean decode loop over a model's own forward and KV cache: greedy or seeded sampling,
end-of-sequence and stop rules, finished rows dropped from the batch.

For small models ``model.generate`` spends a noticeable share of each step outside the
forward pass, and it keeps computing rows that have finished. :func:`decode` does only:
forward the new tokens with the cache → pick the next token per row → drop the rows that
are done. It never touches the model; what happens inside a forward (steering hooks) is the
caller's ``forward`` callable.

Greedy picks ``argmax`` of the last logits (first maximum on ties, as ``model.generate``);
sampling draws by inverse CDF with one uniform per row and step from that row's own seed,
so a row's text does not depend on which rows share its batch.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from melbo.models.hooks import position_ids

__all__ = ["DecodeSettings", "Forward", "decode", "forward_kwargs", "new_cache"]

logger = logging.getLogger(__name__)

#: ``forward(input_ids, attention_mask, position_ids, cache, rows) -> last-position logits (B, V)``;
#: ``rows`` are the indices (into the original batch) of the rows being computed.
Forward = Callable[[Tensor, Tensor, Tensor, Any, Tensor], Tensor]


@dataclass(frozen=True)
class DecodeSettings:
    """What to generate: at most ``max_new_tokens`` per row, greedy unless ``do_sample``
    (softmax of logits / ``temperature``, one seed per row); a row ends at any of ``eos_ids``
    or when ``stopped(row, tokens)`` says so. ``on_token(row, tokens)``, if given, sees each
    row's tokens so far after every new token (streaming)."""

    max_new_tokens: int
    eos_ids: frozenset[int] = frozenset()
    do_sample: bool = False
    temperature: float = 1.0
    row_seeds: Sequence[int] = field(default_factory=tuple)
    stopped: Callable[[int, list[int]], bool] | None = None
    on_token: Callable[[int, list[int]], None] | None = None


def forward_kwargs(model: nn.Module) -> tuple[str, bool]:
    """The name of the model's cache argument (``cache`` in newer transformers, else
    ``past_key_values``) and whether it takes ``logits_to_keep``."""
    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return name, "logits_to_keep" in params


def new_cache(model: nn.Module) -> Any:
    """An empty ``DynamicCache`` laid out for ``model`` (sliding-window layers included)."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    try:
        return DynamicCache(config=config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def model_forward(model: nn.Module) -> Forward:
    """A :data:`Forward` that runs ``model`` as is (its own hooks apply)."""
    cache_name, keep = forward_kwargs(model)

    def fwd(ids: Tensor, mask: Tensor, pos: Tensor, cache: Any, rows: Tensor) -> Tensor:
        kw: dict[str, Any] = {cache_name: cache, "use_cache": True}
        if keep:
            kw["logits_to_keep"] = 1
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)  # type: ignore[operator]
        return out.logits[:, -1]

    return fwd


def _pick(logits: Tensor, settings: DecodeSettings, uniforms: Tensor | None, step: int) -> Tensor:
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    assert uniforms is not None
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    cdf = probs.cumsum_(dim=-1)
    u = uniforms[:, step : step + 1] * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def _uniforms(seeds: Sequence[int], n: int) -> Tensor:
    g = torch.Generator()
    out = torch.empty(len(seeds), n)
    for r, s in enumerate(seeds):
        g.manual_seed(int(s) % (2**63))
        out[r] = torch.rand(n, generator=g)
    return out


def decode(
    forward: Forward,
    input_ids: Tensor,
    attention_mask: Tensor,
    settings: DecodeSettings,
    *,
    cache: Any,
    first_logits: Tensor | None = None,
    compact_fraction: float = 0.125,
) -> list[list[int]]:
    """Generate up to ``settings.max_new_tokens`` tokens for each row of a left-padded batch.

    Parameters
    ----------
    forward : Forward
        Runs the model on new tokens with ``cache`` and returns the last-position logits.
    input_ids, attention_mask : Tensor, shape (B, T)
        Left-padded prompts. With ``first_logits`` given they are already in ``cache``.
    cache : a transformers ``Cache``
        Empty, or holding the prompts when ``first_logits`` is given.
    first_logits : Tensor (B, V), optional
        The prompts' last-position logits (the prompt was run by the caller).
    compact_fraction : float
        Finished rows are dropped from the batch (and the cache) once they are at least this
        share of it; until then they are computed and ignored.

    Returns
    -------
    list of B lists of new token ids; a row ending at an end-of-sequence token includes it.
    """
    B = input_ids.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    if B == 0:
        return out
    uniforms = _uniforms(settings.row_seeds, settings.max_new_tokens) if settings.do_sample else None
    if uniforms is not None and uniforms.shape[0] != B:
        raise ValueError(f"row_seeds has {uniforms.shape[0]} seeds for a batch of {B} rows")
    rows = torch.arange(B, device=input_ids.device)  # original index of each live row
    live = torch.ones(B, dtype=torch.bool)  # over the current rows: not finished
    mask = attention_mask
    with torch.no_grad():
        if first_logits is None:
            logits = forward(input_ids, mask, position_ids(mask), cache, rows)
        else:
            logits = first_logits
        for step in range(settings.max_new_tokens):
            u = None if uniforms is None else uniforms[rows.cpu()]
            nxt = _pick(logits, settings, u, step)
            toks = nxt.tolist()
            for r, (orig, t) in enumerate(zip(rows.tolist(), toks, strict=True)):
                if not live[r]:
                    continue
                out[orig].append(t)
                if settings.on_token is not None:
                    settings.on_token(orig, out[orig])
                if t in settings.eos_ids or (settings.stopped is not None and settings.stopped(orig, out[orig])):
                    live[r] = False
            if step + 1 == settings.max_new_tokens or not bool(live.any()):
                break
            done = int((~live).sum())
            if done and done >= compact_fraction * len(live):
                keep = live.nonzero().squeeze(1)
                keep_dev = keep.to(mask.device)
                cache.batch_select_indices(keep_dev)
                rows, mask, nxt, live = rows[keep_dev], mask[keep_dev], nxt[keep_dev], live[keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            pos = (mask.long().sum(dim=1, keepdim=True) - 1)
            logits = forward(nxt[:, None], mask, pos, cache, rows)
    logger.debug("decoded %d rows, %d new tokens", B, sum(map(len, out)))
    return out
