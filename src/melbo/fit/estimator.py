"""The shared ``fit`` of melbo's sklearn-style estimators (:class:`~melbo.fit.ExponentialDCT`,
:class:`~melbo.fit.quadratic.QuadraticDCT`, :class:`~melbo.fit.linear.LinearDCT`).

A subclass stores its arguments in ``__init__`` (no validation there) and implements
:meth:`FitEstimator._run`, the call of its fit function; :meth:`FitEstimator.fit` resolves
``random_state`` to one generator, calibrates R at ``lam`` when ``R`` is None (with that
generator, so the same seed gives the same R and factors) and stores the fitted attributes.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from melbo.fit._common import RandomState, make_generator
from melbo.fit.result import FitResult
from melbo.protocol import CausalMap

__all__ = ["FitEstimator"]

_E = TypeVar("_E", bound="FitEstimator")


class FitEstimator:
    """Base of the estimators. Attributes after :meth:`fit`: ``factors_`` (U, V),
    ``alpha_``, ``R_``, ``objective_``, ``n_iter_``, ``converged_`` and ``result_``."""

    R: float | None
    lam: float
    random_state: RandomState

    def _run(self, delta: CausalMap, R: float, generator: torch.Generator) -> FitResult:
        raise NotImplementedError

    def fit(self: _E, delta: CausalMap) -> _E:
        """Fit on Δ; returns self."""
        from melbo.fit.calibrate import calibrate_R

        generator = make_generator(self.random_state)
        R = self.R if self.R is not None else calibrate_R(delta, self.lam, seed=generator).R
        res = self._run(delta, R, generator)
        self.result_ = res
        self.factors_ = (res.U, res.V)
        self.alpha_ = res.alpha
        self.R_ = res.R
        self.objective_ = list(res.objective)
        self.n_iter_ = res.n_iter
        self.converged_ = res.converged
        return self

    def __repr__(self) -> str:
        args: dict[str, Any] = {k: v for k, v in vars(self).items() if not k.endswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
