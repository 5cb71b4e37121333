"""The on-disk format of features: two files, their versions, and reading older ones.

On disk (``format_version`` 2)::

    <dir>/features.safetensors   tensors V (d, m), alpha (m,) and U (d, m) unless U is None
    <dir>/config.json            R, method, source_layer, target_layer, positions,
                                 history, scores, prompts_hash, model (fingerprint), extra,
                                 hook, melbo_version, format_version, tensors_sha256

``tensors_sha256`` (the sha256 of ``features.safetensors``) proves the pair: the tensors are
written first, the config naming their hash last (each atomically), and :func:`read_features`
refuses a pair whose hashes differ (a save interrupted between the two files, or one file
replaced). Files without it (older melbo) are read as before.

``hook`` (:func:`melbo.features.names.hook_site`) is derived from ``source_layer`` and the
model fingerprint's ``layers_path``; reading only checks that it agrees. Directories written
before it existed still load.

Format 1 (before history/scores were separated) is still read: its ``objective`` is the
per-vector ``scores`` for melbo-v1 and the per-iteration ``history`` otherwise, and the U it
stored for a method without target directions (a copy of V or Δ_R(v)) is dropped.

This module knows files and dicts, not the :class:`~melbo.features.Features` class: it writes
the tensors and config a ``Features`` hands it and reads back the keyword arguments that
construct one.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from melbo.store.io import atomic_write, atomic_write_text, file_sha256, read_json_file

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "TENSORS_FILE",
    "melbo_version",
    "read_features",
    "write_features",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = frozenset({1, 2})
TENSORS_FILE = "features.safetensors"
CONFIG_FILE = "config.json"
_CONFIG_KEYS = (
    "R",
    "method",
    "source_layer",
    "target_layer",
    "positions",
    "history",
    "scores",
    "objective",  # format 1
    "prompts_hash",
    "model",
    "extra",
    "hook",
    "melbo_version",
    "format_version",
    "tensors_sha256",
)
_REQUIRED_CONFIG_KEYS = ("R", "method", "source_layer", "target_layer", "format_version")


def melbo_version() -> str:
    """The running melbo's version: ``melbo.__version__``, the one version source (pyproject reads it too)."""
    from melbo._version import __version__

    return __version__


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0].split("+", 1)[0]
    return int(head) if head.isdigit() else None


def write_features(
    directory: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``tensors`` to ``features.safetensors`` and ``config`` plus their ``tensors_sha256``
    to ``config.json`` in ``directory`` (created if needed); return its path.

    Each file is written to a temporary file in the same directory and moved into place with
    :func:`os.replace`, so a reader never sees a half-written file.

    Raises
    ------
    FileExistsError
        if either file exists and ``overwrite`` is False (nothing is written then).
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    paths = (out / TENSORS_FILE, out / CONFIG_FILE)
    if not overwrite:
        for p in paths:
            if p.exists():
                raise FileExistsError(
                    f"{p} already exists; pass overwrite=True to replace it or choose another directory"
                )
    out.mkdir(parents=True, exist_ok=True)
    on_cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    meta = {"format": "pt", "melbo_format_version": str(FORMAT_VERSION)}
    digest: list[str] = []

    def write_tensors(tmp: Path) -> None:
        save_file(on_cpu, str(tmp), metadata=meta)
        digest.append(file_sha256(tmp))

    atomic_write(paths[0], write_tensors)
    full = {**config, "tensors_sha256": digest[0]}
    atomic_write_text(paths[1], json.dumps(full, indent=2, allow_nan=False) + "\n")
    d, m = on_cpu["V"].shape
    logger.info("saved %d features (d=%d) to %s", m, d, out)
    return out


def read_features(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The keyword arguments of :class:`~melbo.features.Features` stored in ``directory`` by
    :func:`write_features` (any supported format version); tensors are loaded on the CPU.

    Raises
    ------
    FileNotFoundError
        naming a missing file.
    ValueError
        for an unsupported ``format_version``, missing keys or tensors, a tensors file that is
        not the one the config names, or a ``hook`` that disagrees with ``source_layer`` (the
        message names the file).
    """
    src = Path(directory)
    tpath, cpath = src / TENSORS_FILE, src / CONFIG_FILE
    for p in (tpath, cpath):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: {src} is not a saved Features directory")
    cfg = read_json_file(cpath, what="features config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{cpath} must hold a JSON object, got {type(cfg).__name__}")
    missing = [k for k in _REQUIRED_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{cpath} lacks the keys {missing}")
    fv = cfg["format_version"]
    if isinstance(fv, bool) or not isinstance(fv, int) or fv not in SUPPORTED_FORMAT_VERSIONS:  # not True, 1.0
        newer = isinstance(fv, int) and fv > max(SUPPORTED_FORMAT_VERSIONS)
        raise ValueError(
            f"{cpath} has format_version={fv!r}; this melbo ({melbo_version()}) reads "
            f"format_version in {sorted(SUPPORTED_FORMAT_VERSIONS)}"
            + ("; upgrade melbo to read it" if newer else "")
        )
    unknown = sorted(set(cfg) - set(_CONFIG_KEYS))
    if unknown:
        logger.warning("%s: ignoring unknown keys %s", cpath, unknown)
    saved_version = str(cfg.get("melbo_version", "0+unknown"))
    ours = melbo_version()
    if _major(saved_version) is not None and _major(saved_version) != _major(ours):
        warnings.warn(
            f"{src} was written by melbo {saved_version}, this is melbo {ours} "
            "(different major version); check the results",
            UserWarning,
            stacklevel=3,  # the caller of Features.load
        )
    recorded = cfg.get("tensors_sha256")
    if recorded is not None and recorded != file_sha256(tpath):
        raise ValueError(
            f"{tpath} does not match {cpath} (its sha256 differs from the recorded tensors_sha256): a save "
            "was interrupted between the two files or one was replaced; fit the features again (--force)"
        )
    try:
        tensors = load_file(str(tpath), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{tpath} is not a readable safetensors file: {err}") from err
    absent = [k for k in ("U", "V", "alpha") if k not in tensors and (k != "U" or fv == 1)]
    if absent:
        raise ValueError(f"{tpath} lacks the tensors {absent}; it holds {sorted(tensors)}")
    hook = cfg.get("hook")
    if hook is not None and (not isinstance(hook, dict) or hook.get("layer") != cfg["source_layer"]):
        raise ValueError(
            f"{cpath}: hook {hook!r} does not agree with source_layer={cfg['source_layer']!r} "
            "(hook is derived from source_layer; remove it or fix source_layer)"
        )
    history, scores = cfg.get("history", []), cfg.get("scores", [])
    U = tensors.get("U")
    if fv == 1:  # one name for two meanings, and U stored for methods without targets
        old = cfg.get("objective", [])
        history, scores = ([], old) if cfg["method"] == "melbo-v1" else (old, [])
        if not _has_targets(cfg["method"]):
            U = None
    return {
        "U": U,
        "V": tensors["V"],
        "alpha": tensors["alpha"],
        "R": cfg["R"],
        "method": cfg["method"],
        "source_layer": cfg["source_layer"],
        "target_layer": cfg["target_layer"],
        "positions": cfg.get("positions"),
        "history": history,
        "scores": scores,
        "prompts_hash": cfg.get("prompts_hash", ""),
        "model": cfg.get("model", {}),
        "extra": cfg.get("extra", {}),
        "melbo_version": saved_version,
    }


def _has_targets(method: str) -> bool:
    """Whether ``method`` learns target directions (unknown methods: assume so)."""
    from melbo.methods import REGISTRY

    spec = REGISTRY.get(method)
    return True if spec is None else spec.has_targets
