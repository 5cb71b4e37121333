"""Scales α of a fitted transcoder: least squares K α = b with a safe solve.

The transcoder Δ̂(θ) = Σ_ℓ α_ℓ σ(⟨v_ℓ, θ⟩) u_ℓ approximates Δ_R(θ) = Δ(Rθ), whose k-th
derivative tensor at 0 is R^k T⁽ᵏ⁾. For fixed (U, V) the loss of ``method.md`` §2 is
quadratic in α; its normal equations are K α = b with

* exponential, σ = exp(x) − 1 (all derivatives 1, loss Σ_k 1/k! ‖·‖²):
  K_ℓℓ' = ⟨u_ℓ,u_ℓ'⟩ (exp⟨v_ℓ,v_ℓ'⟩ − 1),  b_ℓ = Σ_k R^k T⁽ᵏ⁾(u_ℓ, v_ℓ, …)/k! = ⟨u_ℓ, Δ_R(v_ℓ)⟩.
* quadratic, σ = x²: match the second-order Taylor term ½ R² T⁽²⁾(·, θ, θ) with
  Σ_ℓ α_ℓ ⟨v_ℓ, θ⟩² u_ℓ, i.e. K α = ½ R² b with K_ℓℓ' = ⟨u_ℓ,u_ℓ'⟩⟨v_ℓ,v_ℓ'⟩² and
  b_ℓ = T⁽²⁾(u_ℓ, v_ℓ, v_ℓ) = ⟨u_ℓ, hvv0(v_ℓ)⟩. ``method.md``'s α = K⁻¹b is this with
  R = 1 and σ = x²/2; the ½ comes from σ''(0) = 2 against the Taylor ½.

K is a Gram matrix (positive semi-definite) and is ill-conditioned whenever factors
nearly coincide (e.g. m ≫ the number of real features), so it is solved by a truncated
symmetric eigendecomposition in float64: eigenvalues below ``rcond · λ_max`` are dropped
(the minimum-norm least-squares solution). Finally α is clipped at 0: a negative α says
that factor's own response is already explained by overlapping factors, and the model's
activations are meant to be non-negative scales; clipped factors rank last.
"""

from __future__ import annotations

import torch
from torch import Tensor

from melbo.fit._common import check_R, normalize_columns
from melbo.protocol import CausalMap

__all__ = [
    "exponential_alphas",
    "exponential_gram",
    "quadratic_alphas",
    "quadratic_gram",
    "solve_alphas",
]


def solve_alphas(K: Tensor, b: Tensor, *, rcond: float = 1e-6, nonnegative: bool = True) -> Tensor:
    """Solve K α = b for symmetric PSD K (m, m), b (m,), robust to ill-conditioning.

    Computed in float64 through K = Q Λ Qᵀ; eigenvalues λ ≤ rcond·λ_max are treated as 0
    (pseudo-inverse). With ``nonnegative`` the result is clipped at 0 afterwards.
    Returns α of shape (m,) in the dtype and device of ``b``.
    """
    if K.ndim != 2 or K.shape[0] != K.shape[1] or b.shape != (K.shape[0],):
        raise ValueError(f"need K of shape (m, m) and b of shape (m,), got {tuple(K.shape)}, {tuple(b.shape)}")
    if not 0 <= rcond < 1:
        raise ValueError(f"rcond must be in [0, 1), got {rcond}")
    if K.shape[0] == 0:
        return b.clone()
    K64 = K.to(torch.float64)
    K64 = 0.5 * (K64 + K64.T)
    lam, Q = torch.linalg.eigh(K64)  # ascending
    lam_max = float(lam.abs().max())
    keep = lam > rcond * lam_max if lam_max > 0 else torch.zeros_like(lam, dtype=torch.bool)
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    alpha = Q @ (inv * (Q.T @ b.to(torch.float64)))
    if nonnegative:
        alpha = alpha.clamp_min(0.0)
    return alpha.to(dtype=b.dtype)


def exponential_gram(U: Tensor, V: Tensor) -> Tensor:
    """K_ℓℓ' = ⟨u_ℓ,u_ℓ'⟩(exp⟨v_ℓ,v_ℓ'⟩ − 1) in float64; U, V (d, m) → (m, m)."""
    U64, V64 = U.to(torch.float64), V.to(torch.float64)
    return (U64.T @ U64) * torch.expm1(V64.T @ V64)


def quadratic_gram(U: Tensor, V: Tensor) -> Tensor:
    """K_ℓℓ' = ⟨u_ℓ,u_ℓ'⟩⟨v_ℓ,v_ℓ'⟩² in float64; U, V (d, m) → (m, m)."""
    U64, V64 = U.to(torch.float64), V.to(torch.float64)
    return (U64.T @ U64) * (V64.T @ V64).square()


def exponential_alphas(
    delta: CausalMap,
    U: Tensor,
    V: Tensor,
    R: float,
    *,
    value: Tensor | None = None,
    rcond: float = 1e-6,
) -> Tensor:
    """α of an exponential transcoder: K α = b, b_ℓ = ⟨u_ℓ, Δ_R(v_ℓ)⟩ (see module doc).

    Parameters
    ----------
    U, V : Tensor, shape (d, m)
        Factors; normalised here.
    value : Tensor, shape (d, m), optional
        Δ_R(V) if already computed (saves one forward pass).

    Returns
    -------
    Tensor, shape (m,)
    """
    R = check_R(R)
    U, V = normalize_columns(U), normalize_columns(V)
    if value is None:
        value = delta.value(R * V)  # (d, m)
    b = (U * value).sum(dim=0)  # (m,)
    return solve_alphas(exponential_gram(U, V), b, rcond=rcond)


def quadratic_alphas(
    delta: CausalMap, U: Tensor, V: Tensor, R: float, *, rcond: float = 1e-6
) -> Tensor:
    """α of a quadratic transcoder: K α = ½R² b, b_ℓ = T⁽²⁾(u_ℓ,v_ℓ,v_ℓ) (see module doc).

    U, V : Tensor, shape (d, m), normalised here. Returns a Tensor of shape (m,).
    """
    R = check_R(R)
    U, V = normalize_columns(U), normalize_columns(V)
    b = 0.5 * R * R * (U * delta.hvv0(V)).sum(dim=0)  # (m,)
    return solve_alphas(quadratic_gram(U, V), b, rcond=rcond)
