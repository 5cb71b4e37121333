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
(the minimum-norm least-squares solution). The transcoder's scales are α ≥ 0 (``method.md``
§2), so when that solution has a negative entry α is the minimiser of the same loss over
α ≥ 0 — the convex problem min ½αᵀKα − bᵀα, α ≥ 0 — found by accelerated projected gradient
(FISTA with adaptive restart) from the clipped solution, to a relative KKT residual of
``tol``. Clipping alone is not that minimiser: with many more factors than features, the
spare factors near a strong feature get large negative and positive raw α that cancel, and
clipping can leave the factors that found the strongest feature at α = 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from melbo.fit._common import check_R, normalize_columns
from melbo.maps.protocol import CausalMap

__all__ = [
    "exponential_alphas",
    "exponential_gram",
    "kkt_residual",
    "nonnegative_qp",
    "quadratic_alphas",
    "quadratic_gram",
    "solve_alphas",
]


def solve_alphas(
    K: Tensor, b: Tensor, *, rcond: float = 1e-6, nonnegative: bool = True, tol: float = 1e-9, max_iter: int = 20000
) -> Tensor:
    """Least-squares scales: K α = b for symmetric PSD K (m, m), b (m,), robust to ill-conditioning.

    Computed in float64 through K = Q Λ Qᵀ; eigenvalues λ ≤ rcond·λ_max are treated as 0
    (pseudo-inverse, the minimum-norm solution). With ``nonnegative`` and a negative entry
    in that solution, α minimises ½αᵀKα − bᵀα over α ≥ 0 instead (see the module doc);
    when the unconstrained solution is already ≥ 0 it is returned unchanged.
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
    b64 = b.to(torch.float64)
    lam, Q = torch.linalg.eigh(K64)  # ascending
    lam_max = float(lam.abs().max())
    keep = lam > rcond * lam_max if lam_max > 0 else torch.zeros_like(lam, dtype=torch.bool)
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    alpha = Q @ (inv * (Q.T @ b64))
    if nonnegative and bool((alpha < 0).any()):
        alpha = nonnegative_qp(K64, b64, alpha.clamp_min(0.0), lipschitz=lam_max, tol=tol, max_iter=max_iter)
    return alpha.to(dtype=b.dtype)


def kkt_residual(K: Tensor, b: Tensor, alpha: Tensor) -> float:
    """Largest violation of the optimality conditions of min ½αᵀKα − bᵀα over α ≥ 0,
    relative to max|b|: the projected gradient (g = Kα − b where α > 0, min(g, 0) where α = 0)."""
    g = K @ alpha - b
    pg = torch.where(alpha > 0, g, g.clamp_max(0.0))
    return float(pg.abs().max()) / max(float(b.abs().max()), 1e-300)


def nonnegative_qp(
    K: Tensor, b: Tensor, x0: Tensor, *, lipschitz: float | None = None, tol: float = 1e-9, max_iter: int = 20000
) -> Tensor:
    """argmin over α ≥ 0 of ½αᵀKα − bᵀα for PSD K (float64), from x0 ≥ 0.

    FISTA (projected gradient with Nesterov momentum, step 1/λ_max(K)) with a restart
    whenever the objective goes up; stops when :func:`kkt_residual` ≤ ``tol``.
    """
    L = lipschitz if lipschitz is not None else float(torch.linalg.eigvalsh(K).max())
    if not L > 0:
        return torch.zeros_like(b)
    x = x0.clamp_min(0.0)
    y, t = x.clone(), 1.0

    def objective(a: Tensor) -> float:
        return float(0.5 * a @ (K @ a) - b @ a)

    f_x = objective(x)
    for it in range(max_iter):
        x_new = (y - (K @ y - b) / L).clamp_min(0.0)
        f_new = objective(x_new)
        if f_new > f_x:  # adaptive restart: drop the momentum
            y, t = x.clone(), 1.0
            continue
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t, f_x = x_new, t_new, f_new
        if it % 20 == 0 and kkt_residual(K, b, x) <= tol:
            break
    return x


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
