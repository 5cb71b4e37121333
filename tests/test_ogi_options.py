"""Property tests of the OGI step options ``sequential`` and ``orient`` (melbo.fit.exponential).

Ground truth is computed here from the planted map's formula Δ(θ) = W_out (exp(W_in θ) − 1)
with plain autograd, one column at a time, in float64.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor
from torch.autograd.functional import vjp

from melbo.fit._common import ConvergenceWarning, qr_columns
from melbo.fit.exponential import ExponentialDCT, exponential_dct, ogi_step
from melbo.fit.step import step_options
from melbo.maps.synthetic import SyntheticMap

F64 = torch.float64
#: The published step without its iteration limit (the tests set their own): these tests are of
#: the options on the step they were introduced for, QR and an undamped β.
PUBLISHED = {k: v for k, v in step_options("published").items() if k != "max_iter"}


def _units(d: int, m: int, seed: int) -> Tensor:
    X = torch.randn(d, m, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return X / X.norm(dim=0)


def _normalise(X: Tensor) -> Tensor:
    return X / X.norm(dim=0)


@pytest.fixture
def synth() -> tuple[SyntheticMap, object]:
    delta = SyntheticMap.planted(16, 3, alpha=[1.0, 0.6, 1.7], seed=3, dtype=F64).delta
    W_in, W_out = delta.W_in.clone(), delta.W_out.clone()

    def f(theta: Tensor) -> Tensor:
        return W_out @ torch.expm1(W_in @ theta)

    return delta, f


def _cols(f, X: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
    return torch.stack([f(X[:, j]) for j in range(X.shape[1])], dim=1)


def _vjps(f, Theta: Tensor, C: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
    return torch.stack([vjp(f, Theta[:, j], C[:, j])[1] for j in range(Theta.shape[1])], dim=1)


def test_defaults_are_the_published_step(synth) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    U, V = _units(16, 4, 1), _units(16, 4, 2)
    a = ogi_step(delta, U, V, 1.3)
    b = ogi_step(delta, U, V, 1.3, sequential=False, orient=False)
    assert a.flipped is None and b.flipped is None
    for x, y in ((a.U, b.U), (a.V, b.V), (a.value, b.value)):
        assert torch.equal(x, y)
    assert a.objective == b.objective


def test_sequential_v_step_is_the_normalised_gradient_of_the_response_norm(synth) -> None:  # type: ignore[no-untyped-def]
    """With β = 1: U_new = Δ_R(v)/‖Δ_R(v)‖ and V_new = ∇_v ‖Δ(R v)‖ normalised, whatever U."""
    delta, f = synth
    R = 1.4
    U, V = _units(16, 4, 3), _units(16, 4, 4)
    step = ogi_step(delta, U, V, R, sequential=True)
    for j in range(4):
        v = V[:, j].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(R * v).norm(), v)
        torch.testing.assert_close(step.V[:, j], g / g.norm(), rtol=1e-10, atol=1e-12)
        val = f(R * V[:, j])
        torch.testing.assert_close(step.value[:, j], val, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(step.U[:, j], val / val.norm(), rtol=1e-10, atol=1e-12)
    assert step.objective == pytest.approx(float((U * _cols(f, R * V)).sum()), rel=1e-12)
    other = ogi_step(delta, _units(16, 4, 5), V, R, sequential=True)
    assert torch.equal(other.U, step.U) and torch.equal(other.V, step.V)
    # the published step's V does depend on U
    assert not torch.allclose(ogi_step(delta, _units(16, 4, 5), V, R).V, ogi_step(delta, U, V, R).V)


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_sequential_step_takes_g_v_with_the_updated_damped_u(synth, beta: float) -> None:  # type: ignore[no-untyped-def]
    delta, f = synth
    R = 0.8
    U, V = _units(16, 5, 6), _units(16, 5, 7)
    step = ogi_step(delta, U, V, R, beta, sequential=True)
    U_new = _normalise(beta * _normalise(_cols(f, R * V)) + (1 - beta) * U)
    V_new = _normalise(beta * _normalise(R * _vjps(f, R * V, U_new)) + (1 - beta) * V)
    torch.testing.assert_close(step.U, U_new, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(step.V, V_new, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_orient_flips_to_the_side_with_the_larger_response(synth, sequential: bool, beta: float) -> None:  # type: ignore[no-untyped-def]
    """orient = the plain step from (s·U, s·V), s_ℓ = −1 where ‖Δ_R(−v_ℓ)‖ > ‖Δ_R(v_ℓ)‖."""
    delta, f = synth
    R = 1.1
    Vs = delta.W_in.T / delta.W_in.norm(dim=1)  # (16, 3) planted directions
    V = _normalise(torch.cat([Vs, -Vs], dim=1) + 0.3 * _units(16, 6, 8))  # both sides of each
    U = _units(16, 6, 9)
    s = torch.where(_cols(f, -R * V).norm(dim=0) > _cols(f, R * V).norm(dim=0), -1.0, 1.0).to(F64)
    assert bool((s < 0).any()) and bool((s > 0).any())
    step = ogi_step(delta, U, V, R, beta, sequential=sequential, orient=True)
    ref = ogi_step(delta, U * s, V * s, R, beta, sequential=sequential)
    assert step.flipped is not None and torch.equal(step.flipped, s < 0)
    for x, y in ((step.U, ref.U), (step.V, ref.V), (step.value, ref.value)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    assert step.objective == pytest.approx(ref.objective, rel=1e-12)


def test_oriented_sequential_step_does_not_depend_on_the_input_signs(synth) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    U, V = _units(16, 6, 10), _units(16, 6, 11)
    s = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0], dtype=F64)
    a = ogi_step(delta, U, V, 0.9, sequential=True, orient=True)
    b = ogi_step(delta, _units(16, 6, 12), V * s, 0.9, sequential=True, orient=True)
    torch.testing.assert_close(a.V, b.V, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.U, b.U, rtol=1e-12, atol=1e-14)


def test_orient_takes_factors_out_of_the_mirrored_fixed_point() -> None:
    """(−u*, −v*) is a fixed point of the published step (OGI stops there after one
    iteration); with orient the first step goes to (u*, v*)."""
    delta, Vs, Us = SyntheticMap.planted(12, 3, alpha=[1.0, 2.0, 0.5], orthogonal=True, seed=4, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        trapped = exponential_dct(delta, 3, R=1.5, max_iter=20, tol=1e-9, init=(-Us, -Vs), **PUBLISHED)
    assert trapped.converged and trapped.n_iter == 1
    torch.testing.assert_close(trapped.V, -Vs, rtol=0, atol=1e-12)
    step = ogi_step(delta, -Us, -Vs, 1.5, orient=True)
    assert step.flipped is not None and bool(step.flipped.all())
    torch.testing.assert_close(step.V, Vs, rtol=0, atol=1e-12)
    torch.testing.assert_close(step.U, Us, rtol=0, atol=1e-12)
    res = exponential_dct(delta, 3, R=1.5, max_iter=20, tol=1e-9, init=(-Us, -Vs), orient=True, sequential=True,
                          **PUBLISHED)
    assert res.converged
    torch.testing.assert_close(res.V, Vs, rtol=0, atol=1e-9)


def test_exponential_dct_runs_the_options_in_every_iteration(synth) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    R = 1.2
    U0, V0 = _units(16, 4, 13), _units(16, 4, 14)
    states: list[tuple[Tensor, Tensor, float]] = []
    with pytest.warns(ConvergenceWarning):
        res = exponential_dct(
            delta, 4, R=R, max_iter=3, tol=0.0, init=(U0, V0), sequential=True, orient=True,
            callback=lambda it, s: states.append((s.U.clone(), s.V.clone(), s.objective)), **PUBLISHED,
        )
    U, V = U0, V0
    for it, (Us, Vs, obj) in enumerate(states):
        step = ogi_step(delta, U, qr_columns(V), R, sequential=True, orient=True)
        torch.testing.assert_close(Us, step.U, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(Vs, step.V, rtol=1e-10, atol=1e-12)
        assert obj == pytest.approx(step.objective, rel=1e-10) and obj == res.history[it]
        U, V = Us, Vs
    est = ExponentialDCT(4, R=R, max_iter=3, tol=0.0, init=(U0, V0), sequential=True, orient=True, **PUBLISHED)
    with pytest.warns(ConvergenceWarning):
        est.fit(delta)
    assert torch.equal(est.V_, res.V)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_options_recover_planted_factors_within_15_iterations(seed: int) -> None:
    """m > K non-orthogonal planted factors: with both options, every v*_k has a learned
    v within cosine 0.99 after 15 iterations (the published step needs more for seed 0)."""
    pm = SyntheticMap.planted(512, 8, seed=seed, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = exponential_dct(
            pm.delta, 32, R=1.0, max_iter=15, tol=0.0, random_state=100 + seed, sequential=True, orient=True,
            **PUBLISHED,
        )
    best = (pm.V.T @ res.V).max(dim=1).values
    assert bool((best > 0.99).all()), best


@pytest.mark.parametrize("name", ["sequential", "orient"])
def test_options_must_be_bools(synth, name: str) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    U, V = _units(16, 2, 15), _units(16, 2, 16)
    with pytest.raises(ValueError, match=name):
        ogi_step(delta, U, V, 1.0, **{name: 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        exponential_dct(delta, 2, R=1.0, init=(U, V), **{name: "yes"})  # type: ignore[arg-type]


def test_polar_orthogonalisation_is_the_closest_orthonormal_matrix() -> None:
    from melbo.fit._common import orthonormalize, polar_columns

    V = _units(12, 5, 21) + 0.3 * _units(12, 5, 22)
    P = polar_columns(V)
    torch.testing.assert_close(P.T @ P, torch.eye(5, dtype=F64), rtol=0, atol=1e-12)
    Q = qr_columns(V)
    # same span as V (and as QR's Q), and never farther from V than QR's Q
    torch.testing.assert_close(P @ P.T, Q @ Q.T, rtol=0, atol=1e-10)
    assert float((P - V).norm()) <= float((Q - V).norm()) + 1e-12
    # closest: no random orthonormal basis of the same span is closer to V
    for s in range(20):
        Z, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(s), dtype=F64))
        assert float((P - V).norm()) <= float((Q @ Z - V).norm()) + 1e-12
    # an orthonormal V is left as it is, whatever the column order (QR would also keep it, but
    # bends later columns away from earlier ones as soon as they are not exactly orthogonal)
    Qo = qr_columns(_units(12, 5, 23))
    torch.testing.assert_close(polar_columns(Qo), Qo, rtol=0, atol=1e-12)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(polar_columns(V[:, perm]), P[:, perm], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="ortho='gram'"):
        orthonormalize(V, "gram")


def test_exponential_dct_with_polar_orthogonalisation_steps_from_the_polar_factor(synth) -> None:  # type: ignore[no-untyped-def]
    from melbo.fit._common import polar_columns

    delta, _ = synth
    U0, V0 = _units(16, 4, 13), _units(16, 4, 14)
    states: list[tuple[Tensor, Tensor]] = []
    with pytest.warns(ConvergenceWarning):
        exponential_dct(delta, 4, R=1.2, max_iter=2, tol=0.0, init=(U0, V0), ortho="polar", beta=1.0, anneal=None,
                        callback=lambda it, s: states.append((s.U.clone(), s.V.clone())))
    step = ogi_step(delta, U0, polar_columns(V0), 1.2)
    torch.testing.assert_close(states[0][1], step.V, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="ortho='svd'"):
        exponential_dct(delta, 4, R=1.2, ortho="svd")


@pytest.mark.parametrize(
    ("anneal_after", "betas"),
    [(0, [0.6 / (1 + k / 2.0) for k in range(3)]),  # β_k = β/(1 + k/anneal) from the start
     (2, [0.6, 0.6, 0.6, 0.6 / 1.5, 0.6 / 2.0])],    # k < 2: β; then β/(1 + (k − 2)/anneal)
)
def test_anneal_damps_iteration_k_after_anneal_after_fixed_ones(synth, anneal_after: int,  # type: ignore[no-untyped-def]
                                                                 betas: list[float]) -> None:
    from melbo.fit._common import polar_columns

    delta, _ = synth
    U0, V0 = _units(16, 4, 13), _units(16, 4, 14)
    states: list[tuple[Tensor, Tensor]] = []
    with pytest.warns(ConvergenceWarning):
        exponential_dct(delta, 4, R=1.2, max_iter=len(betas), tol=0.0, init=(U0, V0), ortho="polar", beta=0.6, anneal=2.0,
                        anneal_after=anneal_after, callback=lambda it, s: states.append((s.U.clone(), s.V.clone())))
    U, V = U0, V0
    for b, (Us, Vs) in zip(betas, states, strict=True):
        step = ogi_step(delta, U, polar_columns(V), 1.2, b)
        torch.testing.assert_close(Us, step.U, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(Vs, step.V, rtol=1e-10, atol=1e-12)
        U, V = Us, Vs


def test_anneal_and_anneal_after_refuse_bad_values(synth) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    for bad in (0, -1.0, float("inf"), True, "3"):
        with pytest.raises(ValueError, match="anneal="):
            exponential_dct(delta, 4, R=1.2, anneal=bad)  # type: ignore[arg-type]
    for bad_after, match in ((-1, "anneal_after=-1"), (1.5, "anneal_after=1.5"), (True, "anneal_after=True")):
        with pytest.raises(ValueError, match=match):
            exponential_dct(delta, 4, R=1.2, anneal=2.0, anneal_after=bad_after)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs anneal"):
        exponential_dct(delta, 4, R=1.2, anneal=None, anneal_after=3)
