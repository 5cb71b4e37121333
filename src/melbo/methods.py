"""The method registry: every fitting method melbo knows, registered once.

Importing this module is cheap (no torch): the command line reads the names from here for
``--method``'s choices. Each entry names its estimator class by import path; the class is
imported only when asked for (:func:`estimator_class`, :func:`make_estimator`).

Every estimator follows one contract (:mod:`melbo.fit.estimator`): the constructor stores
its arguments, ``fit(delta)`` takes one :class:`~melbo.maps.protocol.CausalMap`, the fitted
attributes are the same (``U_``, ``V_``, ``alpha_``, ``R_``, ``history_``, ``scores_``,
``n_iter_``, ``converged_``, ``result_``) and ``to_features()`` gives
:class:`melbo.features.Features` whose ``method`` is the registry name. The meaning of U, α,
``history`` and ``scores`` per method is the table in :mod:`melbo.fit.result`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MethodSpec",
    "REGISTRY",
    "estimator_class",
    "get_method",
    "make_estimator",
    "method_names",
    "register",
]


@dataclass(frozen=True)
class MethodSpec:
    """One method.

    name : the name used everywhere (``melbo train --method``, ``Features.method``, reports)
    estimator : ``"module:Class"`` of its estimator (imported lazily)
    summary : one line for ``--help`` and reports
    iterative : whether it runs iterations (gets checkpoints and a per-iteration history)
    has_targets : whether it learns target-layer directions U (False: U is None)
    fixed : constructor arguments that make the estimator this method (e.g. the linear
        estimator's ``method="full"``)
    factors_per_dim : the most features it fits per residual-stream dimension (``n_factors ≤
        factors_per_dim × d_model``: 1 where V is orthogonalised, 2 for the ±v pairs of the
        quadratic and linear fits), or None (no bound); the command line checks it against the
        model's ``config.json`` before loading the model
    """

    name: str
    estimator: str
    summary: str
    iterative: bool = False
    has_targets: bool = True
    fixed: Mapping[str, Any] = field(default_factory=dict)
    factors_per_dim: int | None = None

    def make(self, **options: Any) -> Any:
        """The estimator of this method, built from ``options`` — those its constructor
        accepts (the others are ignored, so one set of options serves every method) — and
        :attr:`fixed`."""
        cls = estimator_class(self.name)
        accepted = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in options.items() if k in accepted}, **self.fixed)


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (a name may be registered once)."""
    if spec.name in REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def method_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``; a ValueError naming the valid methods otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"method={name!r}: choose one of {', '.join(REGISTRY)}") from None


def estimator_class(name: str) -> Any:
    """The estimator class of ``name`` (imports its module)."""
    module, _, cls = get_method(name).estimator.partition(":")
    return getattr(importlib.import_module(module), cls)


def make_estimator(name: str, **options: Any) -> Any:
    """The estimator of method ``name`` built from ``options`` (:meth:`MethodSpec.make`)."""
    return get_method(name).make(**options)


for _spec in (
    MethodSpec("exponential", "melbo.fit.exponential:ExponentialDCT", "exponential DCT fitted by OGI", iterative=True,
               factors_per_dim=1),
    MethodSpec("quadratic", "melbo.fit.quadratic:QuadraticDCT", "quadratic DCT fitted by ALS", iterative=True,
               factors_per_dim=2),
    MethodSpec("linear", "melbo.fit.linear:LinearDCT", "linear DCT: SVD of the full Jacobian", fixed={"method": "full"},
               factors_per_dim=2),
    MethodSpec("linear-projected", "melbo.fit.linear:LinearDCT", "linear DCT: SVD of the Jacobian projected on random directions",
               fixed={"method": "projected"}, factors_per_dim=2),
    MethodSpec("contrastive", "melbo.fit.two_map:ContrastiveDCT",
               "contrastive DCT: effect on the prompts, none on --contrast-prompts", iterative=True,
               factors_per_dim=1),
    MethodSpec("model-diff", "melbo.fit.two_map:ModelDiffDCT",
               "model-diff DCT: effect in the model (a fine-tune), none in --base-model", iterative=True,
               factors_per_dim=1),
    MethodSpec("melbo-v1", "melbo.baselines.melbo_v1:MelboV1", "original MELBO: maximise the target-layer change per vector",
               factors_per_dim=1),
    MethodSpec("one-shot", "melbo.baselines.one_shot:OneShotSteering", "one vector optimised on one (prompt, completion) example", has_targets=False),
    MethodSpec("mean-diff", "melbo.baselines.mean_diff:MeanDifference", "difference of mean activations on two prompt sets", has_targets=False),
    MethodSpec("obprop", "melbo.baselines.obprop:ObservablePropagation",
               "gradient of logit(A) - logit(B) w.r.t. the source-layer residual stream (observable propagation)",
               has_targets=False),
    MethodSpec("random", "melbo.baselines.random_vectors:RandomVectors", "random unit vectors (the noise floor)"),
):
    register(_spec)
