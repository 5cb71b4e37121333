"""Export features to the file formats of the tools users steer models with.

One registry, :data:`FORMATS`, names every format; ``melbo export --format`` takes its choices
from it, and :func:`export_features` dispatches to the format's writer. Importing this package
is cheap (no torch): a format's module is imported only when it is used.

Every format writes the same intervention, the one :func:`melbo.steering.interventions.steering` applies
for ``[(s, R * V[:, k]) for k in indices]`` at ``scale``: ``scale * R * Σ_k V[:, k]`` added to
the residual stream entering decoder layer ``s = source_layer``, at every position — so that
scale 1 means the same in melbo and in the other tool (:func:`melbo.export.common.steering_sum`).
Writers never replace an existing file unless it is an earlier export of the same format and
``force`` is given (:func:`melbo.export.common.check_output_file`); a user's file never.

Formats
-------
``gguf``
    A llama.cpp control vector (:mod:`melbo.export.gguf`): ``--control-vector FILE`` in
    llama-cli / llama-server.
``lm-eval``
    A steering file of lm-evaluation-harness's ``steered`` model (:mod:`melbo.export.lm_eval`):
    ``lm_eval --model steered --model_args pretrained=M,steer_path=FILE``.

To add a format: a module ``melbo.export.<name>`` with a function
``(features, out, *, indices, scale, force) -> Path``, a recogniser of its files in
:mod:`melbo.store.outputs`, and an :class:`ExportFormat` entry here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from melbo.features import Features

__all__ = ["FORMATS", "ExportFormat", "export_features", "format_names", "get_format"]


@dataclass(frozen=True)
class ExportFormat:
    """A file format features can be exported to.

    Attributes
    ----------
    name
        What ``--format`` takes, e.g. ``"gguf"``.
    summary
        One line for ``--help``.
    suffix
        The usual file-name suffix, e.g. ``".gguf"`` (a hint; any name is written).
    writer
        ``"module:function"`` of the writer, imported on use; the function takes
        ``(features, out, *, indices, scale, force)`` and returns the written path.
    recogniser
        ``"module:function"`` of the predicate that recognises a file of this format melbo
        wrote (:mod:`melbo.store.outputs`): the only existing file ``force`` replaces.
    """

    name: str
    summary: str
    suffix: str
    writer: str
    recogniser: str

    def load_writer(self) -> Callable[..., Path]:
        """Import and return the writer function."""
        module, _, func = self.writer.partition(":")
        fn: Callable[..., Path] = getattr(importlib.import_module(module), func)
        return fn

    def load_recogniser(self) -> Callable[[Path], bool]:
        """Import and return the recogniser (torch-free)."""
        module, _, func = self.recogniser.partition(":")
        fn: Callable[[Path], bool] = getattr(importlib.import_module(module), func)
        return fn


FORMATS: dict[str, ExportFormat] = {
    "gguf": ExportFormat(
        name="gguf",
        summary="llama.cpp control vector (direction.{s-1}, float32; --control-vector FILE)",
        suffix=".gguf",
        writer="melbo.export.gguf:export_gguf",
        recogniser="melbo.store.outputs:control_vector_file",
    ),
    "lm-eval": ExportFormat(
        name="lm-eval",
        summary="lm-evaluation-harness steered model (hook {layer list}.{s-1}, action add; steer_path=FILE)",
        suffix=".pt",
        writer="melbo.export.lm_eval:export_lm_eval",
        recogniser="melbo.store.outputs:lm_eval_file",
    ),
}
"""Every export format by name."""


def format_names() -> tuple[str, ...]:
    """The names of :data:`FORMATS`, sorted."""
    return tuple(sorted(FORMATS))


def get_format(name: str) -> ExportFormat:
    """The :class:`ExportFormat` called ``name``; a ValueError lists the valid names."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise ValueError(f"unknown export format {name!r}; valid formats: {', '.join(format_names())}")
    return fmt


def export_features(
    features: Features,
    out: str | os.PathLike[str],
    *,
    format: str,
    indices: Sequence[int],
    scale: float = 1.0,
    force: bool = False,
) -> Path:
    """Write ``scale * R * Σ_{k in indices} V[:, k]`` (at ``features.source_layer``) to ``out``
    in ``format`` (a name of :data:`FORMATS`); returns the path written.

    Raises
    ------
    ValueError
        for an unknown format, an empty or out-of-range ``indices``, a non-finite vector or a
        layer the format cannot express (the message says which and why).
    FileExistsError
        if ``out`` exists and ``force`` is False, or is not an export of this format melbo
        wrote (nothing is written).
    """
    return get_format(format).load_writer()(features, out, indices=indices, scale=scale, force=force)
