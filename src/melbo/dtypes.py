"""The one table of dtypes melbo accepts by name (model loading, ``compute_dtype``, the CLI)."""

from __future__ import annotations

from typing import Final

import torch

__all__ = ["DTYPE_CHOICES", "resolve_dtype"]

DTYPE_CHOICES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
"""The dtypes a model may be loaded in, by name (the CLI offers the same names)."""


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Check a user's dtype and turn a name into a :class:`torch.dtype`.

    Parameters
    ----------
    dtype
        ``None`` (keep the checkpoint's dtype), one of the names in :data:`DTYPE_CHOICES`
        (``"float32"``, ``"bfloat16"``, ``"float16"``, ``"float64"``) or the matching
        ``torch.dtype``.

    Raises
    ------
    ValueError
        For any other name or dtype; the message lists the valid choices.
    TypeError
        For a value that is neither ``None``, a string nor a ``torch.dtype``.
    """
    if dtype is None:
        return None
    choices = ", ".join(repr(name) for name in DTYPE_CHOICES)
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_CHOICES.values():
            raise ValueError(
                f"dtype {dtype} is not supported; choose one of {choices} (or the torch dtype)"
            )
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in DTYPE_CHOICES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {choices}")
        return DTYPE_CHOICES[key]
    raise TypeError(f"dtype must be a str, a torch.dtype or None, got {type(dtype).__name__}")
