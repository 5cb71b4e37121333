"""Prompts → a padded token batch with target positions.

Plain strings are tokenised as they are; chat prompts (a list of ``{"role", "content"}``
messages, or strings with ``chat=True``) go through the tokenizer's chat template with the
generation prompt added and an optional system prompt. A tokenizer without a template
falls back to a plain ``"User: …\\nAssistant:"`` frame (logged once, and recorded in
``PromptBatch.template``).

Tokenisation is per prompt and padding is done here, so the tokenizer object is never
modified (no ``padding_side`` or ``pad_token`` assignment).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import Tensor

from melbo.errors import check_prompts

logger = logging.getLogger(__name__)

Message = dict[str, str]
PromptLike = Union[str, Sequence[Message]]  # noqa: UP007 (runtime alias, py3.10)
Positions = Union[int, Sequence[Sequence[int]]]  # noqa: UP007

FALLBACK_TEMPLATE = "fallback: 'System: …\\n\\nUser: …\\nAssistant:'"


@dataclass(frozen=True)
class PromptBatch:
    """A tokenised, padded prompt batch.

    Attributes
    ----------
    input_ids : Tensor, shape (n, T)
    attention_mask : Tensor, shape (n, T) — 1 for tokens, 0 for padding
    positions : Tensor, shape (n, k) — absolute indices of the target positions (never padding)
    texts : the formatted prompt strings
    template : "none" (plain text), "chat_template" or the fallback description
    """

    input_ids: Tensor
    attention_mask: Tensor
    positions: Tensor
    texts: tuple[str, ...]
    template: str

    @property
    def n(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.positions.to(device),
            self.texts,
            self.template,
        )


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_chat(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    system_prompt: str | None = None,
    add_generation_prompt: bool = True,
) -> tuple[str, str]:
    """Format one conversation; returns (text, template description)."""
    msgs = [dict(m) for m in messages]
    for m in msgs:
        if "role" not in m or "content" not in m:
            raise ValueError(f"chat message {m!r} needs 'role' and 'content' keys")
    if system_prompt and not any(m["role"] == "system" for m in msgs):
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    if _has_template(tokenizer):
        try:
            text = tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            return str(text), "chat_template"
        except Exception as err:  # e.g. a template that rejects the system role
            if msgs and msgs[0]["role"] == "system" and len(msgs) > 1:
                merged = [{"role": msgs[1]["role"], "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}, *msgs[2:]]
                text = tokenizer.apply_chat_template(
                    merged, tokenize=False, add_generation_prompt=add_generation_prompt
                )
                logger.info("chat template rejected the system role (%s); merged it into the first turn", err)
                return str(text), "chat_template"
            raise
    parts = []
    for m in msgs:
        name = {"system": "System", "user": "User", "assistant": "Assistant"}.get(m["role"], m["role"].title())
        parts.append(f"{name}: {m['content']}")
    text = "\n".join(parts)
    if msgs and msgs[0]["role"] == "system":
        text = text.replace("\n", "\n\n", 1)
    if add_generation_prompt:
        text += "\nAssistant:"
    return text, FALLBACK_TEMPLATE


def _max_context(model_config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(model_config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def build_prompts(
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    *,
    chat: bool | Literal["auto"] = "auto",
    system_prompt: str | None = None,
    positions: Positions = 3,
    padding_side: Literal["left", "right"] = "left",
    max_length: int | None = None,
    model_config: Any = None,
) -> PromptBatch:
    """Tokenise and pad prompts and resolve the target positions.

    Parameters
    ----------
    prompts : strings or chat conversations (lists of ``{"role", "content"}`` dicts)
    chat : format strings as a user turn of a chat (True), keep them raw (False), or
        "auto": conversations are formatted, strings kept raw.
    positions : int k (the last k tokens of each prompt) or, per prompt, a list of token
        indices into the unpadded prompt (negative indices count from its end).
    max_length : the model's context; default from ``model_config``. Longer prompts raise.
    """
    prompts = check_prompts(prompts)
    if chat not in (True, False, "auto"):
        raise ValueError(f"chat={chat!r}: expected True, False or 'auto'")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: expected 'left' or 'right'")
    texts: list[str] = []
    ids: list[list[int]] = []
    template = "none"
    warned = False
    for i, p in enumerate(prompts):
        is_conv = not isinstance(p, str)
        if is_conv or chat is True:
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            text, template = format_chat(tokenizer, msgs, system_prompt=system_prompt)
            if template == FALLBACK_TEMPLATE and not warned:
                logger.warning("tokenizer has no chat template; using the plain frame %s", FALLBACK_TEMPLATE)
                warned = True
            special = template == FALLBACK_TEMPLATE  # templates carry their own BOS
        else:
            text, special = str(p), True
        tok = tokenizer(text, add_special_tokens=special)["input_ids"]
        if not tok:
            raise ValueError(f"prompt {i} ({text!r}) tokenises to nothing")
        texts.append(text)
        ids.append(list(tok))
    limit = max_length if max_length is not None else _max_context(model_config)
    if limit is not None:
        for i, t in enumerate(ids):
            if len(t) > limit:
                raise ValueError(
                    f"prompt {i} is {len(t)} tokens long, longer than the model's context of {limit} tokens"
                )
    n, T = len(ids), max(len(t) for t in ids)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None) or 0
    input_ids = torch.full((n, T), int(pad), dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    offsets = []
    for i, t in enumerate(ids):
        off = T - len(t) if padding_side == "left" else 0
        input_ids[i, off : off + len(t)] = torch.tensor(t)
        mask[i, off : off + len(t)] = 1
        offsets.append(off)
    pos = resolve_positions(positions, [len(t) for t in ids], offsets)
    return PromptBatch(input_ids, mask, pos, tuple(texts), template)


def resolve_positions(positions: Positions, lengths: list[int], offsets: list[int]) -> Tensor:
    """Absolute target positions, shape (n, k), from k or per-prompt relative indices."""
    n = len(lengths)
    if isinstance(positions, bool):
        raise TypeError("positions must be an int or per-prompt index lists")
    if isinstance(positions, int):
        k = positions
        if k < 1:
            raise ValueError(f"positions={k}: need at least 1 target position")
        short = [i for i, L in enumerate(lengths) if L < k]
        if short:
            raise ValueError(
                f"positions={k} (last {k} tokens) but prompt(s) {short} have only "
                f"{[lengths[i] for i in short]} tokens"
            )
        rel = [list(range(L - k, L)) for L in lengths]
    else:
        rel = [list(r) for r in positions]
        if len(rel) != n:
            raise ValueError(f"got position lists for {len(rel)} prompts, but there are {n} prompts")
        ks = {len(r) for r in rel}
        if len(ks) != 1 or 0 in ks:
            raise ValueError(f"every prompt needs the same non-zero number of positions, got {sorted(ks)}")
        for i, r in enumerate(rel):
            for j, p in enumerate(r):
                if not -lengths[i] <= p < lengths[i]:
                    raise ValueError(
                        f"position {p} of prompt {i} is outside its {lengths[i]} tokens "
                        f"(valid: {-lengths[i]} … {lengths[i] - 1})"
                    )
                r[j] = p % lengths[i]
    return torch.tensor([[offsets[i] + p for p in r] for i, r in enumerate(rel)], dtype=torch.long)
