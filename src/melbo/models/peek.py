"""What a model's ``config.json`` says, read without loading the model: so the command line can
check layer indices against the model's depth before a load of 20–70 s.

Only what is already on disk is read (a local directory, the packaged model's converted copy,
the local Hugging Face cache); where nothing is (a GGUF file, a packaged model not converted
yet) the answer is ``None`` and the check waits for the loaded model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["check_config", "peek_config", "peek_context", "peek_hidden_size", "peek_n_layers"]

_MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a config.json is a few KB; anything larger is not read here


def _config_path(name_or_path: str | os.PathLike[str]) -> Path | None:
    raw = os.fspath(name_or_path)
    if not raw.strip():
        return None
    from melbo.models.packaged import PACKAGED_MODELS

    if isinstance(name_or_path, str) and raw in PACKAGED_MODELS:
        from melbo.store.cache import cache_dir

        p = cache_dir() / "models" / PACKAGED_MODELS[raw].name / "config.json"
        return p if p.is_file() else None
    path = Path(raw).expanduser()
    if path.suffix.lower() == ".gguf":
        return None
    if path.is_dir():
        p = path / "config.json"
        return p if p.is_file() else None
    if path.exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(raw, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id, no cache: nothing to peek at
        return None
    return Path(cached) if isinstance(cached, str) else None


def peek_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The model's ``config.json`` as a dict, or ``None`` when it is not on disk or unreadable
    (loading the model then reports what is wrong)."""
    p = _config_path(name_or_path)
    if p is None:
        return None
    try:
        if p.stat().st_size > _MAX_CONFIG_BYTES:
            return None
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return cfg if isinstance(cfg, dict) else None


def peek_n_layers(name_or_path: str | os.PathLike[str]) -> int | None:
    """Number of decoder layers named by the model's ``config.json`` (``num_hidden_layers``,
    also inside ``text_config``; GPT-2's ``n_layer``), or ``None`` when unknown."""
    cfg = peek_config(name_or_path)
    if cfg is None:
        return None
    for c in (cfg, cfg.get("text_config")):
        if isinstance(c, dict):
            for key in ("num_hidden_layers", "n_layer", "num_layers"):
                v = c.get(key)
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
    return None


def _peek_int(name_or_path: str | os.PathLike[str], keys: tuple[str, ...]) -> int | None:
    """The first positive integer under ``keys`` in the model's ``config.json`` (or its
    ``text_config``), or ``None`` when unknown."""
    cfg = peek_config(name_or_path)
    if cfg is None:
        return None
    for c in (cfg, cfg.get("text_config")):
        if isinstance(c, dict):
            for key in keys:
                v = c.get(key)
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
    return None


def peek_hidden_size(name_or_path: str | os.PathLike[str]) -> int | None:
    """The width d_model of the residual stream (``hidden_size``, GPT-2's ``n_embd``, ``d_model``)
    from the model's ``config.json``, or ``None`` when unknown."""
    return _peek_int(name_or_path, ("hidden_size", "n_embd", "d_model"))


def peek_context(name_or_path: str | os.PathLike[str]) -> int | None:
    """The model's context in tokens (``max_position_embeddings``, GPT-2's ``n_positions``) from
    its ``config.json``, or ``None`` when unknown (the keys :func:`melbo.prompts.build_prompts` reads)."""
    return _peek_int(name_or_path, ("max_position_embeddings", "n_positions", "max_sequence_length"))


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def check_config(name_or_path: str | os.PathLike[str]) -> None:
    """Refuse a ``config.json`` on disk that transformers would choke on with a Python error (not
    JSON, nested too deep, not an object, a layer count that is not a positive integer), naming the
    file — a :class:`melbo.store.io.FileFormatError` (``ValueError``). Nothing on disk: nothing to check."""
    from melbo.store.io import FileFormatError, read_json_file

    p = _config_path(name_or_path)
    if p is None:
        return
    cfg = read_json_file(p, what="model config", max_bytes=_MAX_CONFIG_BYTES)
    if not isinstance(cfg, dict):
        raise FileFormatError(f"{p}: a model's config.json must be a JSON object, got {type(cfg).__name__}")
    for c in (cfg, cfg.get("text_config")):
        if isinstance(c, dict):
            for key in _LAYER_KEYS:
                v = c.get(key)
                if key in c and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                    raise FileFormatError(f"{p}: {key}={v!r} must be a positive integer")
