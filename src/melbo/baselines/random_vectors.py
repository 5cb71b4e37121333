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
from dataclasses import KW_ONLY, dataclass

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
from melbo.fit.estimator import FitEstimator
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap

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
        Any implementation (a model's :class:`~melbo.maps.transformer.TransformerCausalMap` or
        the planted :class:`~melbo.maps.synthetic.SyntheticMap`).
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


@dataclass(eq=False)
class RandomVectors(FitEstimator):
    """Estimator of :func:`random_vectors` (the contract of :mod:`melbo.fit.estimator`):
    ``R`` None is calibrated at ``lam`` on ``n_cal`` directions, with the same generator
    the directions are drawn from. Not iterative: ``history_``, ``scores_`` empty.
    """

    n_factors: int = 512
    _: KW_ONLY

    _fit_function = staticmethod(random_vectors)
