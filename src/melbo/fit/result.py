"""The validated result every fitting algorithm returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["FitResult", "IterationState"]


@dataclass(frozen=True)
class FitResult:
    """A fitted transcoder Δ̂(θ) = Σ_ℓ α_ℓ σ(⟨v_ℓ, θ⟩) u_ℓ approximating Δ_R(θ) = Δ(Rθ).

    Attributes
    ----------
    U : Tensor, shape (d, m)
        Unit output (target-layer) directions, one per column.
    V : Tensor, shape (d, m)
        Unit input (source-layer) directions, one per column; steer with ``R * V[:, ℓ]``.
    alpha : Tensor, shape (m,)
        Scales α_ℓ ≥ 0 (see :mod:`melbo.fit.alphas` for how each method solves them).
    R : float
        Steering norm the factors were trained at.
    method : str
        ``"linear-full"``, ``"linear-projected"``, ``"quadratic"`` or ``"exponential"``.
    objective : list of float
        Training curve, one value per iteration (empty for one-shot methods). For the
        exponential method Σ_ℓ ⟨u_ℓ, Δ_R(v_ℓ)⟩; for the quadratic Σ_ℓ T⁽²⁾(u_ℓ, v_ℓ, v_ℓ).
    n_iter : int
        Iterations run (0 for one-shot methods).
    converged : bool
        Whether the factors stopped moving (movement < tol) before the iteration limit;
        True for one-shot methods.
    movement : list of float
        Per iteration, max over factors of the distance moved by u_ℓ or v_ℓ.
    """

    U: Tensor
    V: Tensor
    alpha: Tensor
    R: float
    method: str
    objective: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = True
    movement: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.U.ndim != 2 or self.V.ndim != 2 or self.U.shape != self.V.shape:
            raise ValueError(
                f"U and V must both have shape (d, m), got {tuple(self.U.shape)} and {tuple(self.V.shape)}"
            )
        if self.alpha.shape != (self.U.shape[1],):
            raise ValueError(f"alpha must have shape ({self.U.shape[1]},), got {tuple(self.alpha.shape)}")
        if not math.isfinite(self.R) or self.R <= 0:
            raise ValueError(f"R must be finite and > 0, got {self.R}")
        if self.n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {self.n_iter}")

    @property
    def n_factors(self) -> int:
        """Number m of features."""
        return int(self.U.shape[1])

    @property
    def d_model(self) -> int:
        """Dimension d."""
        return int(self.U.shape[0])


@dataclass(frozen=True)
class IterationState:
    """What an iterative fit passes to ``callback(iteration, state)`` after each iteration.

    Attributes
    ----------
    U, V : Tensor, shape (d, m)
        Factors after this iteration's update (V is *not* orthogonalised yet). Treat as
        read-only; clone them to keep a checkpoint.
    objective : float
        Objective at the factors this iteration started from.
    movement : float
        max_ℓ max(‖u_ℓ − u_ℓ^prev‖, ‖v_ℓ − v_ℓ^prev‖).
    """

    U: Tensor
    V: Tensor
    objective: float
    movement: float
