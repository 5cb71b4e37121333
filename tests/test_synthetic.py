"""SyntheticMap against autograd on its own formula, and planted-factor recovery by OGI.

Ground truth here never comes from the map's methods: Δ(θ) = W_out (exp(W_in θ) − 1) is
re-written below and differentiated with ``torch.autograd.functional``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor
from torch.autograd.functional import hessian, jacobian, jvp, vjp

from melbo.fit._common import ConvergenceWarning
from melbo.fit.exponential import ExponentialDCT
from melbo.maps.protocol import CausalMap
from melbo.maps.synthetic import SyntheticMap

F64 = torch.float64


def _units(d: int, m: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, m, generator=g, dtype=F64)
    return X / X.norm(dim=0)


def _formula(W_in: Tensor, W_out: Tensor):  # type: ignore[no-untyped-def]
    """Δ(θ) for one θ of shape (d,), straight from the module docstring (no expm1)."""
    return lambda th: W_out @ (torch.exp(W_in @ th) - 1.0)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def planted() -> tuple[SyntheticMap, Tensor, Tensor]:
    delta, V, U = SyntheticMap.planted(12, 3, alpha=[0.5, 1.0, 2.0], seed=3, dtype=F64)
    return delta, V, U


# ------------------------------------------------------------------ analytic primitives
def test_value_equals_the_formula(planted) -> None:  # type: ignore[no-untyped-def]
    delta, _, _ = planted
    f = _formula(delta.W_in, delta.W_out)
    theta = 1.3 * _units(12, 5, 0)
    want = torch.stack([f(theta[:, i]) for i in range(5)], dim=1)
    torch.testing.assert_close(delta.value(theta), want, rtol=1e-12, atol=1e-14)
    assert delta.value(torch.zeros(12, 2, dtype=F64)).abs().max() == 0  # Δ(0) = 0


def test_vjp_and_value_and_vjp_equal_autograd(planted) -> None:  # type: ignore[no-untyped-def]
    delta, _, _ = planted
    f = _formula(delta.W_in, delta.W_out)
    theta, U = 0.9 * _units(12, 4, 1), _units(12, 4, 2)
    val, g = delta.value_and_vjp(theta, U)
    for i in range(4):
        want_val, want_g = vjp(f, theta[:, i], U[:, i])
        torch.testing.assert_close(val[:, i], want_val, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g[:, i], want_g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(delta.vjp(theta, U), g, rtol=0, atol=0)
    # and the explicit Jacobian helper, at 0 and elsewhere
    torch.testing.assert_close(delta.jacobian(theta[:, 0]), jacobian(f, theta[:, 0]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(delta.jacobian(), jacobian(f, torch.zeros(12, dtype=F64)), rtol=1e-12, atol=1e-14)


def test_jvp0_hvv0_uhv0_equal_autograd(planted) -> None:  # type: ignore[no-untyped-def]
    delta, _, _ = planted
    f = _formula(delta.W_in, delta.W_out)
    V, U = _units(12, 3, 4), _units(12, 3, 5)
    zero = torch.zeros(12, dtype=F64)
    jv, hvv, uhv = delta.jvp0(V), delta.hvv0(V), delta.uhv0(U, V)
    for i in range(3):
        v, u = V[:, i], U[:, i]
        torch.testing.assert_close(jv[:, i], jvp(f, zero, v)[1], rtol=1e-12, atol=1e-14)
        # T(·, v, v) = d²/dε² Δ(εv) at 0 (the Taylor convention of melbo.maps.protocol)
        d2 = jacobian(lambda e, v=v: jacobian(lambda e2: f(e2 * v), e, create_graph=True), torch.zeros((), dtype=F64))
        torch.testing.assert_close(hvv[:, i], d2, rtol=1e-12, atol=1e-14)
        # T(u, v, ·) = Hessian of ⟨u, Δ⟩ at 0, times v
        H = hessian(lambda th, u=u: u @ f(th), zero)
        torch.testing.assert_close(uhv[:, i], H @ v, rtol=1e-12, atol=1e-14)


def test_taylor_convention_by_finite_differences(planted) -> None:  # type: ignore[no-untyped-def]
    """Δ(εv) = ε J v + ½ ε² T(·, v, v) + O(ε³): values alone pin down jvp0 and hvv0."""
    delta, _, _ = planted
    V = _units(12, 2, 6)
    h = 1e-3
    plus, minus = delta.value(h * V), delta.value(-h * V)
    assert _rel((plus - minus) / (2 * h), delta.jvp0(V)) < 1e-5
    assert _rel((plus + minus) / h**2, delta.hvv0(V)) < 1e-5


def test_primitives_accept_other_dtypes_and_check_shapes(planted) -> None:  # type: ignore[no-untyped-def]
    delta, _, _ = planted
    assert isinstance(delta, CausalMap)
    V32 = _units(12, 2, 7).float()
    assert delta.value(V32).dtype == F64 and delta.hvv0(V32).dtype == F64
    with pytest.raises(ValueError, match=r"d_model=12"):
        delta.value(torch.zeros(11, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"shape of theta"):
        delta.vjp(torch.zeros(12, 2, dtype=F64), torch.zeros(12, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"same shape"):
        delta.uhv0(torch.zeros(12, 2, dtype=F64), torch.zeros(12, 3, dtype=F64))


# ------------------------------------------------------------------ construction
def test_planted_factors_are_the_map_weights() -> None:
    delta, V, U = SyntheticMap.planted(10, 4, alpha=[1.0, 2.0, 3.0, 4.0], orthogonal=True, seed=1, dtype=F64)
    assert delta.d_model == 10 and delta.n_planted == 4 and delta.dtype == F64
    torch.testing.assert_close(V.norm(dim=0), torch.ones(4, dtype=F64))
    torch.testing.assert_close(V.T @ V, torch.eye(4, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(U.T @ U, torch.eye(4, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(delta.W_in, V.T)
    torch.testing.assert_close(delta.W_out, U * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64))
    torch.testing.assert_close(delta.alpha, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64))
    # Δ along a planted direction is exactly α*_k (e^R − 1) u*_k (orthogonal inputs)
    R = 1.7
    torch.testing.assert_close(delta.value(R * V), U * delta.alpha * math.expm1(R), rtol=1e-12, atol=1e-14)


def test_nonlinearity_along_planted_matches_its_definition() -> None:
    delta, V, _ = SyntheticMap.planted(8, 3, orthogonal=True, seed=2, dtype=F64)
    for R in (0.1, 1.0, 2.5):
        lin = R * delta.jvp0(V)
        want = ((delta.value(R * V) - lin).norm(dim=0) / lin.norm(dim=0)).max()
        assert SyntheticMap.nonlinearity_along_planted(R) == pytest.approx(float(want), rel=1e-10)
    assert SyntheticMap.nonlinearity_along_planted(1.0) == pytest.approx(0.718, abs=1e-3)


def test_same_seed_same_directions_in_every_dtype_and_seeds_differ() -> None:
    a = SyntheticMap.planted(16, 3, seed=5, dtype=F64)
    b = SyntheticMap.planted(16, 3, seed=5, dtype=torch.float32)
    c = SyntheticMap.planted(16, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    d = SyntheticMap.planted(16, 3, seed=6, dtype=F64)
    assert b.delta.dtype == torch.float32
    torch.testing.assert_close(b.V, a.V.float())
    assert torch.equal(a.V, c.V) and torch.equal(a.U, c.U)
    assert not torch.allclose(a.V, d.V)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d": 0, "n_planted": 1}, "d must be >= 1, got 0"),
        ({"d": 4, "n_planted": 0}, "n_planted must be >= 1, got 0"),
        ({"d": 4, "n_planted": 5, "orthogonal": True}, "n_planted=5, d=4"),
        ({"d": 4, "n_planted": 2, "alpha": [1.0, 2.0, 3.0]}, "2 entries, got 3"),
        ({"d": 4, "n_planted": 2, "alpha": [1.0, -2.0]}, r"-2\.0"),
        ({"d": 4, "n_planted": 2, "seed": 1, "generator": torch.Generator()}, "at most one"),
    ],
)
def test_planted_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticMap.planted(**kwargs)  # type: ignore[arg-type]


def test_constructor_rejects_mismatched_weights() -> None:
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        SyntheticMap(torch.zeros(3, 5), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="floating point"):
        SyntheticMap(torch.zeros(3, 5, dtype=torch.long), torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="share dtype"):
        SyntheticMap(torch.zeros(3, 5), torch.zeros(5, 3, dtype=F64))


# ------------------------------------------------------------------ recovery
@pytest.mark.parametrize(
    ("orthogonal", "alpha", "seed"),
    [(False, [1.0, 1.5, 2.0, 2.5], 0), (True, [1.0, 1.5, 2.0, 2.5], 1), (False, 1.0, 2)],
)
def test_exponential_dct_from_random_init_recovers_planted_factors(orthogonal: bool, alpha: object, seed: int) -> None:
    """d = 64, K = 4, R calibrated at λ = 0.5, random init, τ = 10.

    Δ has rank K, so after the first update every G_V lies in the K-dimensional planted
    span; orthogonalising 64 factors there every iteration would be degenerate, hence one
    orthogonalisation step (spread the factors), then plain OGI. The planted map is drawn
    from one seed and the init from another, so the fit never starts at the answer.
    (Checked over 100 seeds per configuration: none fails.)
    """
    delta, Vs, Us = SyntheticMap.planted(64, 4, alpha=alpha, orthogonal=orthogonal, seed=seed, dtype=F64)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = ExponentialDCT(64, lam=0.5, init="random", random_state=1000 + seed, max_iter=10, ortho_iters=1)
        est.fit(delta)
    U, V = est.U_, est.V_
    assert 3.0 < est.R_ < 7.0  # R ~ √d: along random directions Δ is nearly linear
    cos_v = (Vs.T @ V).max(dim=1)  # best factor for each planted feature (signed: exp is not even)
    cos_u = (Us.T @ U).max(dim=1).values
    assert cos_v.values.min() > 0.99, cos_v.values
    assert cos_u.min() > 0.99, cos_u
    # the factor that found v*_k carries u*_k itself (not just some other factor)
    assert (Us * U[:, cos_v.indices]).sum(dim=0).min() > 0.99
    # sanity of the ground truth: a random factor set does not match
    Vr = _units(64, 64, 99)
    assert (Vs.T @ Vr).max(dim=1).values.max() < 0.6
