"""melbo: mechanistically eliciting latent behaviours in language models.

Deep causal transcoders fit a shallow MLP to the causal map Δ from a source layer to a
target layer; its input directions are steering vectors. See ``melbo.causal_map``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "get_layer_access", "TransformerCausalMap", "build_prompts"]


def __getattr__(name: str) -> Any:  # lazy: `import melbo` stays cheap for the CLI
    if name == "load_model":
        from melbo.models.loading import load_model

        return load_model
    if name == "get_layer_access":
        from melbo.models.access import get_layer_access

        return get_layer_access
    if name == "TransformerCausalMap":
        from melbo.causal_map import TransformerCausalMap

        return TransformerCausalMap
    if name == "build_prompts":
        from melbo.prompts import build_prompts

        return build_prompts
    raise AttributeError(f"module 'melbo' has no attribute {name!r}")
