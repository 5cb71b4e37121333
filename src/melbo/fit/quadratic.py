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
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from melbo.fit._common import (
    ConvergenceWarning,
    RandomState,
    check_delta,
    check_positive_int,
    check_R,
    column_movement,
    make_generator,
    normalize_columns,
    qr_columns,
)
from melbo.fit.alphas import quadratic_alphas
from melbo.fit.estimator import FitEstimator
from melbo.fit.exponential import Callback
from melbo.fit.init import Init, initial_factors
from melbo.fit.result import FitResult, IterationState
from melbo.protocol import CausalMap

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

    Returns ``(U, V, objective, movement, converged)`` with U, V of shape (d, k). The
    movement of V is measured up to sign (a quadratic factor is even in v).
    """
    delta = check_delta(delta)
    k = check_positive_int("n_factors", k)
    max_iter = check_positive_int("max_iter", max_iter)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if orthogonalize and k > delta.d_model:
        raise ValueError(f"need at most d_model = {delta.d_model} ALS factors to orthogonalise, got {k}")
    generator = make_generator(random_state)
    _, V = initial_factors(delta, k, init, R=1.0, generator=generator, d_proj=d_proj)
    U = torch.zeros_like(V)
    objective: list[float] = []
    movement: list[float] = []
    converged = stopped = False
    for it in range(max_iter):
        Vo = qr_columns(V) if orthogonalize else V
        step = als_step(delta, Vo)
        sign = torch.sign((step.V * V).sum(dim=0))
        move = max(column_movement(step.U, U), column_movement(step.V * torch.where(sign == 0, 1.0, sign), V))
        U, V = step.U, step.V
        objective.append(step.objective)
        movement.append(move)
        logger.debug("ALS iteration %d: objective %.6g, movement %.3g", it, step.objective, move)
        if callback is not None and callback(it, IterationState(U, V, step.objective, move)):
            stopped = True
            break
        if move < tol:
            converged = True
            break
    if warn and not converged and not stopped:
        warnings.warn(
            f"quadratic ALS did not converge in max_iter={max_iter} iterations "
            f"(last factor movement {movement[-1]:.3g} > tol={tol:g})",
            ConvergenceWarning,
            stacklevel=2,
        )
    return U, V, objective, movement, converged


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
    d = V.shape[0]
    V2 = torch.stack([V, -V], dim=2).reshape(d, 2 * k)[:, :m]
    U2 = torch.stack([U, U], dim=2).reshape(d, 2 * k)[:, :m]
    alpha = torch.stack([alpha_k, alpha_k], dim=1).reshape(2 * k)[:m]
    logger.info("quadratic ALS: %d iterations, objective %.6g, converged=%s", len(objective), objective[-1], converged)
    return FitResult(
        U=U2,
        V=V2,
        alpha=alpha,
        R=R,
        method="quadratic",
        objective=objective,
        n_iter=len(objective),
        converged=converged,
        movement=movement,
    )


class QuadraticDCT(FitEstimator):
    """Estimator wrapper of :func:`quadratic_dct` (sklearn style).

    ``__init__`` only stores arguments; :meth:`fit` validates them, resolves
    ``random_state`` and calibrates R (at ``lam``) if ``R`` is None.

    Attributes (after fit)
    ----------------------
    factors_ : (U, V), each a Tensor of shape (d, m)
    alpha_ : Tensor, shape (m,)
    R_ : float
    objective_ : list of float
    n_iter_ : int
    converged_ : bool
    result_ : FitResult
    """

    def __init__(
        self,
        n_factors: int = 512,
        *,
        R: float | None = None,
        lam: float = 0.5,
        max_iter: int = 10,
        tol: float = 1e-4,
        init: Init = "projected",
        random_state: RandomState = None,
        d_proj: int = 32,
        callback: Callback | None = None,
    ) -> None:
        self.n_factors = n_factors
        self.R = R
        self.lam = lam
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.d_proj = d_proj
        self.callback = callback

    def _run(self, delta: CausalMap, R: float, generator: torch.Generator) -> FitResult:
        return quadratic_dct(
            delta,
            self.n_factors,
            R=R,
            max_iter=self.max_iter,
            tol=self.tol,
            init=self.init,
            random_state=generator,
            d_proj=self.d_proj,
            callback=self.callback,
        )
