"""Semantic embeddings of texts from the subject model itself: no second model, no download.

A text's embedding is the mean of the residual stream entering ``layer`` (default: about two
thirds of the depth, where a model's hidden states carry meaning rather than surface form) over
the text's tokens, the first (beginning-of-sequence) token left out. Used by discovery to see
what a steering vector changed in what the model said (:mod:`melbo.evaluate.descriptors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from melbo.models.access import get_layer_access
from melbo.models.hooks import residual_stream

__all__ = ["default_embed_layer", "embed_texts"]


def default_embed_layer(n_layers: int) -> int:
    """About two thirds of the depth (12 of Gemma-3-270M's 18 layers)."""
    return max(1, min(n_layers - 1, round(n_layers * 2 / 3)))


def embed_texts(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, layer: int | None = None,
                batch_size: int = 64, max_tokens: int = 64) -> Tensor:
    """(len(texts), d) float32 mean hidden states entering ``layer`` over each text's tokens
    (truncated to ``max_tokens``; an empty text embeds as the beginning-of-sequence state alone).
    Identical texts are embedded once. Device and dtype follow the model."""
    access = get_layer_access(model)
    n_layers = access.n_layers
    L = default_embed_layer(n_layers) if layer is None else layer
    if not 0 <= L < n_layers:
        raise ValueError(f"layer={L}: the model has layers 0 … {n_layers - 1}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be ≥ 1")
    device = next(model.parameters()).device
    uniq = list(dict.fromkeys(str(t) for t in texts))
    out: dict[str, Tensor] = {}
    pad_side = getattr(tokenizer, "padding_side", "right")
    tokenizer.padding_side = "right"
    try:
        for i in range(0, len(uniq), batch_size):
            chunk = uniq[i : i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens + 1)
            ids = enc["input_ids"].to(device)
            mask = enc["attention_mask"].to(device)
            h = residual_stream(model, access.layers, [L], input_ids=ids, attention_mask=mask)[L].to(torch.float32)
            keep = mask.clone().to(torch.float32)
            lengths = mask.sum(1)
            has_bos = tokenizer.bos_token_id is not None and bool((ids[:, 0] == tokenizer.bos_token_id).all())
            if has_bos:
                keep[lengths > 1, 0] = 0.0  # the BOS state carries nothing of the text (and a huge norm)
            emb = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1.0)
            for t, e in zip(chunk, emb.cpu()):
                out[t] = e
    finally:
        tokenizer.padding_side = pad_side
    if not texts:
        return torch.zeros(0, int(getattr(model.config, "hidden_size", 0)))
    return torch.stack([out[str(t)] for t in texts])
