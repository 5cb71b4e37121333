"""Fitting deep causal transcoders (``method.md`` §3): calibration of R, the exponential,
quadratic and linear fits as pure functions over :class:`melbo.maps.protocol.CausalMap`, and
their estimators (the one contract of :mod:`melbo.fit.estimator`).

The baselines (melbo-v1, one-shot, mean-diff, random) live in :mod:`melbo.baselines`;
every method is registered in :mod:`melbo.methods`. The OGI step every fit defaults to, and
the published one, are :mod:`melbo.fit.step`.

Names are imported on first use (:mod:`melbo._lazy`), so reading :mod:`melbo.fit.step` (the
command line's defaults) imports no torch.
"""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "RandomState": "melbo.fit._common:RandomState",
    "exponential_alphas": "melbo.fit.alphas:exponential_alphas",
    "quadratic_alphas": "melbo.fit.alphas:quadratic_alphas",
    "solve_alphas": "melbo.fit.alphas:solve_alphas",
    "CalibrationError": "melbo.fit.calibrate:CalibrationError",
    "CalibrationResult": "melbo.fit.calibrate:CalibrationResult",
    "calibrate_R": "melbo.fit.calibrate:calibrate_R",
    "nonlinearity_ratio": "melbo.fit.calibrate:nonlinearity_ratio",
    "FitEstimator": "melbo.fit.estimator:FitEstimator",
    "ConvergenceWarning": "melbo.fit.exceptions:ConvergenceWarning",
    "Callback": "melbo.fit.exponential:Callback",
    "ExponentialDCT": "melbo.fit.exponential:ExponentialDCT",
    "OGIStep": "melbo.fit.exponential:OGIStep",
    "exponential_dct": "melbo.fit.exponential:exponential_dct",
    "ogi_step": "melbo.fit.exponential:ogi_step",
    "INITS": "melbo.fit.init:INITS",
    "Init": "melbo.fit.init:Init",
    "initial_factors": "melbo.fit.init:initial_factors",
    "LinearDCT": "melbo.fit.linear:LinearDCT",
    "explicit_jacobian": "melbo.fit.linear:explicit_jacobian",
    "linear_dct": "melbo.fit.linear:linear_dct",
    "linear_full": "melbo.fit.linear:linear_full",
    "linear_projected": "melbo.fit.linear:linear_projected",
    "projected_directions": "melbo.fit.linear:projected_directions",
    "QuadraticDCT": "melbo.fit.quadratic:QuadraticDCT",
    "als_step": "melbo.fit.quadratic:als_step",
    "quadratic_als": "melbo.fit.quadratic:quadratic_als",
    "quadratic_dct": "melbo.fit.quadratic:quadratic_dct",
    "FitResult": "melbo.fit.result:FitResult",
    "IterationState": "melbo.fit.result:IterationState",
    "ContrastiveDCT": "melbo.fit.two_map:ContrastiveDCT",
    "DifferenceMap": "melbo.fit.two_map:DifferenceMap",
    "ModelDiffDCT": "melbo.fit.two_map:ModelDiffDCT",
    "two_map_dct": "melbo.fit.two_map:two_map_dct",
    "DEFAULT_STEP": "melbo.fit.step:DEFAULT_STEP",
    "FitStep": "melbo.fit.step:FitStep",
    "STEPS": "melbo.fit.step:STEPS",
    "step_options": "melbo.fit.step:step_options",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs (explicit re-exports)
    from melbo.fit._common import RandomState as RandomState
    from melbo.fit.alphas import exponential_alphas as exponential_alphas
    from melbo.fit.alphas import quadratic_alphas as quadratic_alphas
    from melbo.fit.alphas import solve_alphas as solve_alphas
    from melbo.fit.calibrate import CalibrationError as CalibrationError
    from melbo.fit.calibrate import CalibrationResult as CalibrationResult
    from melbo.fit.calibrate import calibrate_R as calibrate_R
    from melbo.fit.calibrate import nonlinearity_ratio as nonlinearity_ratio
    from melbo.fit.estimator import FitEstimator as FitEstimator
    from melbo.fit.exceptions import ConvergenceWarning as ConvergenceWarning
    from melbo.fit.exponential import Callback as Callback
    from melbo.fit.exponential import ExponentialDCT as ExponentialDCT
    from melbo.fit.exponential import OGIStep as OGIStep
    from melbo.fit.exponential import exponential_dct as exponential_dct
    from melbo.fit.exponential import ogi_step as ogi_step
    from melbo.fit.init import INITS as INITS
    from melbo.fit.init import Init as Init
    from melbo.fit.init import initial_factors as initial_factors
    from melbo.fit.linear import LinearDCT as LinearDCT
    from melbo.fit.linear import explicit_jacobian as explicit_jacobian
    from melbo.fit.linear import linear_dct as linear_dct
    from melbo.fit.linear import linear_full as linear_full
    from melbo.fit.linear import linear_projected as linear_projected
    from melbo.fit.linear import projected_directions as projected_directions
    from melbo.fit.quadratic import QuadraticDCT as QuadraticDCT
    from melbo.fit.quadratic import als_step as als_step
    from melbo.fit.quadratic import quadratic_als as quadratic_als
    from melbo.fit.quadratic import quadratic_dct as quadratic_dct
    from melbo.fit.result import FitResult as FitResult
    from melbo.fit.result import IterationState as IterationState
    from melbo.fit.step import DEFAULT_STEP as DEFAULT_STEP
    from melbo.fit.step import STEPS as STEPS
    from melbo.fit.step import FitStep as FitStep
    from melbo.fit.step import step_options as step_options
    from melbo.fit.two_map import ContrastiveDCT as ContrastiveDCT
    from melbo.fit.two_map import DifferenceMap as DifferenceMap
    from melbo.fit.two_map import ModelDiffDCT as ModelDiffDCT
    from melbo.fit.two_map import two_map_dct as two_map_dct

del TYPE_CHECKING, lazy_exports
