"""A toy method in one module, as a plugin would add one: the estimator and its one registration.

``toy-axes`` steers along the standard basis vectors e_offset … e_(offset+m−1) of the source
layer, so what it must fit is known without running it (the ground truth of
tests/test_method_plugin.py). It follows the estimator contract of :mod:`melbo.fit.estimator`
and reuses the random-vectors baseline's read-out of U and α (:func:`output_directions`).
Importing this module registers nothing: the test registers :data:`SPEC` for as long as it needs
it (:func:`melbo.methods.registered`).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch

from melbo.baselines.random_vectors import output_directions
from melbo.fit.estimator import FitEstimator
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap
from melbo.methods import MethodOption, MethodSpec

NAME = "toy-axes"


def check_offset(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} {value!r}: must be an integer ≥ 0")
    return value


def axis_vectors(delta: CausalMap, n_factors: int, *, R: float, offset: int = 0, random_state: Any = None) -> FitResult:
    """V = [e_offset, …, e_(offset+m−1)], with their outputs through Δ at norm R."""
    d = delta.d_model
    if offset + n_factors > d:
        raise ValueError(f"offset {offset} + n_factors {n_factors} exceeds the width {d}")
    V = torch.zeros(d, n_factors, dtype=delta.dtype, device=delta.device)
    V[torch.arange(offset, offset + n_factors), torch.arange(n_factors)] = 1
    U, alpha = output_directions(delta, V, R)
    return FitResult(U=U, V=V, alpha=alpha, R=R, method=NAME)


@dataclass(eq=False)
class AxisVectors(FitEstimator):
    """Estimator of :func:`axis_vectors`."""

    n_factors: int = 4
    offset: int = 0
    _: KW_ONLY

    _fit_function = staticmethod(axis_vectors)


SPEC = MethodSpec(
    NAME, f"{__name__}:AxisVectors", "the first standard basis vectors (a test's toy method)", factors_per_dim=1,
    options=(MethodOption("offset", "index of the first basis vector", default=0, type=int, check=check_offset,
                          flag="--toy-offset"),),
    extra=lambda o: {"toy_offset": o["offset"]},
)
