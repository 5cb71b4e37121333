"""llama.cpp control vectors: features as a GGUF file for ``--control-vector FILE``.

The format (read by llama.cpp's ``common_control_vector_load``): a GGUF whose
``general.architecture`` is ``controlvector``, with the keys ``controlvector.model_hint`` (the
model family, informative) and ``controlvector.layer_count`` (how many directions it holds),
and one float32 tensor of shape (n_embd,) per steered layer, named ``direction.N``.

Layer convention. llama.cpp adds ``direction.N`` to the **output** of block N (after the
block's residual add, before block N+1), for N ≥ 1: its loader rejects ``direction.0``, and
there is no control-vector slot before block 0. melbo adds at the **input** of layer s (the
residual stream entering layer s, :mod:`melbo.steering.interventions`) — the output of block s − 1. So
features fitted at ``source_layer`` s are written as ``direction.{s-1}``, and s = 0 and s = 1
cannot be exported (:func:`llama_cpp_layer` says so).

Scale. The tensor holds ``scale * R * Σ_k V[:, k]`` (:func:`melbo.export.common.steering_sum`),
so ``--control-vector FILE`` (strength 1) steers exactly as melbo steers at ``scale``; llama.cpp's
``--control-vector-scaled FILE C`` multiplies it by C again.

Several features. They are summed into one vector at the one layer they share, the same
intervention as melbo's ``steering(model, [(s, R·v_k), …])``: one file is one steering
intervention. To turn features up and down separately in llama.cpp, export one file per
feature and pass each with ``--control-vector-scaled FILE C`` (llama.cpp adds the files up).

Extra keys ``melbo.*`` record the provenance (features, scale, R, method, source layer, melbo
version); llama.cpp ignores them. The ``gguf`` package (melbo's ``gguf`` extra) is imported
only when a file is written or read.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melbo.export.common import check_output_file, steering_sum
from melbo.features import Features, melbo_version
from melbo.store.io import atomic_write
from melbo.store.outputs import control_vector_file

__all__ = [
    "ARCHITECTURE",
    "GGUF_API",
    "GGUF_MIN_VERSION",
    "ControlVector",
    "export_gguf",
    "llama_cpp_layer",
    "missing_gguf_api",
    "read_control_vector",
    "write_control_vector",
]

logger = logging.getLogger(__name__)

ARCHITECTURE = "controlvector"
GGUF_MIN_VERSION = "0.16.0"
"""The oldest ``gguf`` package this module works with (= the lower bound of pyproject's ``gguf``
requirements; a test checks both and :data:`GGUF_API`): ``ReaderField.contents()``, which
:func:`read_control_vector` reads every key with, came in 0.16.0 (0.14.0 lacks it), and 0.10.0's
reader fails under numpy 2."""
GGUF_API: dict[str, tuple[str, ...]] = {
    "GGUFWriter": ("add_string", "add_uint32", "add_bool", "add_int64", "add_float64", "add_array", "add_tensor",
                   "write_header_to_file", "write_kv_data_to_file", "write_tensors_to_file", "close"),
    "GGUFReader": (),  # its `fields` and `tensors` are set per file; the round-trip tests read them
    "ReaderField": ("contents",),
    "ReaderTensor": ("name", "tensor_type", "data"),
    "GGMLQuantizationType": ("F32",),
}
"""Every name of the ``gguf`` package this module uses: class → its attributes."""
_DIRECTION = re.compile(r"direction\.(\d+)")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ImportError("GGUF export needs the 'gguf' package: pip install 'melbo[gguf]'") from None
    missing = missing_gguf_api(gguf)
    if missing:
        from importlib.metadata import PackageNotFoundError, version

        try:
            have = version("gguf")
        except PackageNotFoundError:
            have = "unknown"
        raise ImportError(f"the installed gguf {have} lacks {', '.join(missing)}, which melbo's GGUF export uses; "
                          f"pip install 'gguf>={GGUF_MIN_VERSION}'")
    return gguf


def missing_gguf_api(module: Any) -> list[str]:
    """The names of :data:`GGUF_API` that ``module`` (the ``gguf`` package) lacks, e.g.
    ``["ReaderField.contents"]`` for gguf 0.14."""
    missing = []
    for cls, attrs in GGUF_API.items():
        obj = getattr(module, cls, None)
        if obj is None:
            missing.append(cls)
            continue
        missing += [f"{cls}.{a}" for a in attrs if not hasattr(obj, a)]
    return missing


def llama_cpp_layer(source_layer: int) -> int:
    """The llama.cpp control-vector layer N (tensor ``direction.N``) that steers where melbo
    steers features fitted at ``source_layer`` s: N = s − 1.

    Raises
    ------
    ValueError
        for s < 2, which llama.cpp cannot express (the message says why).
    """
    if isinstance(source_layer, bool) or not isinstance(source_layer, int):
        raise TypeError(f"source_layer must be an int, got {source_layer!r}")
    if source_layer < 2:
        raise ValueError(
            f"features at source_layer {source_layer} cannot be exported to a llama.cpp control vector: "
            "melbo adds at the input of layer s (= the output of block s − 1), llama.cpp adds "
            "direction.N to the output of block N only for N ≥ 1 (its loader rejects direction.0, "
            "and nothing steers the embedding output). Fit the features with --source-layer ≥ 2."
        )
    return source_layer - 1


@dataclass(frozen=True)
class ControlVector:
    """A control-vector GGUF as read back: what llama.cpp uses and what melbo recorded.

    Attributes
    ----------
    directions : dict of int to ndarray
        ``N -> direction.N``, float32 arrays of shape (n_embd,).
    model_hint : str
        ``controlvector.model_hint``.
    layer_count : int
        ``controlvector.layer_count``.
    metadata : dict
        Every other key-value field (``melbo.*`` among them), by key.
    """

    directions: dict[int, np.ndarray]
    model_hint: str
    layer_count: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_embd(self) -> int:
        """Length of every direction."""
        return int(next(iter(self.directions.values())).shape[0])

    def dense(self, n_layers: int) -> np.ndarray:
        """The buffer llama.cpp's ``llama_set_adapter_cvec`` takes: shape ((n_layers − 1) · n_embd,),
        layer 1 first (row N − 1 holds ``direction.N``, zeros elsewhere)."""
        if max(self.directions) >= n_layers:
            raise ValueError(f"direction.{max(self.directions)} does not fit a model with {n_layers} layers")
        buf = np.zeros((n_layers - 1, self.n_embd), dtype=np.float32)
        for n, vec in self.directions.items():
            buf[n - 1] = vec
        return buf.reshape(-1)


def write_control_vector(
    path: str | os.PathLike[str],
    directions: Mapping[int, torch.Tensor | np.ndarray],
    *,
    model_hint: str,
    metadata: Mapping[str, str | int | float | Sequence[int]] | None = None,
    force: bool = False,
) -> Path:
    """Write a control-vector GGUF holding ``direction.N`` for every ``N -> vector`` (float32,
    shape (n_embd,), N ≥ 1) and the extra ``metadata`` keys (str, int, float or a list of
    ints; always melbo's version key, which marks the file as melbo's for ``force``), atomically;
    returns the path.

    Raises
    ------
    ValueError
        for no directions, N < 1, vectors of different or non-1-d shapes, non-finite values.
    FileExistsError
        if ``path`` exists and ``force`` is False, or is not a control vector melbo wrote.
    """
    out = check_output_file(path, force=force, ours=control_vector_file)
    if not directions:
        raise ValueError("need at least one direction")
    arrays: dict[int, np.ndarray] = {}
    for n, vec in sorted(directions.items()):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"control-vector layer must be an int ≥ 1 (llama.cpp rejects direction.0), got {n!r}")
        arr = vec.detach().to("cpu", torch.float32).numpy() if isinstance(vec, torch.Tensor) else np.asarray(vec, np.float32)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"direction.{n} must have shape (n_embd,), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"direction.{n} has {int((~np.isfinite(arr)).sum())} non-finite values")
        arrays[n] = np.ascontiguousarray(arr, dtype=np.float32)
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"all directions must have one length n_embd, got {sorted(sizes)}")
    gguf = _gguf()

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
        w.add_string(f"{ARCHITECTURE}.model_hint", model_hint)
        w.add_uint32(f"{ARCHITECTURE}.layer_count", len(arrays))
        for key, value in {"melbo.version": melbo_version(), **(metadata or {})}.items():
            if isinstance(value, bool):
                w.add_bool(key, value)
            elif isinstance(value, int):
                w.add_int64(key, value)
            elif isinstance(value, float):
                w.add_float64(key, value)
            elif isinstance(value, str):
                w.add_string(key, value)
            else:
                w.add_array(key, [int(v) for v in value])
        for n, arr in arrays.items():
            w.add_tensor(f"direction.{n}", arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(out, write)
    return out


def read_control_vector(path: str | os.PathLike[str]) -> ControlVector:
    """Read a control-vector GGUF with the checks llama.cpp's loader makes.

    Raises
    ------
    FileNotFoundError
        if ``path`` is not a file.
    ValueError
        naming the file: not a GGUF, not architecture ``controlvector``, a tensor that is not
        ``direction.N`` with N ≥ 1, not float32, not 1-d, or of another length than the rest.
    """
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"control vector {str(src)!r} does not exist")
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(str(src))
    except (ValueError, OSError, IndexError, KeyError) as err:
        raise ValueError(f"{src} is not a readable GGUF file: {err}") from err
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    arch = fields.get("general.architecture")
    if arch != ARCHITECTURE:
        raise ValueError(f"{src}: general.architecture is {arch!r}, not {ARCHITECTURE!r}: not a control vector")
    directions: dict[int, np.ndarray] = {}
    for t in reader.tensors:
        m = _DIRECTION.fullmatch(t.name)
        if m is None or int(m.group(1)) < 1:
            raise ValueError(f"{src}: tensor {t.name!r} is not direction.N with N ≥ 1")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{src}: {t.name} has type {t.tensor_type.name}, llama.cpp needs F32")
        data = np.asarray(t.data)
        if data.ndim != 1:
            raise ValueError(f"{src}: {t.name} has shape {data.shape}, llama.cpp needs 1-d")
        directions[int(m.group(1))] = data.astype(np.float32, copy=True)
    if not directions:
        raise ValueError(f"{src}: no direction.N tensors")
    if len({a.shape[0] for a in directions.values()}) != 1:
        raise ValueError(f"{src}: directions differ in length: { {n: a.shape[0] for n, a in directions.items()} }")
    hint = fields.pop(f"{ARCHITECTURE}.model_hint", "")
    count = fields.pop(f"{ARCHITECTURE}.layer_count", len(directions))
    return ControlVector(directions=directions, model_hint=str(hint), layer_count=int(count), metadata=fields)


def export_gguf(
    features: Features,
    out: str | os.PathLike[str],
    *,
    indices: Sequence[int],
    scale: float = 1.0,
    force: bool = False,
    model_hint: str | None = None,
) -> Path:
    """Write features ``indices`` of ``features`` as one llama.cpp control vector: tensor
    ``direction.{s-1}`` = ``scale * R * Σ_k V[:, k]`` (s = ``features.source_layer``, see the
    module docstring), ``controlvector.model_hint`` = ``model_hint`` (default: the model
    family in the features' fingerprint), and the ``melbo.*`` provenance keys.

    Raises
    ------
    ValueError
        for s < 2, no or repeated indices, a non-finite scale or vector.
    IndexError
        for an index out of range.
    FileExistsError
        if ``out`` exists and ``force`` is False, or is not a control vector melbo wrote
        (nothing is written).
    """
    check_output_file(out, force=force, ours=control_vector_file)
    layer = llama_cpp_layer(features.source_layer)
    vec = steering_sum(features, indices, scale)
    hint = model_hint if model_hint is not None else str(features.model.get("family") or "unknown")
    ks = [features._check_index(k) for k in indices]
    meta: dict[str, str | int | float | Sequence[int]] = {
        "melbo.features": ks,
        "melbo.scale": float(scale),
        "melbo.R": features.R,
        "melbo.method": features.method,
        "melbo.source_layer": features.source_layer,
        "melbo.target_layer": features.target_layer,
        "melbo.model": str(features.model.get("name", "")),
        "melbo.hook": features.hook_site()["description"],
        "melbo.version": melbo_version(),
    }
    path = write_control_vector(out, {layer: vec}, model_hint=hint, metadata=meta, force=force)
    logger.info(
        "wrote features %s × %g·R (R=%g) at layer %d as direction.%d to %s",
        ks, scale, features.R, features.source_layer, layer, path,
    )
    return path
