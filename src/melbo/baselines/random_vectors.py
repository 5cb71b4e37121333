"""Random steering vectors: the null baseline.

m unit directions drawn from the isotropic Gaussian (seeded, float64 on the CPU, then cast
to Δ's dtype and device), steered at norm R. Their outputs are read off Δ exactly as for
the fitted features:

    v_ℓ ~ N(0, I) / ‖·‖,     U[:, ℓ] = Δ_R(v_ℓ) / ‖Δ_R(v_ℓ)‖,     α_ℓ = ‖Δ_R(v_ℓ)‖

:func:`output_directions` (the last two formulas) is shared by every baseline that learns
only input directions.
"""

from __future__ import annotations

import logging

from torch import Tensor

from melbo.fit._common import (
    RandomState,
    check_delta,
    check_positive_int,
    check_R,
    make_generator,
    normalize_columns,
    randn,
)
from melbo.fit.result import FitResult
from melbo.protocol import CausalMap

__all__ = ["RandomVectors", "output_directions", "random_vectors"]

logger = logging.getLogger(__name__)


def output_directions(delta: CausalMap, V: Tensor, R: float) -> tuple[Tensor, Tensor]:
    """Target-layer directions and scales of input directions steered at norm R.

    Parameters
    ----------
    delta : CausalMap
    V : Tensor, shape (d, m)
        Unit input directions.
    R : float
        Steering norm.

    Returns
    -------
    U : Tensor, shape (d, m)
        ``Δ_R(v_ℓ) / ‖Δ_R(v_ℓ)‖`` (a zero column stays zero).
    alpha : Tensor, shape (m,)
        ``‖Δ_R(v_ℓ)‖``.
    """
    G = delta.value(R * V.to(dtype=delta.dtype, device=delta.device))  # (d, m)
    return normalize_columns(G), G.norm(dim=0)


def random_vectors(delta: CausalMap, n_factors: int, *, R: float, random_state: RandomState = None) -> FitResult:
    """m random unit input directions at norm R, with their outputs through Δ.

    Parameters
    ----------
    delta : CausalMap
        Any implementation (a model's :class:`~melbo.causal_map.TransformerCausalMap` or
        the planted :class:`~melbo.synthetic.SyntheticMap`).
    n_factors : int
        m ≥ 1.
    R : float
        Steering norm > 0.
    random_state : int, torch.Generator or None
        Same seed ⇒ same V (drawn in float64 on the CPU whatever Δ's device).

    Returns
    -------
    FitResult
        method ``"random"``; V (d, m) unit columns, U = normalised Δ_R(V), α = ‖Δ_R(V)‖,
        empty objective, ``n_iter = 0``.
    """
    delta = check_delta(delta)
    m = check_positive_int("n_factors", n_factors)
    R = check_R(R)
    generator = make_generator(random_state)
    V = normalize_columns(randn(delta.d_model, m, generator, delta))  # (d, m)
    U, alpha = output_directions(delta, V, R)
    logger.info("random: %d unit directions at R = %.4g", m, R)
    return FitResult(U=U, V=V, alpha=alpha, R=R, method="random")


class RandomVectors:
    """Estimator wrapper of :func:`random_vectors` (sklearn style).

    ``__init__`` only stores the arguments; :meth:`fit` validates them and, if ``R`` is
    None, calibrates it with :func:`melbo.fit.calibrate_R` at ``lam`` first.

    Attributes (after fit)
    ----------------------
    factors_ : (U, V), each a Tensor of shape (d, m)
    alpha_ : Tensor, shape (m,)
    R_ : float
    result_ : FitResult
    """

    def __init__(
        self, n_factors: int = 512, *, R: float | None = None, lam: float = 0.5, random_state: RandomState = None
    ) -> None:
        self.n_factors = n_factors
        self.R = R
        self.lam = lam
        self.random_state = random_state

    def fit(self, delta: CausalMap) -> RandomVectors:
        """Draw the directions for Δ; returns self."""
        from melbo.fit.calibrate import calibrate_R

        generator = make_generator(self.random_state)
        R = self.R if self.R is not None else calibrate_R(delta, self.lam, seed=generator).R
        res = random_vectors(delta, self.n_factors, R=R, random_state=generator)
        self.result_ = res
        self.factors_ = (res.U, res.V)
        self.alpha_ = res.alpha
        self.R_ = res.R
        return self
