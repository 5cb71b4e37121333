"""Where features apply, in the names other tools use for that place.

Features fitted at ``source_layer`` s are applied as ``R * V[:, k]`` added to the residual
stream entering decoder layer s: the input of the Hugging Face module ``model.layers.{s}``
(= the output of ``model.layers.{s-1}``), TransformerLens ``blocks.{s}.hook_resid_pre``,
llama.cpp ``direction.{s-1}``. :func:`hook_site` spells all of them out, so that another tool
applies the features without guessing; ``config.json`` records it as ``hook``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_LAYERS_PATH", "check_int", "hook_site"]

DEFAULT_LAYERS_PATH = "model.layers"
"""The decoder-layer list of most Hugging Face causal LMs; :func:`hook_site` names it when the
features carry no fingerprint with the model's own ``layers_path``."""


def check_int(name: str, value: object) -> int:
    """``value`` if it is an int (not a bool), else a TypeError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return value


def hook_site(source_layer: int, layers_path: str | None = None) -> dict[str, Any]:
    """Where features fitted at ``source_layer`` are applied, in the names other tools use.

    Feature k adds ``scale * R * V[:, k]`` to the residual stream entering decoder layer s =
    ``source_layer``, at every position (prompt and generated tokens): a forward *pre*-hook on
    ``{layers_path}.{s}`` adding to its first input. For s ≥ 1 that is the same as adding to
    the output (the hidden states, first element) of ``{layers_path}.{s-1}``.

    Returns
    -------
    dict
        ``layer`` (s); ``module`` and ``module_io`` ("input"); ``output_of`` (the module whose
        output it equals, None for s = 0: the embedding's output, scaled on some families);
        ``layers_path`` and ``layers_path_known`` (False: :data:`DEFAULT_LAYERS_PATH`, the
        common Hugging Face name, was assumed); ``hidden_states_index`` (``output_hidden_states``
        index s); ``transformer_lens`` (``blocks.{s}.hook_resid_pre``, the SAELens
        ``hook_name``); ``llama_cpp_direction`` (the control-vector tensor ``direction.{s-1}``,
        None for s < 2, which llama.cpp cannot express); ``positions`` ("all"); ``vector``
        ("R * V[:, k]"); ``description``.
    """
    s = check_int("source_layer", source_layer)
    if s < 0:
        raise ValueError(f"source_layer must be ≥ 0, got {s}")
    known = bool(layers_path)
    path = layers_path or DEFAULT_LAYERS_PATH
    return {
        "layer": s,
        "module": f"{path}.{s}",
        "module_io": "input",
        "output_of": f"{path}.{s - 1}" if s >= 1 else None,
        "layers_path": path,
        "layers_path_known": known,
        "hidden_states_index": s,
        "transformer_lens": f"blocks.{s}.hook_resid_pre",
        "llama_cpp_direction": s - 1 if s >= 2 else None,
        "positions": "all",
        "vector": "R * V[:, k]",
        "description": (
            f"feature k adds scale * R * V[:, k] to the residual stream entering decoder layer {s} "
            f"(input of {path}.{s}"
            + (f" = output of {path}.{s - 1}" if s >= 1 else ", the embedding output")
            + "), at every position, prompt and generated tokens alike"
        ),
    }
