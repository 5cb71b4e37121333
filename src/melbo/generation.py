"""Batched, padding-correct text generation (greedy or seeded sampling) for steered models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from melbo.prompts import PromptLike, build_prompts

__all__ = ["generate", "generate_steered"]


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
    _check_counts(max_new_tokens, batch_size)
    device = next(model.parameters()).device
    outs: list[str] = []
    prompts = list(prompts)
    for start in range(0, len(prompts), batch_size):
        batch = build_prompts(
            tokenizer, prompts[start : start + batch_size], chat=chat,  # type: ignore[arg-type]
            system_prompt=system_prompt, positions=1, padding_side="left",
        ).to(device)
        outs.extend(_generate_rows(model, tokenizer, batch.input_ids, batch.attention_mask, max_new_tokens,
                                   do_sample, temperature, seed + start))
    return outs


def _check_counts(max_new_tokens: int, batch_size: int) -> None:
    for name, v in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: must be an integer ≥ 1")


def _generate_rows(model: nn.Module, tokenizer: Any, ids: Tensor, mask: Tensor, max_new_tokens: int,
                   do_sample: bool, temperature: float, seed: int) -> list[str]:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", 0)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": pad}
    if do_sample:
        kwargs["temperature"] = temperature
        torch.manual_seed(seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        seq = model.generate(input_ids=ids, attention_mask=mask, **kwargs)  # type: ignore[operator]
    new = seq[:, ids.shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new]


def generate_steered(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    vectors: Tensor,
    *,
    layer: int,
    scale: float = 1.0,
    max_new_tokens: int = 32,
    chat: bool | str = "auto",
    system_prompt: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    access: Any = None,
) -> list[list[str]]:
    """Completions of every prompt steered by every column of ``vectors``, as one batched job.

    (vector, prompt) pairs are folded into batches of ``batch_size`` rows; row b gets its own
    vector, ``scale * vectors[:, j]``, added to the residual stream entering ``layers[layer]``
    at every position, prompt and generated tokens alike (:func:`melbo.interventions.row_steering`),
    exactly as :func:`melbo.interventions.steer` adds one vector to a whole batch. All prompts
    are left-padded together once. Greedy decoding gives the same tokens as steering one vector at a
    time, up to float rounding of the larger batch; sampling is seeded per batch.

    Parameters
    ----------
    vectors : Tensor, shape (d_model, k)

    Returns
    -------
    list of k lists (one per column of ``vectors``) of ``len(prompts)`` completions (generated
    text only).
    """
    import math

    from melbo.interventions import row_steering
    from melbo.models.access import resolve_access

    _check_counts(max_new_tokens, batch_size)
    acc = resolve_access(model, access)
    if not isinstance(vectors, Tensor) or vectors.ndim != 2 or vectors.shape[0] != acc.d_model:
        shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ValueError(f"vectors must have shape (d_model, k) = ({acc.d_model}, k), got {shape}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    prompts = list(prompts)
    n, k = len(prompts), int(vectors.shape[1])
    if n == 0 or k == 0:
        return [[] for _ in range(k)]
    device = next(model.parameters()).device
    batch = build_prompts(tokenizer, prompts, chat=chat, system_prompt=system_prompt,  # type: ignore[arg-type]
                          positions=1, padding_side="left").to(device)
    vec = (vectors.detach().to(torch.float32) * float(scale)).T  # (k, d)
    texts: list[str] = []
    starts = range(0, k * n, batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=k * n, desc="melbo: steered generation", unit="completion")
    for start in starts:
        pairs = torch.arange(start, min(k * n, start + batch_size))  # pair p = (vector p // n, prompt p % n)
        pi, vi = pairs % n, pairs // n
        ids, mask = batch.input_ids[pi.to(device)], batch.attention_mask[pi.to(device)]
        keep = int(mask.sum(dim=0).nonzero().min()) if bool(mask.any()) else 0
        ids, mask = ids[:, keep:], mask[:, keep:]  # drop columns that are padding in every row
        with row_steering(model, layer, vec[vi], access=acc):
            texts.extend(_generate_rows(model, tokenizer, ids, mask, max_new_tokens, do_sample, temperature, seed + start))
        if bar is not None:
            bar.update(len(pairs))
    if bar is not None:
        bar.close()
    return [texts[j * n : (j + 1) * n] for j in range(k)]
