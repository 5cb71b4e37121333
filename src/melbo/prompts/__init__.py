"""Prompts in: building the padded token batch with target positions (:mod:`melbo.prompts.batch`),
reading prompt files (:mod:`melbo.prompts.files`) and the demo's own prompt set
(:mod:`melbo.prompts.builtin`).

Names are imported on first use (:mod:`melbo._lazy`): reading a prompt file (what the command
line does before a model loads) imports no torch.
"""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "FALLBACK_TEMPLATE": "melbo.prompts.batch:FALLBACK_TEMPLATE",
    "Message": "melbo.prompts.batch:Message",
    "Positions": "melbo.prompts.batch:Positions",
    "PromptBatch": "melbo.prompts.batch:PromptBatch",
    "PromptLike": "melbo.prompts.batch:PromptLike",
    "build_prompts": "melbo.prompts.batch:build_prompts",
    "format_chat": "melbo.prompts.batch:format_chat",
    "resolve_positions": "melbo.prompts.batch:resolve_positions",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from melbo.prompts.batch import FALLBACK_TEMPLATE as FALLBACK_TEMPLATE
    from melbo.prompts.batch import Message as Message
    from melbo.prompts.batch import Positions as Positions
    from melbo.prompts.batch import PromptBatch as PromptBatch
    from melbo.prompts.batch import PromptLike as PromptLike
    from melbo.prompts.batch import build_prompts as build_prompts
    from melbo.prompts.batch import format_chat as format_chat
    from melbo.prompts.batch import resolve_positions as resolve_positions

del TYPE_CHECKING, lazy_exports
