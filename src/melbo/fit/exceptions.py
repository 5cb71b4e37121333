"""Warnings and errors the fitting methods raise (public: also exported by :mod:`melbo.fit`)."""

from __future__ import annotations

__all__ = ["ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """A fit stopped at its iteration limit (``max_iter``) before the factors stopped moving."""
