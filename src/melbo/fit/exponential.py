"""Exponential DCT: Orthogonalised Gradient Iteration (OGI), ``method.md`` §3 algorithm 3.

Each iteration, from unit factors U, V (d, m):

1. V ← orthonormalise(V)                          (inputs only, never U; ``ortho``: the polar
                                                  factor, or Q of QR(V), diag(R) ≥ 0, as published)
2. G_U ← Δ_R(V)                                   (column ℓ = Δ(R v_ℓ))
3. G_V ← R · J(R V)ᵀ U                            (column ℓ = R J(R v_ℓ)ᵀ u_ℓ)
4. U ← normalise(β Ĝ_U + (1−β) U),  V ← normalise(β Ĝ_V + (1−β) V)

Steps 2–3 are one :meth:`CausalMap.value_and_vjp` call (one forward + one backward).
Ĝ = normalise(G): damping mixes unit vectors, so β means the same whatever the scale of
Δ (``method.md`` mixes the raw G; identical for the published β = 1).

The objective Σ_ℓ ⟨u_ℓ, Δ_R(v_ℓ)⟩ is recorded at the factors each iteration starts from
(after step 1). The fit stops when no factor moves more than ``tol`` (max over ℓ of
‖u_ℓ − u_ℓ'‖ and ‖v_ℓ − v_ℓ'‖ between consecutive iterates) or after ``max_iter``
iterations, with a :class:`ConvergenceWarning`. The returned V is the last update
(step 4), not re-orthogonalised. α solves K α = b (:func:`melbo.fit.alphas.exponential_alphas`).

The defaults are the annealed step of :mod:`melbo.fit.step` (20 iterations, β = 0.5, polar
orthogonalisation, the damping annealed after 10); ``**step_options("published")`` gives the
publication's (10 iterations, β = 1, QR, a fixed β). Two further options change the step (both
off by default, i.e. as published):

* ``sequential=True`` updates U first and takes G_V with the *updated* U,
  ``G_V ← R · J(R V)ᵀ U_new`` (Gauss–Seidel, as the quadratic ALS does), instead of the
  U the iteration started from (Jacobi). With β = 1, ``U_new = normalise(Δ_R(V))``, so
  v_ℓ moves along the gradient of ‖Δ_R(v_ℓ)‖ — the original MELBO objective — and the
  input U plays no part. In the published (Jacobi) step u lags one iteration behind v.
  Costs a ``value`` and a ``vjp`` call (two forwards and one backward through a model)
  instead of one ``value_and_vjp``.
* ``orient=True`` evaluates Δ_R at ±v_ℓ and, where ‖Δ_R(−v_ℓ)‖ > ‖Δ_R(v_ℓ)‖, replaces
  (u_ℓ, v_ℓ) by (−u_ℓ, −v_ℓ) before the step. An exponential feature is signed and
  −v*_ℓ is itself a fixed point of the step (with u = −u*_ℓ), one that orthogonalisation
  can trap a factor in once the other factors fill the directions around it. Costs one
  ``value`` call on 2m columns; with it, ``sequential`` costs nothing more.

``bench/synthetic_recovery.py`` measures what they do on planted factors.

``ortho_iters`` is the orthogonalisation schedule: step 1 runs in the first
``ortho_iters`` iterations only (None: every iteration, as published). Orthogonalising
spreads the factors over the input space; once they have separated, plain gradient
iterations let each v_ℓ settle on its own fixed point, which need not be orthogonal to the
others (as in Sharan & Valiant's Orth-ALS, which drops orthogonalisation after a few steps).
Caution: with unequal scales the fixed point of a weak feature is unstable without the
QR (the strong features' linear response outgrows its own), so the factors collapse onto
the strong ones — on planted maps with α*_k = 1/k, ``ortho_iters=3`` keeps 2 of 32
(``bench/synthetic_recovery.py --alpha-power 1``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

import torch
from torch import Tensor

from melbo.errors import check_anneal, check_anneal_after
from melbo.fit._common import (
    ORTHO,
    RandomState,
    check_delta,
    check_positive_int,
    check_R,
    check_tol,
    check_unit_interval,
    column_movement,
    make_generator,
    normalize_columns,
    orthonormalize,
)
from melbo.fit.alphas import exponential_alphas
from melbo.fit.estimator import FitEstimator
from melbo.fit.init import Init, initial_factors
from melbo.fit.loop import iterate
from melbo.fit.result import FitResult, IterationState
from melbo.fit.step import DEFAULT_STEP, damping, resolve_anneal_after
from melbo.maps.protocol import CausalMap

__all__ = ["Callback", "ExponentialDCT", "OGIStep", "exponential_dct", "ogi_step"]

logger = logging.getLogger(__name__)

Callback = Callable[[int, IterationState], "bool | None"]
"""``callback(iteration, state)``, called after every iteration (0-based); return True to stop."""


@dataclass(frozen=True)
class OGIStep:
    """Result of one :func:`ogi_step`.

    U, V : Tensor, shape (d, m) — updated unit factors.
    value : Tensor, shape (d, m) — G_U = Δ_R(V_in) (V_in after orientation).
    objective : float — Σ_ℓ ⟨u_ℓ, Δ_R(v_ℓ)⟩ at the input factors (after orientation).
    flipped : Tensor of bool, shape (m,), or None — with ``orient``, the factors whose
        sign was flipped before the step; None without.
    """

    U: Tensor
    V: Tensor
    value: Tensor
    objective: float
    flipped: Tensor | None = None


def ogi_step(
    delta: CausalMap,
    U: Tensor,
    V: Tensor,
    R: float,
    beta: float = 1.0,
    *,
    sequential: bool = False,
    orient: bool = False,
) -> OGIStep:
    """Steps 2–4 of OGI from (U, V) (V as given: orthogonalise before if wanted).

    Parameters
    ----------
    U, V : Tensor, shape (d, m)
        Current unit factors.
    R : float
        Steering norm.
    beta : float
        Damping in (0, 1]; 1 = undamped.
    sequential : bool
        If True, G_V = R J(R V)ᵀ U_new with the updated (damped) U_new instead of the
        input U (see the module docstring).
    orient : bool
        If True, first flip (u_ℓ, v_ℓ) → (−u_ℓ, −v_ℓ) where ‖Δ_R(−v_ℓ)‖ > ‖Δ_R(v_ℓ)‖
        (see the module docstring).
    """
    _check_bool("sequential", sequential)
    _check_bool("orient", orient)
    flipped: Tensor | None = None
    if orient:
        m = V.shape[1]
        both = delta.value(torch.cat([R * V, -R * V], dim=1))  # (d, 2m)
        G_plus, G_minus = both[:, :m], both[:, m:]
        flipped = G_minus.norm(dim=0) > G_plus.norm(dim=0)  # (m,)
        sign = 1.0 - 2.0 * flipped.to(V.dtype)
        U, V = U * sign, V * sign
        G_U = torch.where(flipped, G_minus, G_plus)
    elif sequential:
        G_U = delta.value(R * V)
    else:
        G_U, G_V = delta.value_and_vjp(R * V, U)  # (d, m), (d, m)
    objective = float((U * G_U).sum())
    U_new = normalize_columns(G_U)
    if beta != 1.0:
        U_new = normalize_columns(beta * U_new + (1.0 - beta) * U)
    if orient or sequential:
        G_V = delta.vjp(R * V, U_new if sequential else U)
    V_new = normalize_columns(R * G_V)
    if beta != 1.0:
        V_new = normalize_columns(beta * V_new + (1.0 - beta) * V)
    return OGIStep(U_new, V_new, G_U, objective, flipped)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def exponential_dct(
    delta: CausalMap,
    n_factors: int = 512,
    *,
    R: float,
    max_iter: int = DEFAULT_STEP.max_iter,
    beta: float = DEFAULT_STEP.beta,
    tol: float = 1e-4,
    init: Init = "projected",
    ortho_iters: int | None = None,
    random_state: RandomState = None,
    d_proj: int = 32,
    callback: Callback | None = None,
    rcond: float = 1e-6,
    sequential: bool = False,
    orient: bool = False,
    ortho: str = DEFAULT_STEP.ortho,
    anneal: float | None = DEFAULT_STEP.anneal,
    anneal_after: int | None = None,
) -> FitResult:
    """Fit an exponential transcoder with OGI (see module docstring).

    Parameters
    ----------
    delta : CausalMap
    n_factors : int
        m ≥ 1 (m ≤ d while orthogonalising).
    R : float
        Steering norm (see :func:`melbo.fit.calibrate_R`; :class:`ExponentialDCT` calibrates it).
    max_iter : int
        τ ≥ 1, the iteration limit (the default step's 20; 10 in the publication).
    beta : float
        Damping in (0, 1] (the default step's 0.5; 1 in the publication).
    tol : float
        Convergence threshold on factor movement (≥ 0; 0 never stops early).
    init : {"projected", "backward", "random"} or (U, V)
        See :mod:`melbo.fit.init`.
    ortho_iters : int or None
        Orthogonalise V in the first ``ortho_iters`` iterations only; None = always.
    random_state : int, torch.Generator or None
    d_proj : int
        Projection size of the ``"projected"`` init.
    callback : callable, optional
        ``callback(iteration, IterationState)`` after each iteration; return True to stop
        (e.g. after writing a checkpoint of ``state.U``, ``state.V``).
    rcond : float
        Relative eigenvalue cutoff of the α solve.
    sequential : bool
        Take G_V with the updated U (Gauss–Seidel); False = as published.
    orient : bool
        Flip each factor to the side of larger ‖Δ_R(±v_ℓ)‖ before every step.
    ortho : {"qr", "polar"}
        How step 1 orthogonalises V: QR with fixed signs (as published; column ℓ is bent away
        from columns 1..ℓ−1) or the closest orthonormal matrix (symmetric, the default; see
        :func:`melbo.fit._common.polar_columns`).
    anneal : float or None
        Damping schedule: iteration k (from 0) mixes with β_k = β / (1 + k / anneal), so the
        steps shrink and the factors come to rest where a fixed β leaves them circling a
        plateau of the objective (the default step's 5); None keeps β fixed.
    anneal_after : int or None
        Iterations at the full β before the schedule starts: iteration k ≥ ``anneal_after``
        mixes with β / (1 + (k − anneal_after) / anneal), so the first ``anneal_after``
        iterations are those of the fixed-β fit and only the rest shrink. Needs ``anneal``
        when > 0. None: the default step's 10 with ``anneal``, 0 without.

    Every option works sharded over GPUs too: :func:`melbo.jobs.distributed.distributed_fit`
    runs this function on a :class:`melbo.jobs.distributed.ShardedCausalMap`.

    Returns
    -------
    FitResult
        method ``"exponential"``; U, V of shape (d, m), α ≥ 0 of shape (m,); ``history``
        the objective per iteration.
    """
    delta = check_delta(delta)
    m = check_positive_int("n_factors", n_factors)
    R = check_R(R)
    max_iter = check_positive_int("max_iter", max_iter)
    beta = check_unit_interval("beta", beta)
    tol = check_tol(tol)
    if ortho_iters is not None:
        ortho_iters = check_positive_int("ortho_iters", ortho_iters, minimum=0)
    _check_bool("sequential", sequential)
    _check_bool("orient", orient)
    anneal = check_anneal(anneal)
    anneal_after = check_anneal_after(resolve_anneal_after(anneal, anneal_after), anneal)
    if ortho not in ORTHO:
        raise ValueError(f"ortho={ortho!r}: choose one of {', '.join(ORTHO)}")
    if m > delta.d_model and ortho_iters != 0:
        raise ValueError(
            f"n_factors must be <= d_model = {delta.d_model} to orthogonalise, got {m} "
            "(or pass ortho_iters=0)"
        )
    generator = make_generator(random_state)
    U, V = initial_factors(delta, m, init, R=R, generator=generator, d_proj=d_proj)

    def one(it: int, U: Tensor, V: Tensor) -> tuple[Tensor, Tensor, float, float]:
        Vo = orthonormalize(V, ortho) if ortho_iters is None or it < ortho_iters else V
        step = ogi_step(delta, U, Vo, R, damping(beta, it, anneal, anneal_after), sequential=sequential, orient=orient)
        return step.U, step.V, step.objective, max(column_movement(step.U, U), column_movement(step.V, V))

    loop = iterate(one, U, V, max_iter=max_iter, tol=tol, callback=callback, name="OGI")
    alpha = exponential_alphas(delta, loop.U, loop.V, R, rcond=rcond)
    logger.info("OGI: %d iterations, objective %.6g, converged=%s", loop.n_iter, loop.objective[-1], loop.converged)
    return loop.result(alpha=alpha, R=R, method="exponential")


@dataclass(eq=False)
class ExponentialDCT(FitEstimator):
    """Estimator of :func:`exponential_dct` (the contract of :mod:`melbo.fit.estimator`).

    Parameters are those of :func:`exponential_dct` (defaults: the annealed step of
    :mod:`melbo.fit.step`; ``**step_options("published")`` for the publication's), plus ``R`` (None: calibrated with
    :func:`melbo.fit.calibrate_R` at ``lam`` on ``n_cal`` directions). Fitted attributes:
    ``U_``, ``V_``, ``alpha_``, ``R_``, ``history_`` (the objective per iteration),
    ``scores_`` (empty), ``n_iter_``, ``converged_``, ``result_``, ``calibration_``.
    """

    n_factors: int = 512
    _: KW_ONLY
    max_iter: int = DEFAULT_STEP.max_iter
    beta: float = DEFAULT_STEP.beta
    tol: float = 1e-4
    init: Init = "projected"
    ortho_iters: int | None = None
    d_proj: int = 32
    callback: Callback | None = None
    rcond: float = 1e-6
    sequential: bool = False
    orient: bool = False
    ortho: str = DEFAULT_STEP.ortho
    anneal: float | None = DEFAULT_STEP.anneal
    anneal_after: int | None = None

    _fit_function = staticmethod(exponential_dct)
