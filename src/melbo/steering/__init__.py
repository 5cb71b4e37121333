"""Changing what a model computes, without changing the model: steering and directional
ablation as context managers around removable hooks (:mod:`melbo.steering.interventions`; the hook
plumbing itself is :mod:`melbo.models.hooks`)."""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "STEER_REFUSE_RATIO": "melbo.steering.interventions:STEER_REFUSE_RATIO",
    "STEER_WARN_RATIO": "melbo.steering.interventions:STEER_WARN_RATIO",
    "ablate": "melbo.steering.interventions:ablate",
    "check_steering_norm": "melbo.steering.interventions:check_steering_norm",
    "check_vectors": "melbo.steering.interventions:check_vectors",
    "orthonormal_basis": "melbo.steering.interventions:orthonormal_basis",
    "residual_norm": "melbo.steering.interventions:residual_norm",
    "row_steering": "melbo.steering.interventions:row_steering",
    "steer": "melbo.steering.interventions:steer",
    "steer_features": "melbo.steering.interventions:steer_features",
    "steering": "melbo.steering.interventions:steering",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from melbo.steering.interventions import STEER_REFUSE_RATIO as STEER_REFUSE_RATIO
    from melbo.steering.interventions import STEER_WARN_RATIO as STEER_WARN_RATIO
    from melbo.steering.interventions import ablate as ablate
    from melbo.steering.interventions import check_steering_norm as check_steering_norm
    from melbo.steering.interventions import check_vectors as check_vectors
    from melbo.steering.interventions import orthonormal_basis as orthonormal_basis
    from melbo.steering.interventions import residual_norm as residual_norm
    from melbo.steering.interventions import row_steering as row_steering
    from melbo.steering.interventions import steer as steer
    from melbo.steering.interventions import steer_features as steer_features
    from melbo.steering.interventions import steering as steering

del TYPE_CHECKING, lazy_exports
