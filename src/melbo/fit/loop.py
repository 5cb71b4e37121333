"""The iteration loop every iterative fit shares (OGI, ALS, the two-map step): record the
objective and the factor movement, call the user's callback, stop on ``tol`` or
``max_iter``, and warn when the iterations ran out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from melbo.fit.exceptions import ConvergenceWarning
from melbo.fit.result import FitResult, IterationState

__all__ = ["Loop", "Step", "iterate"]

logger = logging.getLogger(__name__)

#: ``step(iteration, U, V) -> (U', V', objective, movement)``: one iteration from the factors
#: (U, V); ``objective`` at the factors it started from, ``movement`` max over ℓ of how far
#: u_ℓ and v_ℓ moved.
Step = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor, float, float]]


@dataclass
class Loop:
    """What :func:`iterate` ends with: the last factors, the objective and the movement per
    iteration, and why it stopped."""

    U: Tensor
    V: Tensor
    objective: list[float]
    movement: list[float]
    converged: bool
    stopped: bool

    @property
    def n_iter(self) -> int:
        return len(self.objective)

    def result(self, *, alpha: Tensor, R: float, method: str, scores: list[float] | None = None) -> FitResult:
        """The :class:`FitResult` of these factors with their ``alpha``."""
        return FitResult(U=self.U, V=self.V, alpha=alpha, R=R, method=method, history=self.objective,
                         scores=scores if scores is not None else [], n_iter=self.n_iter, converged=self.converged,
                         movement=self.movement)


def iterate(
    step: Step,
    U: Tensor,
    V: Tensor,
    *,
    max_iter: int,
    tol: float,
    callback: Callable[[int, IterationState], bool | None] | None,
    name: str,
    warn: bool = True,
    stacklevel: int = 3,
) -> Loop:
    """Run ``step`` from (U, V) until no factor moves more than ``tol``, ``callback`` returns
    True, or ``max_iter`` iterations; in the last case a :class:`ConvergenceWarning` naming
    ``name`` (``stacklevel`` counts from this function: 3 points at the caller of the fit
    that called it)."""
    objective: list[float] = []
    movement: list[float] = []
    converged = stopped = False
    for it in range(max_iter):
        U, V, obj, move = step(it, U, V)
        objective.append(obj)
        movement.append(move)
        logger.debug("%s iteration %d: objective %.6g, movement %.3g", name, it, obj, move)
        if callback is not None and callback(it, IterationState(U, V, obj, move)):
            stopped = True
            break
        if move < tol:
            converged = True
            break
    if warn and not converged and not stopped:
        rise = ""
        if len(objective) > 1 and objective[-2] != 0:
            rise = f"; the objective changed {100 * (objective[-1] - objective[-2]) / abs(objective[-2]):+.1f} % in the last one"
        warnings.warn(
            f"{name} did not converge in max_iter={max_iter} iterations "
            f"(last factor movement {movement[-1]:.3g} > tol={tol:g}{rise}); the factors are usable as they are, "
            "a larger max_iter fits longer",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
    return Loop(U, V, objective, movement, converged, stopped)
