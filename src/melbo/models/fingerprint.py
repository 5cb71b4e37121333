"""A small, JSON-able fingerprint of a model, to check that saved features are applied to the
model they were fitted on.

A fingerprint holds

* ``name`` — ``config._name_or_path`` (or ``model_type``, or the class name); for humans only,
  never compared (the same model loaded from a hub id or a local path has different names);
* ``config_sha256`` — SHA-256 of the full config JSON (``to_json_string(use_diff=False)``)
  with volatile keys removed: paths, ``transformers_version``, dtype, attention kernel and
  runtime flags (:data:`VOLATILE_CONFIG_KEYS`);
* ``weights_sha256`` — SHA-256 of a few weights: the first :data:`N_WEIGHT_ELEMENTS` elements
  of the input embedding and of the last decoder layer's first parameter. The values are
  rounded to bfloat16 before hashing, so a model and its fp32 ↔ bf16 casts share a
  fingerprint (an fp16 cast or a quantised copy does not);
* ``family``, ``n_layers``, ``d_model``, ``layers_path``, ``dtype`` — informative
  (``layers_path`` is the dotted path of the decoder-layer list, e.g. ``model.layers``: where
  another tool finds the layer that saved features hook).

:func:`same_model` compares ``config_sha256`` and ``weights_sha256``; :func:`check_same_model`
is the one check, with its one error (:class:`melbo.errors.ModelMismatchError`), that what was
fitted on a model is applied to that model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch
from torch import Tensor, nn

from melbo.errors import ModelMismatchError
from melbo.models.access import ArchitectureError, get_layer_access

__all__ = [
    "FINGERPRINT_VERSION",
    "N_WEIGHT_ELEMENTS",
    "VOLATILE_CONFIG_KEYS",
    "describe_fingerprint",
    "check_same_model",
    "model_fingerprint",
    "same_model",
]

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
N_WEIGHT_ELEMENTS = 4096

#: Config keys that do not change what the model computes and are dropped before hashing
#: (at any nesting depth). Keys starting with ``_attn_implementation`` are dropped too.
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "_commit_hash",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "architectures",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)


def _strip_volatile(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: _strip_volatile(v)
            for k, v in obj.items()
            if k not in VOLATILE_CONFIG_KEYS and not str(k).startswith("_attn_implementation")
        }
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


def _config_sha256(config: Any) -> str | None:
    to_json = getattr(config, "to_json_string", None)
    if not callable(to_json):
        return None
    raw = json.loads(to_json(use_diff=False))
    canonical = json.dumps(_strip_volatile(raw), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _hash_weights(tensors: list[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().reshape(-1)[:N_WEIGHT_ELEMENTS]
        # Round through bf16 so fp32 and bf16 copies of one model agree; hash float32 bytes.
        vals = flat.to(device="cpu", dtype=torch.bfloat16).to(torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode("utf-8"))
        h.update(vals.numpy().tobytes())
    return h.hexdigest()


def _sample_weights(model: nn.Module) -> tuple[list[Tensor], dict[str, Any]]:
    """The tensors to hash and informative fields (family, n_layers, layers_path, d_model)."""
    try:
        access = get_layer_access(model)
    except ArchitectureError:
        params = [p for _, p in model.named_parameters()]
        if not params:
            raise ValueError(f"{type(model).__name__} has no parameters to fingerprint") from None
        logger.debug("fingerprint of %s: no layer access, hashing first/last parameter",
                     type(model).__name__)
        return [params[0], params[-1]], {}
    emb = getattr(access.embed, "weight", None)
    last = next(iter(access.layers[-1].parameters()), None)
    tensors = [t for t in (emb, last) if isinstance(t, Tensor)]
    info: dict[str, Any] = {"family": access.family, "n_layers": access.n_layers, "layers_path": access.layers_path}
    if isinstance(emb, Tensor):
        info["d_model"] = int(emb.shape[1])
    return tensors, info


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """A JSON-able fingerprint of ``model`` (see the module docstring for the fields).

    Parameters
    ----------
    model : nn.Module
        Usually a ``transformers`` causal LM; any module with parameters works (without a
        ``config``, ``config_sha256`` is None).

    Returns
    -------
    dict
        ``{"fingerprint_version", "name", "config_sha256", "weights_sha256", "dtype",
        "family", "n_layers", "layers_path", "d_model"}`` (the last four when the layers are
        found).
    """
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or ""
    if not name:
        name = type(model).__name__
    tensors, info = _sample_weights(model)
    dtype = str(tensors[0].dtype).replace("torch.", "") if tensors else None
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "name": str(name),
        "config_sha256": _config_sha256(config) if config is not None else None,
        "weights_sha256": _hash_weights(tensors),
        "dtype": dtype,
        **info,
    }


def same_model(fp_a: dict[str, Any], fp_b: dict[str, Any]) -> bool:
    """Whether two fingerprints describe the same model (same config and sampled weights).

    Names, dtypes and other informative fields are not compared. A fingerprint without
    ``weights_sha256`` never matches.
    """
    wa, wb = fp_a.get("weights_sha256"), fp_b.get("weights_sha256")
    if not wa or not wb:
        return False
    return bool(wa == wb and fp_a.get("config_sha256") == fp_b.get("config_sha256"))


def describe_fingerprint(fp: dict[str, Any]) -> str:
    """One line for error messages: name, family, shape and the first hash digits."""
    if not fp:
        return "<no fingerprint>"

    def short(v: object) -> str:
        return str(v)[:12] if v else "none"

    return (
        f"{fp.get('name', '?')!r} (family={fp.get('family', '?')}, n_layers={fp.get('n_layers', '?')}, "
        f"d_model={fp.get('d_model', '?')}, config={short(fp.get('config_sha256'))}, "
        f"weights={short(fp.get('weights_sha256'))})"
    )


def check_same_model(
    recorded: dict[str, Any] | None,
    model: nn.Module | dict[str, Any],
    *,
    what: str,
    force: bool = False,
    hint: str = "pass force=True (--force) to use it anyway",
) -> None:
    """Raise :class:`~melbo.errors.ModelMismatchError` unless ``model`` is the one ``recorded``.

    Parameters
    ----------
    recorded : the fingerprint stored with ``what`` (empty or None: it cannot be checked, which
        is a mismatch too)
    model : the model it is applied to, or that model's fingerprint
    what : what was fitted, a noun for the message: ``"features"``, ``"monitor"``, ``"adapter"``
    force : only log the mismatch (a warning) instead of raising
    hint : the message's last line, what the user can do
    """
    got = model if isinstance(model, dict) else model_fingerprint(model)
    if recorded and same_model(recorded, got):
        return
    if not recorded:
        msg = f"no model fingerprint is stored with the {what}, so the model cannot be checked"
    else:
        pad = " " * max(0, len(what) - len("model"))
        msg = (f"{what} fitted on a different model:\n"
               f"  {what}: {describe_fingerprint(recorded)}\n"
               f"  model:{pad} {describe_fingerprint(got)}")
    if force:
        logger.warning("%s (ignored: force=True)", msg)
        return
    raise ModelMismatchError(f"{msg}\n{hint}" if hint else msg)
