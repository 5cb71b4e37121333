"""Source resolution: what a name, a path or a Hugging Face id means, before anything is loaded.

:func:`resolve_source` checks the name against the packaged models, the file system and the
local Hugging Face cache (melbo never downloads) and returns a :class:`ModelSource`; the
errors name what was looked for and how to fix it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from melbo.models.errors import ModelNotFoundError

__all__ = ["ModelSource", "resolve_source"]


@dataclass(frozen=True)
class ModelSource:
    """Where to load from.

    Attributes
    ----------
    kind
        ``"packaged"`` (a packaged model's name), ``"dir"`` (a saved model directory, or the
        directory of a GGUF file), ``"adapter"`` (a peft adapter directory without a merged
        model: ``adapter_config.json``, no ``config.json``) or ``"hub"`` (a repository in the
        local Hugging Face cache).
    location
        The packaged name, the directory or the repository id.
    gguf_file
        The GGUF file inside ``location`` (``None``: a saved Hugging Face model).
    description
        How log lines and error messages name it.
    """

    kind: Literal["packaged", "dir", "adapter", "hub"]
    location: str
    gguf_file: str | None
    description: str


def resolve_source(
    name_or_path: str | os.PathLike[str], gguf_file: str | None, *, packaged: Collection[str]
) -> ModelSource:
    """Resolve ``name_or_path`` (and ``gguf_file``) in the order
    :func:`melbo.models.loading.load_model` documents: a name in ``packaged``, a ``.gguf``
    path, a local directory, a Hugging Face id already in the local cache.

    Raises
    ------
    ModelNotFoundError, FileNotFoundError, ValueError
        As documented by :func:`melbo.models.loading.load_model`.
    """
    raw = os.fspath(name_or_path)
    if not raw.strip():
        raise ModelNotFoundError(
            f"name_or_path is empty; give a packaged model ({_names(packaged)}), "
            "a local path or a Hugging Face model id"
        )
    if isinstance(name_or_path, str) and raw in packaged:
        if gguf_file is not None:
            raise ValueError(
                f"gguf_file={gguf_file!r} does not apply to the packaged model {raw!r}; "
                "pass a directory or Hugging Face id together with gguf_file"
            )
        return ModelSource("packaged", raw, None, f"packaged model {raw!r}")

    path = Path(raw).expanduser()
    if path.suffix.lower() == ".gguf":
        if gguf_file is not None:
            raise ValueError(
                f"{raw!r} is already a GGUF file; pass either a .gguf path or "
                f"gguf_file={gguf_file!r} with its directory, not both"
            )
        if not path.is_file():
            what = "is a directory, not a GGUF file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"GGUF file {str(path)!r} {what}")
        return gguf_source(path.resolve())

    if path.is_dir():
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                raise FileNotFoundError(
                    f"GGUF file {gguf_file!r} not found in {str(path)!r}" + _list_ggufs_hint(path)
                )
            return ModelSource("dir", str(path), gguf_file, f"GGUF file {str(path / gguf_file)!r}")
        if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
            return ModelSource("adapter", str(path), None, f"peft adapter {str(path)!r}")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"directory {str(path)!r} has no config.json, so it is not a saved Hugging "
                "Face model (save one with model.save_pretrained(dir) and "
                "tokenizer.save_pretrained(dir))" + _list_ggufs_hint(path)
            )
        return ModelSource("dir", str(path), None, f"directory {str(path)!r}")

    if path.exists():
        raise ModelNotFoundError(
            f"{str(path)!r} is a file, but load_model needs a model directory, a .gguf file, "
            "a packaged model name or a Hugging Face model id"
        )
    if not _is_hub_id(raw):
        raise FileNotFoundError(
            f"no such file or directory: {str(path)!r} (and it is not a valid Hugging Face "
            "model id either)"
        )
    _check_in_hub_cache(raw, gguf_file, packaged)
    what = f"GGUF {gguf_file!r} in " if gguf_file else ""
    return ModelSource("hub", raw, gguf_file, f"{what}Hugging Face model {raw!r} (local cache)")


def gguf_source(path: Path) -> ModelSource:
    """The source of an existing GGUF file (its directory and file name)."""
    return ModelSource("dir", str(path.parent), path.name, f"GGUF file {str(path)!r}")


def _names(packaged: Collection[str]) -> str:
    return ", ".join(repr(name) for name in packaged)


def _is_hub_id(name: str) -> bool:
    """Whether ``name`` is shaped like a Hugging Face repository id (``org/name`` or
    ``name``); a path such as ``./x``, ``/x`` or ``a/b/c`` is not."""
    if name.startswith((".", "/", "~", "\\")) or "\\" in name or name.count("/") > 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _check_in_hub_cache(repo_id: str, gguf_file: str | None, packaged: Collection[str]) -> None:
    """Raise :class:`ModelNotFoundError` unless the Hub repository's files are cached."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    filename = gguf_file if gguf_file is not None else "config.json"
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return
    hint = ""
    close = difflib.get_close_matches(repo_id, list(packaged), n=1, cutoff=0.6)
    if close:
        hint = f" Did you mean the packaged model {close[0]!r}?"
    raise ModelNotFoundError(
        f"{repo_id!r} is not a packaged model ({_names(packaged)}), not a local path, and "
        f"its {filename} is not in the local Hugging Face cache ({HF_HUB_CACHE}).{hint} "
        "melbo never downloads models. To use a Hub model, download it once yourself, e.g. "
        f"`hf download {repo_id}` (or huggingface_hub.snapshot_download({repo_id!r})), "
        "then call load_model again; or pass the path of a directory saved with "
        "save_pretrained, or of a .gguf file."
    ) from None


def _list_ggufs_hint(directory: Path) -> str:
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if not ggufs:
        return ""
    shown = ", ".join(repr(name) for name in ggufs[:5])
    more = f" and {len(ggufs) - 5} more" if len(ggufs) > 5 else ""
    return f"; it holds GGUF files ({shown}{more}): pass one as gguf_file= or give its path"
