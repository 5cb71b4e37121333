"""Fitting deep causal transcoders (``method.md`` §3): calibration of R, the exponential,
quadratic and linear fits as pure functions over :class:`melbo.protocol.CausalMap`, and
their estimators (the one contract of :mod:`melbo.fit.estimator`).

The baselines (melbo-v1, one-shot, mean-diff, random) live in :mod:`melbo.baselines`;
every method is registered in :mod:`melbo.methods`.
"""

from melbo.fit._common import RandomState
from melbo.fit.alphas import exponential_alphas, quadratic_alphas, solve_alphas
from melbo.fit.calibrate import CalibrationError, CalibrationResult, calibrate_R, nonlinearity_ratio
from melbo.fit.estimator import FitEstimator
from melbo.fit.exceptions import ConvergenceWarning
from melbo.fit.exponential import Callback, ExponentialDCT, OGIStep, exponential_dct, ogi_step
from melbo.fit.init import INITS, Init, initial_factors
from melbo.fit.linear import (
    LinearDCT,
    explicit_jacobian,
    linear_dct,
    linear_full,
    linear_projected,
    projected_directions,
)
from melbo.fit.quadratic import QuadraticDCT, als_step, quadratic_als, quadratic_dct
from melbo.fit.result import FitResult, IterationState
from melbo.fit.two_map import ContrastiveDCT, DifferenceMap, ModelDiffDCT, two_map_dct

__all__ = [
    "INITS",
    "CalibrationError",
    "CalibrationResult",
    "Callback",
    "ContrastiveDCT",
    "DifferenceMap",
    "ConvergenceWarning",
    "ExponentialDCT",
    "FitEstimator",
    "FitResult",
    "Init",
    "IterationState",
    "LinearDCT",
    "ModelDiffDCT",
    "OGIStep",
    "QuadraticDCT",
    "RandomState",
    "als_step",
    "calibrate_R",
    "explicit_jacobian",
    "exponential_alphas",
    "exponential_dct",
    "initial_factors",
    "linear_dct",
    "linear_full",
    "linear_projected",
    "nonlinearity_ratio",
    "ogi_step",
    "projected_directions",
    "quadratic_alphas",
    "quadratic_als",
    "quadratic_dct",
    "solve_alphas",
    "two_map_dct",
]
