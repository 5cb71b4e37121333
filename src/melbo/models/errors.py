"""The two ways loading a model fails: nothing found under the name, or found but unreadable."""

from __future__ import annotations

__all__ = ["ModelLoadError", "ModelNotFoundError"]


class ModelNotFoundError(ValueError):
    """No model under the given name: not a packaged model, not a local directory with a
    ``config.json``, and not in the local Hugging Face cache (melbo never downloads)."""


class ModelLoadError(ValueError):
    """The model was found, but transformers could not load it (the message says why)."""
