"""The validated result every fitting method returns, and what its fields mean per method.

A fitted transcoder Δ̂(θ) = Σ_ℓ α_ℓ σ(⟨v_ℓ, θ⟩) u_ℓ approximates Δ_R(θ) = Δ(Rθ). Every
method (see :mod:`melbo.methods`) returns unit input directions V (d, m), steered as
``R * V[:, ℓ]``; the other fields depend on the method, defined here once:

=================  ==========================  ==========================================  =============================
method             U (target directions)       α                                           per-vector ``scores``
=================  ==========================  ==========================================  =============================
exponential        fitted by OGI               K⁻¹b, K α = b (:mod:`melbo.fit.alphas`)     —
quadratic          fitted by ALS               K⁻¹(½R² b) (:mod:`melbo.fit.alphas`)        —
linear             left singular vectors of J  R · s_i (singular value), both signs        —
linear-projected   normalise(Δ_R(v_ℓ))         linear normal equations, per sign half      —
contrastive        fitted by two-map OGI       K⁻¹b on Δ_A (norm penalty) or on Δ_A − μΔ_B ‖Δ_A(R v_ℓ)‖ − μ‖Δ_B(R v_ℓ)‖
model-diff         fitted by two-map OGI       the same (:mod:`melbo.fit.two_map`)         ‖Δ_A(R v_ℓ)‖ − μ‖Δ_B(R v_ℓ)‖
melbo-v1           normalise(Δ_R(v_ℓ))         ‖Δ_R(v_ℓ)‖                                  f(R v_ℓ), the MELBO objective
random             normalise(Δ_R(v_ℓ))         ‖Δ_R(v_ℓ)‖                                  —
one-shot           None (learns no target)     ‖Δ_R(v)‖, R = ‖v‖                           final one-shot objective
mean-diff          None (learns no target)     ‖Δ_R(v)‖                                    —
obprop             None (learns no target)     ‖Δ_R(v)‖                                    ‖y‖, the observable's gradient norm
=================  ==========================  ==========================================  =============================

``history`` is always one value per *iteration* of the fit (the training curve; empty for
methods without iterations, and for melbo-v1, whose per-vector curves are
the fitted ``curves_`` of :class:`melbo.baselines.MelboV1`): Σ_ℓ ⟨u_ℓ, Δ_R(v_ℓ)⟩ for the exponential,
Σ_ℓ T⁽²⁾(u_ℓ, v_ℓ, v_ℓ) for the quadratic, the two-map objective for contrastive and model-diff, the maximised objective before each Adam step
for one-shot. ``scores`` is one value per *vector* (empty where the method has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from melbo.errors import check_R

__all__ = ["FitResult", "IterationState"]


@dataclass(frozen=True)
class FitResult:
    """A fitted transcoder (see the module docstring for what each field means per method).

    Attributes
    ----------
    U : Tensor of shape (d, m), or None
        Unit output (target-layer) directions, one per column; None for methods that learn
        no target directions (one-shot, mean-diff).
    V : Tensor, shape (d, m)
        Unit input (source-layer) directions, one per column; steer with ``R * V[:, ℓ]``.
    alpha : Tensor, shape (m,)
        Scales α_ℓ ≥ 0 (module docstring).
    R : float
        Steering norm the factors were trained at.
    method : str
        The registry name of the method (:func:`melbo.methods.method_names`).
    history : list of float
        One value per iteration (module docstring); empty for non-iterative methods.
    scores : list of float
        One value per vector where the method has one (module docstring); else empty.
    n_iter : int
        Iterations run (0 for non-iterative methods; melbo-v1: the most steps any vector ran).
    converged : bool
        Whether the factors stopped moving (movement < tol) before the iteration limit;
        True for non-iterative methods.
    movement : list of float
        Per iteration, max over factors of the distance moved by u_ℓ or v_ℓ (melbo-v1: per
        vector, its last step).
    """

    U: Tensor | None
    V: Tensor
    alpha: Tensor
    R: float
    method: str
    history: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = True
    movement: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.V.ndim != 2 or (self.U is not None and self.U.shape != self.V.shape):
            u = None if self.U is None else tuple(self.U.shape)
            raise ValueError(f"V must have shape (d, m) and U the same shape or be None, got U {u}, V {tuple(self.V.shape)}")
        if self.alpha.shape != (self.V.shape[1],):
            raise ValueError(f"alpha must have shape ({self.V.shape[1]},), got {tuple(self.alpha.shape)}")
        check_R(self.R)
        if self.n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {self.n_iter}")
        if self.scores and len(self.scores) != self.V.shape[1]:
            raise ValueError(f"scores must hold one value per vector ({self.V.shape[1]}), got {len(self.scores)}")

    @property
    def n_factors(self) -> int:
        """Number m of features."""
        return int(self.V.shape[1])

    @property
    def d_model(self) -> int:
        """Dimension d."""
        return int(self.V.shape[0])


@dataclass(frozen=True)
class IterationState:
    """What an iterative fit passes to ``callback(iteration, state)`` after each iteration.

    Attributes
    ----------
    U, V : Tensor, shape (d, m)
        Factors after this iteration's update (V is *not* orthogonalised yet). Treat as
        read-only; clone them to keep a checkpoint.
    objective : float
        Objective at the factors this iteration started from (the iteration's ``history`` entry).
    movement : float
        max_ℓ max(‖u_ℓ − u_ℓ^prev‖, ‖v_ℓ − v_ℓ^prev‖).
    """

    U: Tensor
    V: Tensor
    objective: float
    movement: float
