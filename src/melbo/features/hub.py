"""Features as a Hugging Face Hub repository: where to find one, and its model card.

:meth:`~melbo.features.Features.save_pretrained` writes the two files of
:mod:`melbo.features.format` plus a model card ``README.md`` (:func:`model_card`), so the
directory can be uploaded as a Hub repository as it is.
:meth:`~melbo.features.Features.from_pretrained` reads a directory or a repository id, which
:func:`pretrained_dir` finds in the local Hugging Face cache (``HF_HUB_CACHE``); melbo is
offline by default and downloads only with ``download=True``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from melbo.features.format import CONFIG_FILE, TENSORS_FILE, melbo_version

__all__ = ["MODEL_CARD_FILE", "model_card", "pretrained_dir"]

MODEL_CARD_FILE = "README.md"


def pretrained_dir(
    name_or_path: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The directory holding the features of a local directory or a Hub repository id.

    A local directory is returned as it is (``subfolder`` inside it, if given). Any other
    ``name_or_path`` must be a repository id (``owner/name``): the snapshot directory of the
    local Hugging Face cache (``cache_dir``, default ``HF_HUB_CACHE``) holding its
    ``config.json`` and ``features.safetensors``. With ``download=True`` missing files are
    fetched with :func:`huggingface_hub.hf_hub_download` (into that cache, in its layout;
    ``HF_HUB_OFFLINE=1`` still forbids it).

    Raises
    ------
    FileNotFoundError
        naming the repository, the file and the cache when it is not there (and how to fetch
        it), or when ``name_or_path`` is neither a directory nor a repository id.
    ValueError
        if the two files resolve to different snapshots.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path / subfolder if subfolder else path
    raw = os.fspath(name_or_path)
    from melbo.models.source import _is_hub_id

    if not isinstance(name_or_path, str) or not _is_hub_id(raw):
        raise FileNotFoundError(
            f"{raw!r} is not a directory and not a Hugging Face repository id (owner/name)"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
    )

    cache = os.fspath(cache_dir) if cache_dir is not None else HF_HUB_CACHE
    where = f"{raw!r}" + (f" (subfolder {subfolder!r})" if subfolder else "") + (
        f" at revision {revision!r}" if revision else ""
    )
    found: list[Path] = []
    for name in (CONFIG_FILE, TENSORS_FILE):
        try:
            found.append(Path(hf_hub_download(
                raw, name, subfolder=subfolder, revision=revision,
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                local_files_only=not download, library_name="melbo", library_version=melbo_version(),
            )))  # fmt: skip
        except LocalEntryNotFoundError as err:
            how = (
                "HF_HUB_OFFLINE is set or the Hub cannot be reached"
                if download
                else "melbo does not download unless asked: pass download=True, or fetch it "
                f"once with `hf download {raw}`"
            )
            raise FileNotFoundError(
                f"{name} of {where} is not in the local Hugging Face cache ({cache}); {how}"
            ) from err
        except (EntryNotFoundError, HfHubHTTPError, OSError) as err:
            raise FileNotFoundError(f"could not get {name} of {where} from the Hub: {err}") from err
    if found[0].parent != found[1].parent:
        raise ValueError(
            f"{where}: {CONFIG_FILE} and {TENSORS_FILE} resolved to different snapshots "
            f"({found[0].parent}, {found[1].parent}); pass an explicit revision"
        )
    return found[0].parent


def model_card(config: Mapping[str, Any], *, n_factors: int, d_model: int) -> str:
    """The ``README.md`` of :meth:`~melbo.features.Features.save_pretrained`: Hub metadata
    (``library_name: melbo``, tags, ``base_model`` when the fingerprint names a Hub id) and how
    to apply the features, from their ``config`` (:meth:`~melbo.features.Features.to_config`)."""
    from melbo.models.source import _is_hub_id

    hook = config["hook"]
    name = str(config["model"].get("name", ""))
    base = f"base_model: {name}\n" if name and not name.startswith((".", "/", "~")) and _is_hub_id(name) else ""
    s, t = config["source_layer"], config["target_layer"]
    llama = hook["llama_cpp_direction"]
    return (
        "---\n"
        "library_name: melbo\n"
        f"{base}"
        "tags:\n  - melbo\n  - steering-vectors\n  - deep-causal-transcoder\n"
        "---\n\n"
        f"# {n_factors} melbo features ({config['method']}, layers {s} → {t})\n\n"
        f"Fitted on `{name or 'an unrecorded model'}` with melbo {config['melbo_version']}; "
        f"steering norm R = {config['R']:g}, d_model = {d_model}.\n\n"
        "```python\nfrom melbo.features import Features\n"
        "features = Features.from_pretrained(\"<this directory or repo id>\")\n```\n\n"
        f"Where they apply: {hook['description']}.\n\n"
        "| tool | hook site |\n|---|---|\n"
        f"| Hugging Face transformers | input of `{hook['module']}`"
        + (f" = output of `{hook['output_of']}`" if hook["output_of"] else "")
        + " |\n"
        f"| TransformerLens / SAELens | `{hook['transformer_lens']}` |\n"
        f"| llama.cpp control vector | "
        + (f"`direction.{llama}` (`melbo export DIR --format gguf`)" if llama is not None else "not expressible (s < 2)")
        + " |\n\n"
        "Files: `features.safetensors` (`V` (d_model, m) input directions, `U` output directions, "
        "`alpha`), `config.json` (R, layers, method, model fingerprint, `hook`).\n"
    )
