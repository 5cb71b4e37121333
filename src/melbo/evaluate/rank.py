"""Ranking features: by α², or by a readout through the rest of the model.

The readout score of a feature v is the change it causes, at the first generated position,
in the model's own ``logit(A) − logit(B)``, read from the last decoder layer's output by
:func:`melbo.models.logits.token_logits` (final norm, the two unembedding rows plus bias, the
model's soft-capping / logit scaling; never full-vocabulary logits) — the same readout as the
jailbreak score of :mod:`melbo.evaluate.scores`::

    score(v) = mean_i [ D(F_{s→L}(x_i + R v)[-1]) − D(y_i[-1]) ],   D(h) = logit_A(h) − logit_B(h)

Token strings are resolved with the tokenizer without special tokens and must be a single
token; " Sure" (leading space) and "Sure" are different tokens — pass the one your prompt
format produces (after a chat template's generation prompt there is usually no space).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from melbo.maps.transformer import TransformerCausalMap
from melbo.models.access import LayerAccess, get_layer_access
from melbo.models.logits import token_logits
from melbo.prompts import PromptLike


def resolve_token(tokenizer: Any, text: str) -> int:
    """The id of a single-token string; a clear error if it splits into several tokens."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"token string {text!r} must be a non-empty string")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        alt = text[1:] if text.startswith(" ") else " " + text
        raise ValueError(
            f"{text!r} is {len(ids)} tokens {pieces}, not one; pick a single-token string "
            f"(try {alt!r} or a shorter word)"
        )
    return int(ids[0])


def rank_by_alpha(alpha: Tensor) -> Tensor:
    """Feature indices ordered by α² (largest first). alpha: (m,) → (m,) long."""
    return torch.argsort(alpha.detach().double() ** 2, descending=True, stable=True)


def readout_scores(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    V: Tensor,
    *,
    R: float,
    source_layer: int,
    token_a: str = "Sure",
    token_b: str = "Sorry",
    chat: bool | str = "auto",
    system_prompt: str | None = None,
    access: LayerAccess | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Readout score per feature. V: (d, m) unit columns → (m,) scores (see module doc)."""
    access = access or get_layer_access(model)
    ia, ib = resolve_token(tokenizer, token_a), resolve_token(tokenizer, token_b)
    delta = TransformerCausalMap(
        model, prompts, source_layer, access.n_layers, tokenizer=tokenizer, positions=1,
        chat=chat, system_prompt=system_prompt, access=access, chunk_size=chunk_size,
    )

    def fn(h: Tensor) -> Tensor:  # (B, k, d) → (B, k)
        z = token_logits(model, h, (ia, ib), access)  # (B, k, 2), float32
        return z[..., 0] - z[..., 1]

    return delta.readout(float(R) * V, fn)
