"""Initial factors for the iterative fits (quadratic ALS and exponential OGI).

* ``"projected"`` — the first min(m, d_proj) columns of V are the top right singular
  vectors of W J(0) (:func:`melbo.fit.linear.projected_directions`, the fast linear
  initialiser 1′); if m > d_proj the remaining columns are filled as in ``"backward"``.
  U = normalise(Δ_R(V)).
* ``"backward"`` — U Gaussian, V = normalise(J(0)ᵀ U) (one VJP at 0; the published
  code's ``rand_backward``): random directions weighted by how much Δ responds to them.
* ``"random"`` — U and V Gaussian.
* a tuple ``(U, V)`` of tensors, shape (d, m) each — used as given (normalised).

All draws come from one CPU generator (float64, then cast and moved), so the same seed
gives the same factors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from melbo.fit._common import check_choice, check_factors, normalize_columns, randn
from melbo.fit.linear import projected_directions
from melbo.maps.protocol import CausalMap

__all__ = ["INITS", "Init", "initial_factors"]

INITS = ("projected", "backward", "random")

Init = str | tuple[Tensor, Tensor]
"""An init name from :data:`INITS`, or explicit factors (U, V)."""


def initial_factors(
    delta: CausalMap,
    m: int,
    init: Init,
    *,
    R: float,
    generator: torch.Generator,
    d_proj: int = 32,
) -> tuple[Tensor, Tensor]:
    """Initial (U, V), each of shape (d, m) with unit columns (see module docstring)."""
    if isinstance(init, tuple):
        if len(init) != 2:
            raise ValueError(f"init factors must be a pair (U, V), got {len(init)} items")
        return check_factors(delta, init[0], init[1], m)
    init = check_choice("init", init, INITS)
    d = delta.d_model
    if init == "random":
        V = normalize_columns(randn(d, m, generator, delta))
        U = normalize_columns(randn(d, m, generator, delta))
        return U, V
    if init == "backward":
        G = randn(d, m, generator, delta)
        V = normalize_columns(delta.vjp(torch.zeros_like(G), G))
        return normalize_columns(G), V
    k = min(m, d_proj, d)
    Vk, _ = projected_directions(delta, k, d_proj=d_proj, generator=generator)  # (d, k)
    if m > k:
        G = randn(d, m - k, generator, delta)
        V = torch.cat([Vk, normalize_columns(delta.vjp(torch.zeros_like(G), G))], dim=1)
    else:
        V = Vk
    U = normalize_columns(delta.value(R * V))
    return U, V
