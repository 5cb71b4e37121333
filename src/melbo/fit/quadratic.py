"""Quadratic DCT: symmetric orthogonalised ALS (``method.md`` §3 algorithm 2).

With the *true* second derivative T⁽²⁾ of Δ at 0 (not the Jacobian, as in the published
code), each iteration from unit V (d, k):

1. V ← Q of QR(V), signs fixed so diag(R) ≥ 0
2. u_ℓ ← normalise(T⁽²⁾(·, v_ℓ, v_ℓ))          (:meth:`CausalMap.hvv0`)
3. v_ℓ ← normalise(T⁽²⁾(u_ℓ, v_ℓ, ·))          (:meth:`CausalMap.uhv0`, with the new u_ℓ)

The objective Σ_ℓ T⁽²⁾(u_ℓ, v_ℓ, v_ℓ) = Σ_ℓ ‖T⁽²⁾(·, v_ℓ, v_ℓ)‖ is recorded per iteration.
A quadratic feature is even in v, so m features are ⌈m/2⌉ ALS factors interleaved with
their negations (``V[:, 2i] = v_i``, ``V[:, 2i+1] = −v_i``, same u and α). α solves
K α = ½R² b (:func:`melbo.fit.alphas.quadratic_alphas`; the ½ is explained there).
"""

from __future__ import annotations

import logging
import math
from dataclasses import KW_ONLY, dataclass

import torch
from torch import Tensor

from melbo.fit._common import (
    RandomState,
    check_delta,
    check_positive_int,
    check_R,
    check_tol,
    column_movement,
    interleave,
    make_generator,
    normalize_columns,
    qr_columns,
)
from melbo.fit.alphas import quadratic_alphas
from melbo.fit.estimator import FitEstimator
from melbo.fit.exponential import Callback
from melbo.fit.init import Init, initial_factors
from melbo.fit.loop import iterate
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap

__all__ = ["ALSStep", "QuadraticDCT", "als_step", "quadratic_als", "quadratic_dct"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ALSStep:
    """Result of one :func:`als_step`: new unit U, V (d, k) and Σ_ℓ T⁽²⁾(u_ℓ, v_ℓ, v_ℓ)."""

    U: Tensor
    V: Tensor
    objective: float


def als_step(delta: CausalMap, V: Tensor) -> ALSStep:
    """Steps 2–3 from V (d, k) as given (orthogonalise before if wanted)."""
    H = delta.hvv0(V)  # (d, k): T2(·, v, v)
    U = normalize_columns(H)
    V_new = normalize_columns(delta.uhv0(U, V))  # (d, k): T2(u, v, ·)
    return ALSStep(U, V_new, float((U * H).sum()))


def quadratic_als(
    delta: CausalMap,
    k: int,
    *,
    max_iter: int = 10,
    tol: float = 1e-4,
    init: Init = "projected",
    orthogonalize: bool = True,
    random_state: RandomState = None,
    d_proj: int = 32,
    callback: Callback | None = None,
    warn: bool = True,
) -> tuple[Tensor, Tensor, list[float], list[float], bool]:
    """Run the ALS iterations on k factors.

    Returns ``(U, V, history, movement, converged)`` with U, V of shape (d, k). The
    movement of V is measured up to sign (a quadratic factor is even in v).
    """
    delta = check_delta(delta)
    k = check_positive_int("n_factors", k)
    max_iter = check_positive_int("max_iter", max_iter)
    tol = check_tol(tol)
    if orthogonalize and k > delta.d_model:
        raise ValueError(f"need at most d_model = {delta.d_model} ALS factors to orthogonalise, got {k}")
    generator = make_generator(random_state)
    _, V = initial_factors(delta, k, init, R=1.0, generator=generator, d_proj=d_proj)
    U = torch.zeros_like(V)
    def one(it: int, U: Tensor, V: Tensor) -> tuple[Tensor, Tensor, float, float]:
        step = als_step(delta, qr_columns(V) if orthogonalize else V)
        sign = torch.sign((step.V * V).sum(dim=0))  # an ALS factor is defined up to sign
        move = max(column_movement(step.U, U), column_movement(step.V * torch.where(sign == 0, 1.0, sign), V))
        return step.U, step.V, step.objective, move

    loop = iterate(one, U, V, max_iter=max_iter, tol=tol, callback=callback, name="quadratic ALS", warn=warn)
    return loop.U, loop.V, loop.objective, loop.movement, loop.converged


def quadratic_dct(
    delta: CausalMap,
    n_factors: int,
    *,
    R: float,
    max_iter: int = 10,
    tol: float = 1e-4,
    init: Init = "projected",
    random_state: RandomState = None,
    d_proj: int = 32,
    callback: Callback | None = None,
    rcond: float = 1e-6,
) -> FitResult:
    """Fit a quadratic transcoder by orthogonalised ALS.

    Parameters
    ----------
    delta : CausalMap
    n_factors : int
        m ≥ 1 features: ⌈m/2⌉ ALS factors (≤ d) and their negations.
    R : float
        Steering norm; only scales α (α ∝ R²).
    max_iter : int
        τ ≥ 1.
    tol : float
        Stop when no factor moves more than this (≥ 0).
    init : {"projected", "backward", "random"} or (U, V) with ⌈m/2⌉ columns
        See :mod:`melbo.fit.init` (only V is used).
    random_state, d_proj, callback, rcond
        As in :func:`melbo.fit.exponential_dct`.

    Returns
    -------
    FitResult
        method ``"quadratic"``; U, V of shape (d, m), α ≥ 0 of shape (m,).
    """
    delta = check_delta(delta)
    m = check_positive_int("n_factors", n_factors)
    R = check_R(R)
    if m > 2 * delta.d_model:
        raise ValueError(
            f"n_factors must be <= 2 * d_model = {2 * delta.d_model} for quadratic DCT "
            f"(ceil(m/2) orthogonalised ALS factors and their negations), got {m}"
        )
    k = math.ceil(m / 2)
    U, V, objective, movement, converged = quadratic_als(
        delta,
        k,
        max_iter=max_iter,
        tol=tol,
        init=init,
        random_state=random_state,
        d_proj=d_proj,
        callback=callback,
    )
    alpha_k = quadratic_alphas(delta, U, V, R, rcond=rcond)  # (k,)
    V2, U2, alpha = interleave(V, -V, m), interleave(U, U, m), interleave(alpha_k, alpha_k, m)
    logger.info("quadratic ALS: %d iterations, objective %.6g, converged=%s", len(objective), objective[-1], converged)
    return FitResult(
        U=U2,
        V=V2,
        alpha=alpha,
        R=R,
        method="quadratic",
        history=objective,
        n_iter=len(objective),
        converged=converged,
        movement=movement,
    )


@dataclass(eq=False)
class QuadraticDCT(FitEstimator):
    """Estimator of :func:`quadratic_dct` (the contract of :mod:`melbo.fit.estimator`).

    Parameters are those of :func:`quadratic_dct`, plus ``R`` (None: calibrated at ``lam``
    on ``n_cal`` directions). Fitted attributes as :class:`melbo.fit.ExponentialDCT`
    (``history_``: Σ_ℓ T⁽²⁾(u_ℓ, v_ℓ, v_ℓ) per iteration).
    """

    n_factors: int = 512
    _: KW_ONLY
    max_iter: int = 10
    tol: float = 1e-4
    init: Init = "projected"
    d_proj: int = 32
    callback: Callback | None = None
    rcond: float = 1e-6

    _fit_function = staticmethod(quadratic_dct)
