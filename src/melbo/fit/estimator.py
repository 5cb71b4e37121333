"""The one estimator contract every method in :mod:`melbo.methods` follows (sklearn style).

* ``__init__`` stores its arguments, nothing else (no validation: :meth:`FitEstimator.fit`
  validates, through the method's pure function).
* ``fit(delta)`` takes one argument, a :class:`~melbo.maps.protocol.CausalMap`. Methods that
  need the model, tokenizer or prompts (melbo-v1, one-shot, mean-diff) require a
  :class:`~melbo.maps.transformer.TransformerCausalMap` and read them through its public
  attributes. ``fit`` resolves ``random_state`` to one CPU generator, calibrates R with
  :func:`melbo.fit.calibrate_R` at ``lam`` (``n_cal`` directions, the same generator) when
  ``R`` is None — so the same seed gives the same R and factors — and runs the method.
* Fitted attributes, the same for every method (their meaning per method is the table in
  :mod:`melbo.fit.result`): ``U_`` (None where the method learns no target directions),
  ``V_``, ``alpha_``, ``R_``, ``history_`` (per iteration), ``scores_`` (per vector),
  ``n_iter_``, ``converged_``, ``result_`` (the :class:`~melbo.fit.result.FitResult`) and
  ``calibration_`` (the :class:`~melbo.fit.calibrate.CalibrationResult`, or None when R was
  given).
* :meth:`FitEstimator.to_features` wraps the fit as :class:`melbo.features.Features`.

A subclass is a dataclass (``eq=False``) whose fields are its constructor arguments (its own
and the shared ``R``, ``lam``, ``n_cal``, ``random_state``), so ``__init__`` is generated and
only stores them. It names its pure function in
``_fit_function``: the default :meth:`FitEstimator._run` calls it with every field except
the calibration settings (``R``, ``lam``, ``n_cal``), plus ``R=`` and
``random_state=generator``. Methods whose function takes other inputs override ``_run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

from melbo.errors import warn_renamed
from melbo.fit._common import RandomState, check_delta, make_generator
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap

if TYPE_CHECKING:
    from melbo.features import Features
    from melbo.fit.calibrate import CalibrationResult

__all__ = ["FitEstimator"]

_E = TypeVar("_E", bound="FitEstimator")


@dataclasses.dataclass(eq=False)
class FitEstimator:
    """Base of melbo's estimators (module docstring). The arguments every method shares,
    keyword-only: ``R`` (None: calibrated), ``lam`` (λ of the calibration), ``n_cal``
    (its number of directions) and ``random_state`` (seeds calibration and fit)."""

    needs_model: ClassVar[bool] = False
    """True: ``fit`` needs a :class:`~melbo.maps.transformer.TransformerCausalMap` (model, prompts)."""

    _: dataclasses.KW_ONLY
    R: float | None = None
    lam: float = 0.5
    n_cal: int = 30
    random_state: RandomState = None

    _fit_function: ClassVar[Callable[..., FitResult] | None] = None
    _not_passed: ClassVar[frozenset[str]] = frozenset({"R", "lam", "n_cal", "random_state"})

    def _run(self, delta: CausalMap, R: float, generator: torch.Generator) -> FitResult:
        """Call ``_fit_function`` with the fields (class docstring)."""
        fn = type(self)._fit_function
        if fn is None:  # pragma: no cover - a subclass without a function overrides _run
            raise NotImplementedError(f"{type(self).__name__} must set _fit_function or override _run")
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._not_passed}  # type: ignore[arg-type]
        return fn(delta, R=R, random_state=generator, **kwargs)

    def fit(self: _E, delta: CausalMap) -> _E:
        """Fit on Δ; returns self."""
        from melbo.fit.calibrate import calibrate_R

        if self.needs_model:
            from melbo.maps.transformer import TransformerCausalMap

            if not isinstance(delta, TransformerCausalMap):
                raise TypeError(
                    f"{type(self).__name__} needs the model and prompts behind Δ, so delta must be a "
                    f"melbo.maps.transformer.TransformerCausalMap, got {type(delta).__name__}"
                )
        delta = check_delta(delta)
        generator = make_generator(self.random_state)
        self.calibration_: CalibrationResult | None = None
        R = self.R
        if R is None:  # before the fit, so a callback can read the R it runs at
            # An int seed seeds calibration and fit apart, so a calibrated fit draws the same
            # factors as a fit given that R (and as `melbo train` always did); a generator is shared.
            cal_gen = make_generator(self.random_state) if isinstance(self.random_state, int) else generator
            self.calibration_ = calibrate_R(delta, self.lam, self.n_cal, cal_gen)
            R = self.calibration_.R
        res = self._run(delta, R, generator)
        self.result_ = res
        self.U_ = res.U
        self.V_ = res.V
        self.alpha_ = res.alpha
        self.R_ = res.R
        self.history_ = list(res.history)
        self.scores_ = list(res.scores)
        self.n_iter_ = res.n_iter
        self.converged_ = res.converged
        self.layers_ = (getattr(delta, "source_layer", None), getattr(delta, "target_layer", None))
        return self

    @property
    def factors_(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(U_, V_); deprecated (a :class:`DeprecationWarning`): read ``U_`` and ``V_``."""
        if not hasattr(self, "result_"):
            raise AttributeError(f"{type(self).__name__} is not fitted yet: call fit(delta) first")
        warn_renamed(f"{type(self).__name__}.factors_", "U_ and V_", stacklevel=3)
        return self.U_, self.V_

    def to_features(self, **metadata: Any) -> Features:
        """The fit as :class:`melbo.features.Features`.

        ``metadata`` are the keyword arguments of :meth:`melbo.features.Features.from_fit`;
        ``source_layer`` and ``target_layer`` default to those of the fitted causal map.
        """
        from melbo.features import Features

        if not hasattr(self, "result_"):
            raise AttributeError(f"{type(self).__name__} is not fitted yet: call fit(delta) first")
        s, t = self.layers_
        metadata.setdefault("source_layer", s)
        metadata.setdefault("target_layer", t)
        if metadata["source_layer"] is None or metadata["target_layer"] is None:
            raise ValueError("this causal map has no layers: pass source_layer=... and target_layer=...")
        return Features.from_fit(self.result_, **metadata)
