"""Linear DCT (``method.md`` §3, algorithms 1 and 1′) and the projected-Jacobian initialiser.

Full: SVD of the explicit Jacobian J = J(0), built from d JVPs. With ``J = P S Qᵀ``
(``torch.linalg.svd`` returns ``P, S, Qᵀ``), the *input* directions are the right singular
vectors — the columns of Q, i.e. the **rows** of ``Vh`` — and the output directions the
columns of P. (The published code takes the columns of ``Vh``, which are not singular
vectors.)

Projected: a random Gaussian W (d_proj × d); the Jacobian of WΔ at 0 is W J, whose
transpose ``Jᵀ Wᵀ`` is one batched VJP at θ = 0. Its top right singular vectors are the
input directions; U = normalised Δ_R(V). At most d_proj useful features.

Both methods are sign-symmetric (the features ±v describe the same linear term), so m
features are ⌈m/2⌉ directions interleaved with their negations:
``V[:, 2i] = v_i``, ``V[:, 2i+1] = −v_i``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import KW_ONLY, dataclass

import torch
from torch import Tensor

from melbo.fit._common import (
    RandomState,
    check_choice,
    check_delta,
    check_positive_int,
    check_R,
    interleave,
    make_generator,
    normalize_columns,
    randn,
)
from melbo.fit.alphas import solve_alphas
from melbo.fit.estimator import FitEstimator
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap

__all__ = [
    "LINEAR_METHODS",
    "LinearDCT",
    "explicit_jacobian",
    "linear_dct",
    "linear_full",
    "linear_projected",
    "projected_directions",
]

logger = logging.getLogger(__name__)

LINEAR_METHODS = ("full", "projected")


def explicit_jacobian(delta: CausalMap, *, chunk_size: int = 256) -> Tensor:
    """J(0) as a (d, d) matrix from d JVPs at 0 (``chunk_size`` columns per call)."""
    delta = check_delta(delta)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    d = delta.d_model
    eye = torch.eye(d, dtype=delta.dtype, device=delta.device)
    cols = [delta.jvp0(eye[:, i : i + chunk_size]) for i in range(0, d, chunk_size)]
    return torch.cat(cols, dim=1)  # (d, d)


def _max_entry_signs(X: Tensor) -> Tensor:
    """±1 per column of X (d, k): the sign of the column's largest-|·| entry, shape (k,)."""
    idx = X.abs().argmax(dim=0)  # (k,)
    s = torch.sign(X[idx, torch.arange(X.shape[1], device=X.device)])
    return torch.where(s == 0, torch.ones_like(s), s)


def _check_m(m: object) -> int:
    return check_positive_int("n_factors", m)


def linear_full(delta: CausalMap, n_factors: int, *, R: float, chunk_size: int = 256) -> FitResult:
    """Linear DCT from the SVD of the explicit Jacobian.

    Parameters
    ----------
    delta : CausalMap
    n_factors : int
        m, 1 ≤ m ≤ 2d; ⌈m/2⌉ singular directions and their negations.
    R : float
        Steering norm; only scales α (the linear transcoder of Δ_R has α = R·s).
    chunk_size : int
        JVP columns per call when building J.

    Returns
    -------
    FitResult
        method ``"linear"``; U, V of shape (d, m); α_ℓ = R s_i for both v_i and −v_i (each half on its own is
        an exact linear transcoder, so α is not split between them).
    """
    delta = check_delta(delta)
    m = _check_m(n_factors)
    R = check_R(R)
    d = delta.d_model
    if m > 2 * d:
        raise ValueError(f"n_factors must be <= 2 * d_model = {2 * d} for linear-full, got {m}")
    k = math.ceil(m / 2)
    J = explicit_jacobian(delta, chunk_size=chunk_size)  # (d, d)
    P, S, Vh = torch.linalg.svd(J, full_matrices=False)  # (d, d), (d,), (d, d)
    Vk = Vh[:k].T  # (d, k): right singular vectors are the ROWS of Vh
    Uk = P[:, :k]  # (d, k)
    flip = _max_entry_signs(Vk)  # (k,): deterministic sign, J v = s u is kept
    Vk, Uk = Vk * flip, Uk * flip
    V = interleave(Vk, -Vk, m)
    U = interleave(Uk, -Uk, m)
    alpha = interleave(R * S[:k], R * S[:k], m)
    logger.info("linear_full: top singular values %s", S[: min(k, 5)].tolist())
    return FitResult(U=U, V=V, alpha=alpha, R=R, method="linear")


def projected_directions(
    delta: CausalMap, k: int, *, d_proj: int = 32, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Top-k right singular vectors of W J(0) for a Gaussian W (d_proj, d).

    Returns (V, S): V of shape (d, k) (k ≤ min(d_proj, d)), S the k singular values.
    Costs one batched VJP of d_proj columns at θ = 0.
    """
    d = delta.d_model
    d_proj = check_positive_int("d_proj", d_proj)
    if k > min(d_proj, d):
        raise ValueError(f"at most min(d_proj, d_model) = {min(d_proj, d)} projected directions, asked {k}")
    Wt = randn(d, d_proj, generator, delta) / math.sqrt(d)  # (d, d_proj) = Wᵀ
    A = delta.vjp(torch.zeros_like(Wt), Wt)  # (d, d_proj) = (W J)ᵀ
    P, S, _ = torch.linalg.svd(A, full_matrices=False)  # right sing. vecs of WJ = left of A
    Vk = P[:, :k]
    return Vk * _max_entry_signs(Vk), S[:k]


def linear_projected(
    delta: CausalMap,
    n_factors: int,
    *,
    R: float,
    d_proj: int = 32,
    random_state: RandomState = None,
    rcond: float = 1e-6,
) -> FitResult:
    """Linear DCT from the Jacobian of a random projection WΔ.

    Parameters
    ----------
    n_factors : int
        m, 1 ≤ m ≤ 2·min(d_proj, d).
    R : float
        Steering norm: U = normalise(Δ_R(V)).
    d_proj : int
        Rows of W.
    random_state : int, torch.Generator or None

    Returns
    -------
    FitResult
        method ``"linear-projected"``; α solves the linear normal equations K α = b, K = (UᵀU)⊙(VᵀV), b_ℓ = R⟨u_ℓ, J v_ℓ⟩,
        separately for the v-half and the −v-half (see :func:`linear_full`).
    """
    delta = check_delta(delta)
    m = _check_m(n_factors)
    R = check_R(R)
    d_proj = check_positive_int("d_proj", d_proj)
    kmax = min(d_proj, delta.d_model)
    if m > 2 * kmax:
        raise ValueError(
            f"n_factors must be <= 2 * min(d_proj, d_model) = {2 * kmax} for linear-projected, got {m}; "
            "increase d_proj"
        )
    k = math.ceil(m / 2)
    Vk, _ = projected_directions(delta, k, d_proj=d_proj, generator=make_generator(random_state))
    V = interleave(Vk, -Vk, m)  # (d, m)
    U = normalize_columns(delta.value(R * V))  # (d, m)
    JV = delta.jvp0(Vk)  # (d, k)
    alpha = torch.empty(m, dtype=delta.dtype, device=delta.device)
    for half, sign in ((slice(0, m, 2), 1.0), (slice(1, m, 2), -1.0)):
        Uh, Vh = U[:, half], V[:, half]
        n = Uh.shape[1]
        b = R * sign * (Uh * JV[:, :n]).sum(dim=0)
        K = (Uh.T @ Uh) * (Vh.T @ Vh)
        alpha[half] = solve_alphas(K, b, rcond=rcond)
    return FitResult(U=U, V=V, alpha=alpha, R=R, method="linear-projected")


def linear_dct(
    delta: CausalMap,
    n_factors: int,
    *,
    R: float,
    method: str = "projected",
    d_proj: int = 32,
    random_state: RandomState = None,
    chunk_size: int = 256,
) -> FitResult:
    """Dispatch to :func:`linear_full` or :func:`linear_projected` by ``method``."""
    method = check_choice("linear method", method, LINEAR_METHODS)
    if method == "full":
        return linear_full(delta, n_factors, R=R, chunk_size=chunk_size)
    return linear_projected(delta, n_factors, R=R, d_proj=d_proj, random_state=random_state)


@dataclass(eq=False)
class LinearDCT(FitEstimator):
    """Estimator of :func:`linear_dct` (the contract of :mod:`melbo.fit.estimator`):
    ``method="full"`` is the registry's ``"linear"``, ``"projected"`` its
    ``"linear-projected"``. ``R`` None: calibrated at ``lam`` on ``n_cal`` directions.
    Not iterative: ``history_`` and ``scores_`` are empty, ``n_iter_`` is 0.
    """

    n_factors: int = 64
    _: KW_ONLY
    method: str = "projected"
    d_proj: int = 32
    chunk_size: int = 256

    _fit_function = staticmethod(linear_dct)
