"""The protocol every fitting algorithm talks to: the causal map Δ and its batched primitives.

Notation follows ``method.md``: ``v`` is an input (source-layer) direction, ``u`` an output
(target-layer) direction; matrices hold one factor per *column*.

    Δ(θ) = mean_i mean_{p∈P} [ F_{s→t}(x_i + θ)[p] − y_i[p] ]        ∈ R^d

Every primitive takes a batch of ``m`` factors as a ``(d, m)`` matrix and returns a
``(d, m)`` matrix whose column ℓ depends only on column ℓ of the inputs. Scaling by the
steering norm ``R`` is the caller's job: ``Δ_R(V) = delta.value(R * V)``.

The derivative tensors are taken at 0 with the convention of a Taylor series,
``Δ(θ) = J θ + ½ T⁽²⁾(·, θ, θ) + …``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class CausalMap(Protocol):
    """Batched access to Δ. Implemented by :class:`melbo.maps.transformer.TransformerCausalMap`
    (a real model) and :class:`melbo.maps.synthetic.SyntheticMap` (planted factors)."""

    @property
    def d_model(self) -> int:
        """Dimension d of the residual stream."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """dtype in which the primitives return their results (fp32 or fp64)."""
        ...

    @property
    def device(self) -> torch.device:
        """Device on which the primitives return their results."""
        ...

    def value(self, theta: Tensor) -> Tensor:
        """Δ at m points. theta: (d, m) → (d, m), column ℓ = Δ(theta[:, ℓ])."""
        ...

    def vjp(self, theta: Tensor, U: Tensor) -> Tensor:
        """Vector-Jacobian products. (d, m), (d, m) → (d, m), column ℓ = J(θ_ℓ)ᵀ u_ℓ."""
        ...

    def value_and_vjp(self, theta: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        """Both of the above from one forward and one backward pass."""
        ...

    def jvp0(self, V: Tensor) -> Tensor:
        """Jacobian-vector products at 0. (d, m) → (d, m), column ℓ = J(0) v_ℓ."""
        ...

    def hvv0(self, V: Tensor) -> Tensor:
        """T⁽²⁾(·, v, v) at 0. (d, m) → (d, m), column ℓ = d²/dε² Δ(ε v_ℓ) at ε = 0."""
        ...

    def uhv0(self, U: Tensor, V: Tensor) -> Tensor:
        """T⁽²⁾(u, v, ·) at 0. (d, m), (d, m) → (d, m), column ℓ = ∇_θ ⟨u_ℓ, J(θ) v_ℓ⟩ at 0."""
        ...
