"""Progress-bar toggles: silence transformers' and huggingface_hub's bars for a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["transformers_progress"]


@contextlib.contextmanager
def transformers_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' (and huggingface_hub's) progress bars while loading, unless
    ``enabled``; restores the previous setting afterwards. Leaves them alone when enabled."""
    if enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hub_was_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        if hub_was_disabled:
            disable_progress_bars()
