"""Original MELBO (Mack & Turner, 2024; ``method.md`` §6): unsupervised steering vectors
learned one at a time by projected AMSGrad on the sphere of radius R.

For prompt i, with the target positions P_i of the causal map Δ,

    Δ_i(θ) = mean_{p∈P_i} [ F_{s→t}(x_i + θ)[p] − y_i[p] ]                 ∈ R^d
    f(θ)   = ( Σ_i ‖Δ_i(θ)‖^p )^(1/q)                    (p = 2, q = p by default)

and vector ℓ maximises f over ‖θ‖ = R (θ added at every position of the layer-s input,
exactly where Δ is trained). Each step, as in the published code:

1. g ← −∇f(θ)                          (the optimiser minimises −f)
2. g ← g − Q Qᵀ g                       (orthogonal mode: Q = earlier unit vectors)
3. g ← g − ⟨g, θ⟩ θ / R²                (tangent space of the sphere)
4. one AMSGrad step on θ (``torch.optim.Adam(amsgrad=True)``, betas (0.9, 0.98))
5. θ ← θ − Q Qᵀ θ (orthogonal mode);  θ ← R θ / ‖θ‖

Vector ℓ starts from a seeded Gaussian direction (orthogonal to the earlier ones in
orthogonal mode). Features: ``V[:, ℓ] = θ_ℓ / R``, ``U[:, ℓ] = Δ_R(v_ℓ)/‖Δ_R(v_ℓ)‖``,
``α_ℓ = ‖Δ_R(v_ℓ)‖`` (Δ_R(v) is the mean over prompts, the quantity every method shares).

Differences from the published code, all deliberate:

* θ is added to the residual stream entering layer s (``hidden_states[s]``), not as a
  bias of layer s's MLP output (which is ``hidden_states[s+1]`` minus the attention write).
* Δ_i is the mean over target positions, then the norm; the published code takes, per
  prompt, the norm over *positions* of each coordinate (``.norm(dim=1)`` on (1, k, d)),
  raises it to p and sums over coordinates, and sums the per-prompt ``(…)^(1/q)`` over
  prompts. Here (as in ``method.md``) the 1/q power is applied once, to the sum over
  prompts. ``q = p`` makes f the ℓ_p norm of the per-prompt effects.
* Prompts are batched (one forward and backward per step for all prompts), padded, with
  the target positions of Δ.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, fields

import torch
from torch import Tensor

from melbo.baselines.random_vectors import output_directions
from melbo.fit._common import (
    RandomState,
    check_positive_int,
    check_R,
    check_tol,
    make_generator,
    normalize_columns,
    randn,
)
from melbo.fit.estimator import FitEstimator
from melbo.fit.exceptions import ConvergenceWarning
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap
from melbo.maps.transformer import TransformerCausalMap
from melbo.models.hooks import gather_positions

__all__ = ["MelboV1", "StepCallback", "melbo_v1", "melbo_v1_objective", "per_prompt_delta"]

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]
"""``callback(vector, step, objective)``, called after every optimiser step (0-based)."""


def per_prompt_delta(delta: TransformerCausalMap, theta: Tensor) -> Tensor:
    """Per-prompt effect of one steering vector, differentiable in ``theta``.

    Parameters
    ----------
    delta : TransformerCausalMap
        Supplies the recorded slice (``delta.slice``), the target positions and the
        unsteered targets.
    theta : Tensor, shape (d,)
        Added to every position of the layer-s input.

    Returns
    -------
    Tensor, shape (n, d), in ``delta.dtype``
        Row i = Δ_i(θ) = mean over prompt i's target positions of F(x_i + θ) − y_i; the
        mean over rows is ``delta.value(theta[:, None])[:, 0]``.
    """
    if not isinstance(delta, TransformerCausalMap):
        raise TypeError(f"delta must be a TransformerCausalMap, got {type(delta).__name__}")
    d = delta.d_model
    if not isinstance(theta, Tensor) or theta.shape != (d,):
        shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        raise ValueError(f"theta must be a tensor of shape (d_model,) = ({d},), got {shape}")
    out = delta.steered_stream(theta[None, :])  # (n, T, d)
    picked = gather_positions(out, delta.positions).to(device=delta.device, dtype=delta.dtype)  # (n, k, d)
    return (picked - delta.targets).mean(dim=1)  # (n, d)


def _objective(per_prompt: Tensor, p: float, q: float) -> Tensor:
    """(Σ_i ‖Δ_i‖^p)^(1/q) of per-prompt effects (n, d) → scalar."""
    return per_prompt.norm(dim=1).pow(p).sum().pow(1.0 / q)


def melbo_v1_objective(delta: TransformerCausalMap, theta: Tensor, *, p: float = 2.0, q: float | None = None) -> float:
    """The MELBO objective f(θ) = (Σ_i ‖Δ_i(θ)‖^p)^(1/q) at θ of shape (d,) (no gradient)."""
    p, q = _check_pq(p, q)
    with torch.no_grad():
        return float(_objective(per_prompt_delta(delta, theta), p, q))


def _check_pq(p: object, q: object) -> tuple[float, float]:
    for name, v in (("p", p), ("q", q)):
        if v is None and name == "q":
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    pf = float(p)  # type: ignore[arg-type]
    return pf, pf if q is None else float(q)  # type: ignore[arg-type]


def _project_out(x: Tensor, Q: Tensor) -> Tensor:
    """x − Q Qᵀ x for x (d,) and orthonormal Q (d, r) (r may be 0)."""
    return x - Q @ (Q.T @ x) if Q.shape[1] else x


def melbo_v1(
    delta: TransformerCausalMap,
    n_factors: int = 32,
    *,
    R: float,
    max_iter: int = 300,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.98),
    p: float = 2.0,
    q: float | None = None,
    orthogonal: bool = True,
    tol: float = 0.0,
    random_state: RandomState = None,
    callback: StepCallback | None = None,
) -> FitResult:
    """Learn ``n_factors`` MELBO steering vectors one after another (see module docstring).

    Parameters
    ----------
    delta : TransformerCausalMap
        The causal map of a model (per-prompt effects are needed, so not any CausalMap).
    n_factors : int
        m ≥ 1 vectors (m ≤ d in orthogonal mode).
    R : float
        Norm of every vector at the layer-s input.
    max_iter : int
        τ: AMSGrad steps per vector (300 in the publication).
    lr : float
        Learning rate > 0 (1e-3 in the publication; the step is ~lr per coordinate, so
        scale it with R / sqrt(d) when R is far from the publication's setting).
    betas : (float, float)
        Adam's moment decay rates, each in [0, 1).
    p, q : float
        Exponents of f; q = None means q = p.
    orthogonal : bool
        Keep each vector orthogonal to the earlier ones (gradient and iterate projected).
    tol : float
        ≥ 0. A vector stops early once a step moves θ/R by less than ``tol``; 0 runs every
        step (the published procedure). With tol > 0 a vector that uses all its steps
        triggers a :class:`melbo.fit.ConvergenceWarning`.
    random_state : int, torch.Generator or None
        Initial directions (same seed ⇒ same vectors).
    callback : callable, optional
        ``callback(vector, step, objective)`` after every step (objective before the step).

    Returns
    -------
    FitResult
        method ``"melbo-v1"``; V (d, m) unit columns in learning order, U = normalised
        Δ_R(V), α = ‖Δ_R(V)‖; ``scores[ℓ]`` = f(R v_ℓ) at the final v_ℓ (one value per
        vector); ``history`` empty (use ``callback`` for the training curves); ``n_iter`` = the
        most steps any vector ran; ``movement[ℓ]`` = the last step's ‖Δθ‖/R of vector ℓ;
        ``converged`` = tol > 0 and every vector stopped early.
    """
    if not isinstance(delta, TransformerCausalMap):
        raise TypeError(
            f"melbo_v1 needs per-prompt effects, so delta must be a TransformerCausalMap, got {type(delta).__name__}"
        )
    m = check_positive_int("n_factors", n_factors)
    R = check_R(R)
    max_iter = check_positive_int("max_iter", max_iter)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if (
        not isinstance(betas, tuple)
        or len(betas) != 2
        or not all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
    p, q = _check_pq(p, q)
    tol = check_tol(tol)
    d = delta.d_model
    if orthogonal and m > d:
        raise ValueError(f"n_factors must be <= d_model = {d} with orthogonal=True, got {m}")
    generator = make_generator(random_state)
    Q = torch.zeros(d, 0, dtype=delta.dtype, device=delta.device)  # (d, ℓ) earlier unit vectors
    finals: list[float] = []
    movement: list[float] = []
    steps_run: list[int] = []
    for ell in range(m):
        v0 = randn(d, 1, generator, delta)[:, 0]  # (d,)
        if orthogonal:
            v0 = _project_out(_project_out(v0, Q), Q)
        theta = (R * v0 / v0.norm()).requires_grad_(True)  # (d,)
        opt = torch.optim.Adam([theta], lr=float(lr), betas=(float(betas[0]), float(betas[1])), amsgrad=True)
        move = math.inf
        step = 0
        for step in range(max_iter):
            with torch.enable_grad():
                obj = _objective(per_prompt_delta(delta, theta), p, q)
                (g,) = torch.autograd.grad(-obj, theta)
            with torch.no_grad():
                if orthogonal:
                    g = _project_out(g, Q)
                g = g - torch.dot(g, theta) * theta / R**2
                theta.grad = g
                before = theta.detach().clone()
                opt.step()
                if orthogonal:
                    theta.copy_(_project_out(theta, Q))
                theta.mul_(R / theta.norm())
                move = float((theta - before).norm()) / R
            if callback is not None:
                callback(ell, step, float(obj.detach()))
            if tol > 0 and move < tol:
                break
        steps_run.append(step + 1)
        with torch.no_grad():
            v = theta.detach() / R
            if orthogonal:  # second pass: |⟨v_ℓ, v_ℓ'⟩| at rounding level
                v = normalize_columns(_project_out(_project_out(v, Q), Q)[:, None])[:, 0]
            Q = torch.cat([Q, v[:, None]], dim=1)
            finals.append(melbo_v1_objective(delta, R * v, p=p, q=q))
        movement.append(move)
        logger.info("melbo-v1 vector %d/%d: objective %.6g after %d steps", ell + 1, m, finals[-1], step + 1)

    converged = tol > 0 and all(mv < tol for mv in movement)
    if tol > 0 and not converged:
        slow = [i for i, mv in enumerate(movement) if mv >= tol]
        warnings.warn(
            f"melbo-v1: vectors {slow} used all max_iter={max_iter} steps without a step below tol={tol:g}",
            ConvergenceWarning,
            stacklevel=2,
        )
    V = Q  # (d, m)
    U, alpha = output_directions(delta, V, R)
    return FitResult(
        U=U,
        V=V,
        alpha=alpha,
        R=R,
        method="melbo-v1",
        scores=finals,
        n_iter=max(steps_run),
        converged=converged,
        movement=movement,
    )


@dataclass(eq=False)
class MelboV1(FitEstimator):
    """Estimator of :func:`melbo_v1` (the contract of :mod:`melbo.fit.estimator`); ``fit``
    needs a :class:`~melbo.maps.transformer.TransformerCausalMap`. ``R`` None is calibrated at
    ``lam`` on ``n_cal`` directions.

    Fitted attributes as every estimator, with ``history_`` empty (the vectors are learned
    one after another: no single training curve), ``scores_`` the final f(R v_ℓ) per vector,
    and ``curves_``: per vector, the objective before every step.
    """

    n_factors: int = 32
    _: KW_ONLY
    max_iter: int = 300
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    p: float = 2.0
    q: float | None = None
    orthogonal: bool = True
    tol: float = 0.0
    callback: StepCallback | None = None

    needs_model = True
    _fit_function = staticmethod(melbo_v1)

    def _run(self, delta: CausalMap, R: float, generator: torch.Generator) -> FitResult:
        curves: list[list[float]] = []
        user = self.callback

        def record(vector: int, step: int, objective: float) -> None:
            if step == 0:
                curves.append([])
            curves[vector].append(objective)
            if user is not None:
                user(vector, step, objective)

        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._not_passed}
        res = melbo_v1(delta, R=R, random_state=generator, **{**kwargs, "callback": record})  # type: ignore[arg-type]
        self.curves_ = curves
        return res
