"""Exporting a chosen subset of features as a new features directory.

The destination is chosen here, never taken from a request: ``DIR/explore-exports/subset-NNN``
with the first number whose directory does not exist yet, created with ``exist_ok=False`` so
two exports never share (or overwrite) a directory. The subset keeps its provenance and
records where it came from (``extra["explore_export"]``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from melbo.features import Features

__all__ = ["EXPORTS_DIR", "export_subset"]

logger = logging.getLogger(__name__)

EXPORTS_DIR = "explore-exports"


def _check_indices(indices: object, m: int) -> list[int]:
    if not isinstance(indices, Sequence) or isinstance(indices, str) or not indices:
        raise ValueError(f"features must be a non-empty list of feature indices, got {indices!r}")
    out: list[int] = []
    for k in indices:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < m:
            raise ValueError(f"feature {k!r} is out of range: 0 ≤ feature < {m}")
        if k in out:
            raise ValueError(f"feature {k} is listed twice")
        out.append(k)
    return out


def export_subset(
    features: Features, indices: Sequence[int], directory: str | Path, *,
    labels: dict[int, str] | None = None, source: str = "",
) -> Path:
    """Save ``features.subset(indices)`` to a new ``directory/explore-exports/subset-NNN``; returns it.

    ``labels`` (feature → label) and ``source`` are recorded in the subset's ``extra``.
    """
    idx = _check_indices(indices, features.n_factors)
    root = Path(directory) / EXPORTS_DIR
    root.mkdir(exist_ok=True)
    for n in range(1, 100_000):
        dest = root / f"subset-{n:03d}"
        try:
            dest.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100k exports
        raise FileExistsError(f"{root} has no free subset-NNN name left")
    sub = features.subset(idx)
    record = {"source": source, "indices": idx,
              "labels": {str(k): labels[k] for k in idx if labels and labels.get(k)}}
    sub = dataclasses.replace(sub, extra={**sub.extra, "explore_export": record})
    sub.save(dest)
    logger.info("exported %d features to %s", len(idx), dest)
    return dest
