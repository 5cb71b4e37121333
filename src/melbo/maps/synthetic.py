"""A causal map with planted factors, for tests and the recovery benchmark.

    Δ(θ) = W_out · (exp(W_in θ) − 1)

``W_in`` has one planted unit input direction ``v*_k`` per *row* (shape ``(K, d)``) and
``W_out`` one planted output direction ``α*_k u*_k`` per *column* (shape ``(d, K)``), so
Δ is exactly an exponential transcoder (``method.md`` §2) with ``K`` features and R = 1.
All primitives of :class:`melbo.maps.protocol.CausalMap` are analytic:

    J(θ)           = W_out diag(exp(W_in θ)) W_in
    T⁽²⁾(·, v, v)  = W_out ((W_in v)²)
    T⁽²⁾(u, v, ·)  = W_inᵀ ((W_outᵀ u) ⊙ (W_in v))

Nonlinear regime. Along a planted direction, ``Δ(R v*_k) ≈ α*_k (e^R − 1) u*_k`` whose
non-linear part relative to the linear one is ``(e^R − 1 − R)/R`` (0.72 at R = 1), for
*every* choice of α*: α* only scales the output, so it sets the relative importance of
the features, not how non-linear Δ is. Along a random direction ``⟨v*_k, θ⟩ ≈ ‖θ‖/√d``,
so Δ is almost linear there unless R ~ √d (which is what :func:`melbo.fit.calibrate_R`
finds for this map).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["PlantedMap", "SyntheticMap"]


def _check_batch(name: str, x: Tensor, d: int) -> None:
    if x.ndim != 2 or x.shape[0] != d:
        raise ValueError(f"{name} must have shape (d_model={d}, m), got {tuple(x.shape)}")


class PlantedMap(NamedTuple):
    """What :meth:`SyntheticMap.planted` returns.

    Attributes
    ----------
    delta : SyntheticMap
        The planted map.
    V : Tensor, shape (d, K)
        Planted unit input directions ``v*_k`` (columns).
    U : Tensor, shape (d, K)
        Planted unit output directions ``u*_k`` (columns); ``W_out = U diag(α*)``.
    """

    delta: SyntheticMap
    V: Tensor
    U: Tensor


class SyntheticMap:
    """Δ(θ) = W_out (exp(W_in θ) − 1), implementing :class:`melbo.maps.protocol.CausalMap`.

    Parameters
    ----------
    W_in : Tensor, shape (K, d)
        Input weights; row k is the (not necessarily unit) input direction of feature k.
    W_out : Tensor, shape (d, K)
        Output weights; column k is α*_k u*_k.

    The dtype and device of the map are those of ``W_in``; ``W_out`` must match. Inputs
    to the primitives are converted to that dtype and device.
    """

    def __init__(self, W_in: Tensor, W_out: Tensor) -> None:
        if W_in.ndim != 2 or W_out.ndim != 2:
            raise ValueError(
                f"W_in and W_out must be 2-D, got shapes {tuple(W_in.shape)} and {tuple(W_out.shape)}"
            )
        K, d = W_in.shape
        if W_out.shape != (d, K):
            raise ValueError(
                f"W_out must have shape (d, K) = ({d}, {K}) to match W_in {tuple(W_in.shape)}, "
                f"got {tuple(W_out.shape)}"
            )
        if not W_in.is_floating_point():
            raise ValueError(f"W_in must be floating point, got {W_in.dtype}")
        if W_out.dtype != W_in.dtype or W_out.device != W_in.device:
            raise ValueError(
                f"W_in and W_out must share dtype and device, got {W_in.dtype}/{W_in.device} "
                f"and {W_out.dtype}/{W_out.device}"
            )
        self.W_in = W_in.detach()
        self.W_out = W_out.detach()

    # ------------------------------------------------------------------ construction
    @classmethod
    def planted(
        cls,
        d: int,
        n_planted: int,
        *,
        alpha: float | Sequence[float] | Tensor = 1.0,
        orthogonal: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> PlantedMap:
        """Draw ``n_planted`` random unit input and output directions.

        Parameters
        ----------
        d : int
            Dimension of θ and of Δ.
        n_planted : int
            Number K of planted features, 1 ≤ K (≤ d when ``orthogonal``).
        alpha : float or sequence or Tensor of shape (K,)
            Output scales α*_k ≥ 0 (see the module docstring: they set relative importance,
            not the non-linearity, which is fixed by ‖v*_k‖ = 1 and R).
        orthogonal : bool
            If True, the v*_k are exactly orthonormal, and so are the u*_k (QR of a Gaussian
            matrix); otherwise independent uniform unit vectors (|cos| ≈ 1/√d).
        seed, generator
            Randomness: a CPU ``torch.Generator`` (used as is) or a seed for a fresh one;
            at most one of the two. Draws are made in float64 on the CPU, then cast and
            moved, so the same seed gives the same directions in every dtype and device.
        dtype, device
            Of the map and of the returned factors.

        Returns
        -------
        PlantedMap
            ``(delta, V, U)`` with ``V, U`` of shape (d, K).
        """
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        if n_planted < 1:
            raise ValueError(f"n_planted must be >= 1, got {n_planted}")
        if orthogonal and n_planted > d:
            raise ValueError(f"orthogonal=True needs n_planted <= d, got n_planted={n_planted}, d={d}")
        if seed is not None and generator is not None:
            raise ValueError("give at most one of seed and generator")
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        a = torch.as_tensor(alpha, dtype=torch.float64).flatten()
        if a.numel() == 1:
            a = a.expand(n_planted).clone()
        if a.numel() != n_planted:
            raise ValueError(f"alpha must be a scalar or have {n_planted} entries, got {a.numel()}")
        if not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
            raise ValueError(f"alpha must be finite and >= 0, got {a.tolist()}")
        Vs = torch.randn(d, n_planted, generator=generator, dtype=torch.float64)
        Us = torch.randn(d, n_planted, generator=generator, dtype=torch.float64)
        if orthogonal:
            Vs = torch.linalg.qr(Vs).Q
            Us = torch.linalg.qr(Us).Q
        Vs = Vs / Vs.norm(dim=0, keepdim=True)
        Us = Us / Us.norm(dim=0, keepdim=True)
        W_in = Vs.T.contiguous()  # (K, d)
        W_out = Us * a  # (d, K)
        kw: dict[str, object] = {"dtype": dtype, "device": device}
        delta = cls(W_in.to(**kw), W_out.to(**kw))  # type: ignore[arg-type]
        return PlantedMap(delta, Vs.to(**kw), Us.to(**kw))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ properties
    @property
    def d_model(self) -> int:
        """Dimension d of θ and Δ."""
        return int(self.W_in.shape[1])

    @property
    def n_planted(self) -> int:
        """Number K of planted features."""
        return int(self.W_in.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights and of every result."""
        return self.W_in.dtype

    @property
    def device(self) -> torch.device:
        """Device of the weights and of every result."""
        return self.W_in.device

    @property
    def alpha(self) -> Tensor:
        """Planted output scales α*_k = ‖W_out[:, k]‖, shape (K,)."""
        return self.W_out.norm(dim=0)

    def __repr__(self) -> str:
        return (
            f"SyntheticMap(d_model={self.d_model}, n_planted={self.n_planted}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------------ primitives
    def _in(self, name: str, x: Tensor) -> Tensor:
        _check_batch(name, x, self.d_model)
        return x.to(dtype=self.dtype, device=self.device)

    def value(self, theta: Tensor) -> Tensor:
        """Δ at m points. theta: (d, m) → (d, m). Differentiable with autograd."""
        theta = self._in("theta", theta)
        return self.W_out @ torch.expm1(self.W_in @ theta)  # (d, K) @ (K, m)

    def vjp(self, theta: Tensor, U: Tensor) -> Tensor:
        """(d, m), (d, m) → (d, m), column ℓ = J(θ_ℓ)ᵀ u_ℓ = W_inᵀ(exp(W_in θ_ℓ) ⊙ W_outᵀ u_ℓ)."""
        return self.value_and_vjp(theta, U)[1]

    def value_and_vjp(self, theta: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        """(Δ(θ), J(θ)ᵀU), both (d, m), sharing exp(W_in θ)."""
        theta = self._in("theta", theta)
        U = self._in("U", U)
        if U.shape != theta.shape:
            raise ValueError(f"U must have the shape of theta {tuple(theta.shape)}, got {tuple(U.shape)}")
        Z = self.W_in @ theta  # (K, m)
        value = self.W_out @ torch.expm1(Z)  # (d, m)
        vjp = self.W_in.T @ (torch.exp(Z) * (self.W_out.T @ U))  # (d, m)
        return value, vjp

    def jvp0(self, V: Tensor) -> Tensor:
        """(d, m) → (d, m), column ℓ = J(0) v_ℓ = W_out W_in v_ℓ."""
        V = self._in("V", V)
        return self.W_out @ (self.W_in @ V)

    def hvv0(self, V: Tensor) -> Tensor:
        """(d, m) → (d, m), column ℓ = T⁽²⁾(·, v_ℓ, v_ℓ) = W_out (W_in v_ℓ)²."""
        V = self._in("V", V)
        return self.W_out @ (self.W_in @ V).square()

    def uhv0(self, U: Tensor, V: Tensor) -> Tensor:
        """(d, m), (d, m) → (d, m), column ℓ = T⁽²⁾(u_ℓ, v_ℓ, ·) = W_inᵀ((W_outᵀu_ℓ) ⊙ (W_in v_ℓ))."""
        U = self._in("U", U)
        V = self._in("V", V)
        if U.shape != V.shape:
            raise ValueError(f"U and V must have the same shape, got {tuple(U.shape)} and {tuple(V.shape)}")
        return self.W_in.T @ ((self.W_out.T @ U) * (self.W_in @ V))

    # ------------------------------------------------------------------ helpers
    def jacobian(self, theta: Tensor | None = None) -> Tensor:
        """The explicit Jacobian J(θ), shape (d, d); θ of shape (d,) or None for 0."""
        if theta is None:
            e = torch.ones(self.n_planted, dtype=self.dtype, device=self.device)
        else:
            e = torch.exp(self.W_in @ theta.to(dtype=self.dtype, device=self.device))
        return (self.W_out * e) @ self.W_in

    @staticmethod
    def nonlinearity_along_planted(R: float) -> float:
        """‖Δ(R v*) − R J v*‖ / ‖R J v*‖ along a planted direction (orthogonal case)."""
        return (math.expm1(R) - R) / R
