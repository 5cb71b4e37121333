"""Small shared pieces of the fitting algorithms: validation, randomness, column algebra."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from melbo.errors import check_R  # noqa: F401  (re-exported: the one R check)
from melbo.fit.exceptions import ConvergenceWarning  # noqa: F401  (re-exported for old imports)
from melbo.maps.protocol import CausalMap

__all__ = [
    "ConvergenceWarning",
    "RandomState",
    "check_choice",
    "check_delta",
    "check_factors",
    "check_positive_int",
    "check_R",
    "check_tol",
    "column_movement",
    "interleave",
    "make_generator",
    "normalize_columns",
    "orthonormalize",
    "polar_columns",
    "qr_columns",
    "randn",
]

RandomState = int | torch.Generator | None
"""A seed, a CPU generator (used as is), or None for a fresh nondeterministic seed."""


# ---------------------------------------------------------------- validation
def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``, or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def check_unit_interval(name: str, value: object) -> float:
    """``value`` as a float in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def check_tol(tol: object) -> float:
    """The convergence threshold as a float >= 0."""
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    return float(tol)


def check_delta(delta: object) -> CausalMap:
    """``delta`` if it implements the :class:`CausalMap` protocol, else TypeError."""
    if not isinstance(delta, CausalMap):
        raise TypeError(f"delta must implement melbo.maps.protocol.CausalMap, got {type(delta).__name__}")
    return delta


def check_factors(delta: CausalMap, U: Tensor, V: Tensor, m: int | None = None) -> tuple[Tensor, Tensor]:
    """Validate given (U, V) factors, shape (d, m) each; return them in Δ's dtype/device."""
    d = delta.d_model
    for name, X in (("U", U), ("V", V)):
        if not isinstance(X, Tensor) or X.ndim != 2 or X.shape[0] != d:
            shape = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
            raise ValueError(f"init factor {name} must be a tensor of shape (d_model={d}, m), got {shape}")
    if U.shape != V.shape:
        raise ValueError(f"init factors U and V must have the same shape, got {tuple(U.shape)}, {tuple(V.shape)}")
    if m is not None and U.shape[1] != m:
        raise ValueError(f"init factors have {U.shape[1]} columns but n_factors={m}")
    dt, dev = delta.dtype, delta.device
    return (
        normalize_columns(U.detach().to(device=dev, dtype=dt)),
        normalize_columns(V.detach().to(device=dev, dtype=dt)),
    )


# ---------------------------------------------------------------- randomness
def make_generator(random_state: RandomState) -> torch.Generator:
    """A CPU generator from a seed, a generator (returned as is) or None (fresh seed)."""
    if isinstance(random_state, torch.Generator):
        return random_state
    g = torch.Generator()
    if random_state is None:
        g.seed()
    elif isinstance(random_state, bool) or not isinstance(random_state, int):
        raise ValueError(f"random_state must be an int, a torch.Generator or None, got {random_state!r}")
    else:
        g.manual_seed(random_state)
    return g


def randn(d: int, m: int, generator: torch.Generator, like: CausalMap) -> Tensor:
    """Standard Gaussian (d, m) drawn in float64 on the CPU, cast to Δ's dtype and moved."""
    X = torch.randn(d, m, generator=generator, dtype=torch.float64)
    return X.to(dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------- column algebra
def normalize_columns(X: Tensor, eps: float = 1e-30) -> Tensor:
    """Each column of X (d, m) divided by its norm (zero columns stay zero)."""
    return X / X.norm(dim=0, keepdim=True).clamp_min(eps)


def qr_columns(V: Tensor) -> Tensor:
    """Q of the QR decomposition of V (d, m), m ≤ d, with signs fixed so diag(R) ≥ 0.

    The sign fix makes Q unique for full-rank V and keeps column ℓ of Q on the same side
    as column ℓ of V (⟨q_ℓ, v_ℓ⟩ ≥ 0), which matters because exponential features are
    signed.
    """
    Q, Rm = torch.linalg.qr(V)  # (d, m), (m, m)
    s = torch.sign(torch.diagonal(Rm))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return Q * s


def polar_columns(V: Tensor) -> Tensor:
    """The orthonormal matrix closest to V (d, m), m ≤ d, in Frobenius norm: the polar factor
    P Wᵀ of the thin SVD V = P Σ Wᵀ (Löwdin's symmetric orthogonalisation).

    Unlike :func:`qr_columns` it treats every column alike — no column is kept and the others
    bent away from it in index order — so factors that are already nearly orthogonal barely
    move, whatever their order. Spans the same space as V.
    """
    P, _, Wh = torch.linalg.svd(V, full_matrices=False)  # (d, m), (m,), (m, m)
    return P @ Wh


ORTHO = ("qr", "polar")


def orthonormalize(V: Tensor, how: str) -> Tensor:
    """:func:`qr_columns` (``"qr"``, as published) or :func:`polar_columns` (``"polar"``)."""
    if how == "qr":
        return qr_columns(V)
    if how == "polar":
        return polar_columns(V)
    raise ValueError(f"ortho={how!r}: choose one of {', '.join(ORTHO)}")


def column_movement(A: Tensor, B: Tensor) -> float:
    """max_ℓ ‖a_ℓ − b_ℓ‖ over columns of two (d, m) matrices of unit columns."""
    return float((A - B).norm(dim=0).max()) if A.numel() else 0.0


def interleave(A: Tensor, B: Tensor, m: int) -> Tensor:
    """Columns a_0, b_0, a_1, b_1, … of A, B (d, k) — or entries, for 1-d A, B (k,) —
    truncated to m. Sign-symmetric methods store feature pairs this way: ``interleave(V, -V, m)``
    (``V[:, 2i] = v_i``, ``V[:, 2i+1] = −v_i``) with ``interleave(U, U, m)`` and
    ``interleave(alpha, alpha, m)``."""
    if A.ndim == 1:
        return torch.stack([A, B], dim=1).reshape(-1)[:m]
    d, k = A.shape
    return torch.stack([A, B], dim=2).reshape(d, 2 * k)[:, :m]
