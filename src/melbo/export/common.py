"""What every export format shares: the vector it writes and the rule for its output file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from melbo.errors import check_scale
from melbo.features import Features
from melbo.store.io import check_output

__all__ = ["check_output_file", "steering_sum"]


def steering_sum(features: Features, indices: Sequence[int], scale: float = 1.0) -> Tensor:
    """``scale * R * Σ_{k in indices} V[:, k]``, float32 on the CPU, shape (d_model,).

    The vector :func:`melbo.steering.interventions.steering` adds to the residual stream entering
    ``features.source_layer`` for ``[(s, features.steering_vector(k)) for k in indices]`` at
    ``scale`` (several features at one layer add up). Summed in float64, then rounded once.

    Raises
    ------
    ValueError
        for no indices, a repeated index, a non-finite ``scale`` or a sum that is not finite
        in float32.
    IndexError
        for an index out of range (naming it and the valid range).
    """
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence) or not indices:
        raise ValueError(f"need at least one feature index, got {indices!r}")
    ks = [features._check_index(k) for k in indices]
    if len(set(ks)) != len(ks):
        raise ValueError(f"feature indices repeat: {list(indices)}; give each feature once")
    check_scale("scale", scale)  # finite, non-zero, |scale| ≤ MAX_SCALE, as every command steers
    V = features.V.detach().to("cpu", torch.float64)  # (d, m)
    vec = (float(scale) * features.R) * V[:, ks].sum(dim=1)  # (d,)
    out = vec.to(torch.float32)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"scale {scale} × R {features.R} × features {ks} gives a vector that is not finite in "
            f"float32 (max |value| {vec.abs().max().item():.3g}); use a smaller scale"
        )
    return out


def check_output_file(out: str | os.PathLike[str], *, force: bool, ours: Callable[[Path], bool],
                      inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> Path:
    """``out`` as a Path, if an export may be written there (:func:`melbo.store.io.check_output`): its
    directory must exist; an existing file is replaced only when ``ours`` recognises it as an
    earlier export of the same format (:mod:`melbo.store.outputs`) and with ``force``; never one of
    ``inputs`` (e.g. the features directory) or a file inside one, a directory or a link.

    Raises
    ------
    FileExistsError
        naming ``out`` and why (with ``--force`` where that would allow it).
    FileNotFoundError
        if its parent directory does not exist.
    """
    path = check_output(out, flag="-o/--out", writer="melbo export", ours=ours, force=force, inputs=inputs)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory of output {str(path)!r} does not exist")
    return path
