"""Steering files for lm-evaluation-harness's ``steered`` model (``lm_eval --model steered``).

lm-eval reads a ``.pt`` file (``torch.save``) holding one entry per hook point::

    {hookpoint: {"steering_vector": Tensor (d_model,), "steering_coefficient": float,
                 "action": "add", "bias": None, "head_index": None}, ...}

and, for ``action = "add"``, adds ``steering_coefficient * steering_vector`` to the *output*
of the module ``hookpoint`` — a name in ``model.base_model.named_modules()`` (``layers.{i}``
for Llama-like models, ``h.{i}`` for GPT-2, GPT-J and Falcon, ``decoder.layers.{i}`` for OPT,
``language_model.layers.{i}`` for multimodal Gemma 3: the layer path the features recorded with
their model, without the base model's attribute) — at every position.

**Layer convention.** melbo adds ``c · R · v`` to the residual stream *entering* layer
``s``; that is the output of block ``s − 1``, so feature ℓ of features with source layer
``s`` is written to hook point ``layers.{s-1}`` (or that model's name of its layer list).
``s = 0`` (the input of the first block, the embedding output) has no block before it and
cannot be exported.

**Scale.** With one ``scale`` c the file holds ``steering_vector = R · Σ_k v_k`` (melbo's
scale 1) and ``steering_coefficient = c``, so lm-eval's coefficient is melbo's scale; with
one scale per feature, ``steering_vector = R · Σ_k c_k v_k`` and the coefficient is 1.
Each entry also carries ``"melbo"``: the provenance (features' source layer, indices,
scales, R, method, model fingerprint), which lm-eval ignores.

Run it with::

    lm_eval --model steered --model_args pretrained=MODEL_DIR,steer_path=FILE.pt --tasks ...
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from melbo.errors import check_scale
from melbo.features import Features, hook_site
from melbo.store.io import atomic_write, check_output
from melbo.store.outputs import lm_eval_file

__all__ = ["FILE_SUFFIXES", "FORMAT", "base_model_path", "export_lm_eval", "hookpoint", "read_lm_eval_steer", "write_lm_eval_steer"]

logger = logging.getLogger(__name__)

FORMAT = "lm-eval"
"""The name of this format (``melbo export --format lm-eval``)."""
FILE_SUFFIXES = (".pt", ".pth")
"""lm-eval reads a steering file as a torch file only under these suffixes."""

_ENTRY_KEYS = ("steering_vector", "steering_coefficient", "action", "bias", "head_index")


def _layers_name(model: nn.Module | None, features: Features | None) -> str:
    """The name of the decoder-layer list inside ``model.base_model`` (where lm-eval looks hook
    points up)."""
    if model is not None:
        from melbo.models.access import get_layer_access

        path = get_layer_access(model).layers_path
        prefix = getattr(model, "base_model_prefix", "")
        inner = getattr(model, prefix, None) if prefix else None
        if isinstance(inner, nn.Module) and path.startswith(prefix + "."):
            return path[len(prefix) + 1:]
        return path
    site = features.hook_site() if features is not None else hook_site(1)
    if not site["layers_path_known"]:
        logger.warning("the features record no layer path (no model fingerprint): assuming %r; pass the model to name "
                       "the hook point exactly", site["layers_path"])
    return base_model_path(site["layers_path"])


def base_model_path(layers_path: str) -> str:
    """A layer path recorded from the top of a causal LM (``model.layers``, ``transformer.h``,
    ``model.decoder.layers``, ``model.language_model.layers``) relative to ``model.base_model``,
    where lm-eval looks hook points up: without its first part, the attribute that holds the
    base model (``base_model_prefix``: ``model``, ``transformer``, ``gpt_neox``). A one-part path
    (``layers``: the recorded model was a bare decoder, its own base model) stays as it is."""
    head, dot, rest = layers_path.partition(".")
    return rest if dot and head and rest else layers_path


def hookpoint(source_layer: int, *, model: nn.Module | None = None, features: Features | None = None) -> str:
    """lm-eval's hook point for melbo's source layer ``source_layer``: block ``source_layer − 1``.

    The layer list's name is relative to ``model.base_model``, where lm-eval looks modules up:
    from ``model`` when given, else from the layer path the features recorded with their model
    (:func:`base_model_path`: ``h`` for GPT-2, GPT-J and Falcon, ``decoder.layers`` for OPT,
    ``language_model.layers`` for multimodal Gemma 3, ``layers`` for Llama-like models).
    """
    if isinstance(source_layer, bool) or not isinstance(source_layer, int) or source_layer < 0:
        raise ValueError(f"source_layer={source_layer!r}: must be an integer ≥ 0")
    if source_layer == 0:
        raise ValueError(
            "source_layer=0 cannot be exported to lm-eval: melbo adds at the input of layer 0 (the embedding "
            "output), but lm-eval's steered model adds to the output of a block (block s-1 for melbo's layer s), "
            "and layer 0 has no block before it. Fit features at source layer >= 1.")
    return f"{_layers_name(model, features)}.{source_layer - 1}"


def _scales(scale: float | Sequence[float], n: int) -> list[float]:
    values = [scale] if isinstance(scale, (int, float)) else list(scale)
    if isinstance(scale, (int, float)):
        values = values * n
    if len(values) != n:
        raise ValueError(f"scale has {len(values)} values for {n} features: give one scale or one per feature")
    return [check_scale("scale", v) for v in values]  # as every command steers: finite, non-zero, |scale| ≤ MAX_SCALE


def write_lm_eval_steer(
    features: Features,
    feature_ids: int | Sequence[int],
    scale: float | Sequence[float],
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    force: bool = False,
) -> Path:
    """Write features ``feature_ids`` at ``scale`` as a steering file of lm-eval's ``steered`` model.

    Parameters
    ----------
    features : the fitted features (their ``source_layer`` s must be ≥ 1)
    feature_ids : one index or several; several are summed into one vector (one hook point)
    scale : melbo's scale c (the file adds ``c · R · v``, as :func:`melbo.steer_features` does),
        one for all features or one per feature
    path : the ``.pt``/``.pth`` file to write (atomically)
    model : the model the file is for, to name the hook point exactly (optional; else from the
        features' fingerprint); when the features carry a fingerprint it must match
    force : replace an existing steering file melbo wrote (never another file)

    Returns
    -------
    Path : ``path``
    """
    out = Path(path)
    if out.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{str(out)!r}: lm-eval reads a steering file as a torch file only with suffix "
                         f"{' or '.join(FILE_SUFFIXES)} (a .csv is its sparse-autoencoder format)")
    ids = [feature_ids] if isinstance(feature_ids, int) else list(feature_ids)
    if not ids:
        raise ValueError("feature_ids is empty: name at least one feature")
    vectors = [features.steering_vector(k).detach().to(torch.float64) for k in ids]  # R v_k, (d,); checks k
    ids = [k % features.n_factors for k in ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"feature_ids {ids} name a feature twice")
    scales = _scales(scale, len(ids))
    point = hookpoint(features.source_layer, model=model, features=features)
    if model is not None and features.model:
        features.check_model(model)
    check_output(out, flag="-o/--out", writer="melbo export", ours=lm_eval_file, force=force)
    one_scale = isinstance(scale, (int, float))
    weights = [1.0] * len(ids) if one_scale else scales
    vector = sum((w * v for w, v in zip(weights, vectors)), torch.zeros_like(vectors[0]))
    vector = vector.to(torch.float32).contiguous()  # (d,)
    entry: dict[str, Any] = {
        "steering_vector": vector,
        "steering_coefficient": scales[0] if one_scale else 1.0,
        "action": "add",
        "bias": None,
        "head_index": None,
        "melbo": {"source_layer": features.source_layer, "target_layer": features.target_layer,
                  "features": ids, "scales": scales, "R": features.R, "method": features.method,
                  "model": dict(features.model), "melbo_version": features.melbo_version,
                  "convention": "steering_coefficient * steering_vector = sum_k scale_k * R * V[:, k], added to "
                                f"the output of {point} = the input of melbo's layer {features.source_layer}"},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: torch.save({point: entry}, p))
    logger.info("wrote lm-eval steering file %s: features %s at scales %s → hook point %s", out, ids, scales, point)
    return out


def read_lm_eval_steer(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read and check a steering file of lm-eval's ``steered`` model (``torch.load`` with
    ``weights_only=True``): hook point → entry with every key lm-eval reads. Bad files raise
    ``ValueError`` naming what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no lm-eval steering file at {str(p)!r}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a file that is not its format
        raise ValueError(f"{str(p)!r} is not a torch steering file: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{str(p)!r} holds {type(data).__name__}, not a non-empty dict hook point → entry")
    d_model = None
    for point, entry in data.items():
        where = f"{str(p)!r}, hook point {point!r}"
        if not isinstance(point, str) or not isinstance(entry, dict):
            raise ValueError(f"{where}: entries must map a module name (str) to a dict")
        missing = [k for k in ("steering_vector", "action") if k not in entry]
        if missing:
            raise ValueError(f"{where}: missing {missing} (an entry has {list(_ENTRY_KEYS)})")
        if entry["action"] not in ("add", "clamp"):
            raise ValueError(f"{where}: action={entry['action']!r}; lm-eval knows 'add' and 'clamp'")
        vec = entry["steering_vector"]
        if not isinstance(vec, Tensor) or vec.ndim != 1 or not vec.is_floating_point():
            raise ValueError(f"{where}: steering_vector must be a 1-D float tensor, got "
                             f"{getattr(vec, 'shape', type(vec).__name__)}")
        if d_model is not None and vec.shape[0] != d_model:
            raise ValueError(f"{where}: steering_vector has {vec.shape[0]} entries, another hook point {d_model}")
        d_model = vec.shape[0]
        coef = entry.get("steering_coefficient", 1.0)
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
            raise ValueError(f"{where}: steering_coefficient={coef!r} must be a finite number")
    return data


def export_lm_eval(features: Features, out: str | os.PathLike[str], *, indices: Sequence[int], scale: float = 1.0,
                   force: bool = False) -> Path:
    """The ``lm-eval`` entry of :data:`melbo.export.FORMATS`: :func:`write_lm_eval_steer` with
    the registry's writer signature."""
    return write_lm_eval_steer(features, list(indices), scale, out, force=force)
