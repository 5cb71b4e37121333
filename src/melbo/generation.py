"""Batched, padding-correct text generation (greedy or seeded sampling) for steered models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from melbo.prompts import PromptLike, build_prompts


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    *,
    max_new_tokens: int = 32,
    chat: bool | str = "auto",
    system_prompt: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[str]:
    """Complete each prompt; returns only the generated text.

    Prompts are left-padded so that every row's next token comes right after its prompt.
    Sampling is seeded (``seed``) and reproducible on the same device.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be ≥ 1")
    device = next(model.parameters()).device
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", 0)
    outs: list[str] = []
    prompts = list(prompts)
    for start in range(0, len(prompts), batch_size):
        batch = build_prompts(
            tokenizer, prompts[start : start + batch_size], chat=chat,  # type: ignore[arg-type]
            system_prompt=system_prompt, positions=1, padding_side="left",
        ).to(device)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": pad}
        if do_sample:
            kwargs["temperature"] = temperature
            torch.manual_seed(seed + start)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            seq = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)  # type: ignore[operator]
        new = seq[:, batch.input_ids.shape[1] :]
        outs.extend(tokenizer.decode(row, skip_special_tokens=True) for row in new)
    return outs
