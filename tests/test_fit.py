"""Property tests of melbo.fit against ground truth computed independently of the package.

Ground truth comes from (a) the value function alone, differentiated by finite differences,
(b) ``torch.autograd.functional`` on the value function (the SyntheticMap formula re-written
here, or the transformer slice's differentiable Δ), and (c) maps whose answer is known in
closed form (exactly linear maps, maps with E(R) = cR, planted transcoders). Everything runs
in float64 on two maps: a planted SyntheticMap and a tiny random-init GPT-2 slice (fp64
throughout, so finite differences are clean).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from tiny_models import tiny_model
from torch import Tensor
from torch.autograd.functional import hessian, jacobian, jvp, vjp

from melbo.fit._common import ConvergenceWarning, make_generator, qr_columns
from melbo.fit.alphas import (
    exponential_alphas,
    exponential_gram,
    kkt_residual,
    quadratic_alphas,
    quadratic_gram,
    solve_alphas,
)
from melbo.fit.calibrate import CalibrationError, calibrate_R, nonlinearity_ratio
from melbo.fit.exponential import ExponentialDCT, exponential_dct, ogi_step
from melbo.fit.init import initial_factors
from melbo.fit.linear import (
    LinearDCT,
    explicit_jacobian,
    linear_dct,
    linear_full,
    linear_projected,
    projected_directions,
)
from melbo.fit.quadratic import QuadraticDCT, als_step, quadratic_als, quadratic_dct
from melbo.maps.synthetic import SyntheticMap
from melbo.maps.transformer import TransformerCausalMap
from melbo.prompts import PromptBatch, resolve_positions

F64 = torch.float64
Fn = Callable[[Tensor], Tensor]



def _nnqp(K: Tensor, b: Tensor) -> Tensor:
    """argmin over α ≥ 0 of ½αᵀKα − bᵀα by enumerating the active sets (small m only):
    the best feasible solution of K_SS α_S = b_S over every support S."""
    m = b.shape[0]
    best, best_f = torch.zeros_like(b), 0.0
    for mask in range(1, 2**m):
        S = [i for i in range(m) if mask >> i & 1]
        a = torch.zeros_like(b)
        a[S] = torch.linalg.lstsq(K[S][:, S], b[S]).solution
        f = float(0.5 * a @ K @ a - b @ a)
        if bool((a >= 0).all()) and f < best_f - 1e-15:
            best, best_f = a, f
    return best

# ================================================================== maps and ground truth
class FunctionMap:
    """A CausalMap from a function f: (d,) → (d,), every primitive by plain autograd,
    one column at a time. Used for maps whose E(R) is known in closed form."""

    def __init__(self, f: Fn, d: int) -> None:
        self.f, self.d_model, self.dtype, self.device = f, d, F64, torch.device("cpu")

    def _cols(self, fn: Callable[..., Tensor], *Ms: Tensor) -> Tensor:
        return torch.stack([fn(*(M[:, i].to(F64) for M in Ms)) for i in range(Ms[0].shape[1])], dim=1)

    def value(self, theta: Tensor) -> Tensor:
        with torch.no_grad():
            return self._cols(self.f, theta)

    def vjp(self, theta: Tensor, U: Tensor) -> Tensor:
        return self._cols(lambda t, u: vjp(self.f, t, u)[1], theta, U)

    def value_and_vjp(self, theta: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        return self.value(theta), self.vjp(theta, U)

    def jvp0(self, V: Tensor) -> Tensor:
        return self._cols(lambda v: jvp(self.f, torch.zeros_like(v), v)[1], V)

    def hvv0(self, V: Tensor) -> Tensor:
        return self._cols(lambda v: _hvv_autograd(self.f, v), V)

    def uhv0(self, U: Tensor, V: Tensor) -> Tensor:
        return self._cols(lambda u, v: _uhv_autograd(self.f, u, v), U, V)


def _hvv_autograd(f: Fn, v: Tensor) -> Tensor:
    """T(·, v, v)_k = d²/dε² f_k(εv) at 0: the autograd Hessian of each output coordinate
    along the line. (Reverse-over-reverse on purpose: torch 2.x forward-mode AD, and the
    double-backward jvp trick, get LayerNorm's second derivative wrong.)"""
    zero = torch.zeros((), dtype=F64)
    return torch.stack([hessian(lambda e, k=k: f(e * v)[k], zero) for k in range(v.shape[0])])


def _uvv_autograd(f: Fn, u: Tensor, v: Tensor) -> Tensor:
    """T(u, v, v) = d²/dε² ⟨u, f(εv)⟩ at 0."""
    return hessian(lambda e: u @ f(e * v), torch.zeros((), dtype=F64))


def _uhv_autograd(f: Fn, u: Tensor, v: Tensor) -> Tensor:
    """T(u, v, ·) = (Hessian of ⟨u, f⟩ at 0) v."""
    return hessian(lambda th: u @ f(th), torch.zeros_like(v)) @ v


def _jac0(f: Fn, d: int) -> Tensor:
    return jacobian(f, torch.zeros(d, dtype=F64))


def _cols(f: Fn, M: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.stack([f(M[:, i]) for i in range(M.shape[1])], dim=1)


def _normalise(X: Tensor) -> Tensor:
    return X / X.norm(dim=0, keepdim=True)


def _units(d: int, m: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return _normalise(torch.randn(d, m, generator=g, dtype=F64))


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _gram_schmidt(V: Tensor) -> Tensor:
    """Orthonormal Q with span(Q[:, :j]) = span(V[:, :j]) and ⟨q_j, v_j⟩ > 0 (classical GS, twice)."""
    Q = torch.zeros_like(V)
    for j in range(V.shape[1]):
        q = V[:, j].clone()
        for _ in range(2):
            q = q - Q[:, :j] @ (Q[:, :j].T @ q)
        Q[:, j] = q / q.norm()
    return Q


def _assert_same_up_to_sign(A: Tensor, B: Tensor, tol: float) -> None:
    s = torch.sign((A * B).sum(dim=0))
    assert float((A - B * s).abs().max()) < tol


# ---------------------------------------------------------------- finite differences (values only)
def _d2_values(value: Callable[[Tensor], Tensor], D: Tensor, h: float) -> Tensor:
    """d²/dε² value(ε D[:, j]) at 0 for every column, from values only: central second
    differences at h, h/2, h/4 with two Richardson steps (error O(h⁶)). D (d, n) → (d, n)."""
    hs = [h / 2**k for k in range(3)]
    pts = torch.cat([torch.zeros_like(D[:, :1])] + [s * t * D for t in hs for s in (1.0, -1.0)], dim=1)
    vals = value(pts)
    n = D.shape[1]
    zero = vals[:, :1]
    c = [
        (vals[:, 1 + 2 * k * n : 1 + (2 * k + 1) * n] - 2 * zero + vals[:, 1 + (2 * k + 1) * n : 1 + (2 * k + 2) * n])
        / hs[k] ** 2
        for k in range(3)
    ]
    r = [(4 * c[k + 1] - c[k]) / 3 for k in range(2)]
    return (16 * r[1] - r[0]) / 15


def _fd_hvv(value: Callable[[Tensor], Tensor], V: Tensor, h: float) -> Tensor:
    """T(·, v, v) for each column of V by second differences of Δ(εv)."""
    return _d2_values(value, V, h)


def _fd_uhv(value: Callable[[Tensor], Tensor], U: Tensor, V: Tensor, h: float) -> Tensor:
    """T(u, v, ·) for each column, from second derivatives of ε ↦ ⟨u, Δ(εw)⟩ only:
    by polarisation T(u, v, e_i) = ¼[S(v + e_i) − S(v − e_i)], S(w) = d²/dε² ⟨u, Δ(εw)⟩."""
    d, k = V.shape
    eye = torch.eye(d, dtype=F64)
    out = torch.empty(d, k, dtype=F64)
    for j in range(k):
        W = torch.cat([V[:, j : j + 1] + eye, V[:, j : j + 1] - eye], dim=1)  # (d, 2d)
        S = U[:, j] @ _d2_values(value, W, h)  # (2d,)
        out[:, j] = (S[:d] - S[d:]) / 4
    return out


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth() -> tuple[SyntheticMap, Fn]:
    """Planted Δ (d=16, K=5, non-orthogonal, distinct scales) and its formula."""
    delta = SyntheticMap.planted(16, 5, alpha=[0.5, 1.0, 1.5, 2.0, 2.5], seed=0, dtype=F64).delta
    W_in, W_out = delta.W_in.clone(), delta.W_out.clone()
    return delta, lambda th: W_out @ (torch.exp(W_in @ th) - 1.0)


@pytest.fixture(scope="module")
def gpt2() -> tuple[TransformerCausalMap, Fn]:
    """Δ of layers 1→3 of a tiny fp64 GPT-2 on 2 prompts, and its differentiable value."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (2, 6), generator=g)
    batch = PromptBatch(ids, torch.ones_like(ids), resolve_positions(3, [6, 6], [0, 0]), ("a", "b"), "none")
    cm = TransformerCausalMap(tiny_model("gpt2", dtype=F64, attn="eager"), batch, 1, 3)
    return cm, lambda th: cm._delta(th[:, None])[:, 0]


@pytest.fixture(params=["synthetic", "gpt2"])
def cmap(request: pytest.FixtureRequest) -> tuple[object, Fn]:
    return request.getfixturevalue("synth" if request.param == "synthetic" else "gpt2")


# ================================================================== 1. quadratic ALS
def test_als_step_equals_finite_differences_of_values(cmap) -> None:  # type: ignore[no-untyped-def]
    """u ← normalise(T(·,v,v)) and v ← normalise(T(u,v,·)) with T from Δ values only."""
    delta, _ = cmap
    d = delta.d_model
    V = qr_columns(_units(d, 3, 1))
    step = als_step(delta, V)
    # h = 0.005: the tiny GPT-2's residual stream has norm ~0.2, so Δ bends on that scale
    H = _fd_hvv(delta.value, V, 0.005)
    U_fd = _normalise(H)
    V_fd = _normalise(_fd_uhv(delta.value, U_fd, V, 0.005))  # with the *new* u, as documented
    assert _rel(step.U, U_fd) < 1e-8
    assert _rel(step.V, V_fd) < 1e-8
    assert step.objective == pytest.approx(float(H.norm(dim=0).sum()), rel=1e-8)
    # the FD ground truth is sharp enough to tell u from a wrong update (e.g. Jv)
    assert _rel(_normalise(delta.jvp0(V)), U_fd) > 0.1


def test_als_step_equals_autograd_hessian(cmap) -> None:  # type: ignore[no-untyped-def]
    delta, f = cmap
    V = _units(delta.d_model, 2, 2)
    step = als_step(delta, V)
    for j in range(2):
        v = V[:, j]
        u = _normalise(_hvv_autograd(f, v)[:, None])[:, 0]
        torch.testing.assert_close(step.U[:, j], u, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(step.V[:, j], _normalise(_uhv_autograd(f, u, v)[:, None])[:, 0], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("orthogonalize", [True, False])
def test_quadratic_als_iterates_orthogonalise_then_step(synth, orthogonalize: bool) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    V0 = _units(16, 3, 3) + 0.8 * _units(16, 1, 4)  # strongly non-orthogonal start
    states: list[tuple[Tensor, Tensor, float]] = []
    U, V, obj, move, _ = quadratic_als(
        delta, 3, max_iter=3, tol=0.0, init=(V0, V0), orthogonalize=orthogonalize, warn=False,
        callback=lambda it, s: states.append((s.U.clone(), s.V.clone(), s.objective)),  # type: ignore[func-returns-value]
    )
    prev = _normalise(V0)
    for it, (Us, Vs, o) in enumerate(states):
        ref = als_step(delta, _gram_schmidt(prev) if orthogonalize else prev)
        torch.testing.assert_close(Us, ref.U, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(Vs, ref.V, rtol=1e-10, atol=1e-12)
        assert o == pytest.approx(ref.objective, rel=1e-12) == pytest.approx(obj[it], rel=1e-12)
        s = torch.sign((Vs * prev).sum(dim=0))  # movement of v is measured up to sign
        assert move[it] >= float((Vs * s - prev).norm(dim=0).max()) - 1e-12
        prev = Vs
    assert torch.equal(V, states[-1][1]) and torch.equal(U, states[-1][0])
    # the two schedules really differ (so the check above can tell them apart)
    other = als_step(delta, _normalise(V0) if orthogonalize else _gram_schmidt(_normalise(V0)))
    assert _rel(other.V, states[0][1]) > 1e-3


def test_quadratic_dct_interleaves_signs_and_solves_alphas(synth) -> None:  # type: ignore[no-untyped-def]
    delta, f = synth
    R = 1.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = quadratic_dct(delta, 5, R=R, max_iter=4, random_state=0)
        U3, V3, *_ = quadratic_als(delta, 3, max_iter=4, random_state=0)
    assert res.method == "quadratic" and res.U.shape == (16, 5)
    torch.testing.assert_close(res.V[:, 0::2], V3, rtol=0, atol=0)
    torch.testing.assert_close(res.V[:, 1::2], -V3[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(res.U[:, 0::2], U3, rtol=0, atol=0)
    torch.testing.assert_close(res.U[:, 1::2], U3[:, :2], rtol=0, atol=0)
    # α from the formula: K α = ½R² b, K = (UᵀU)⊙(VᵀV)², b_ℓ = T(u_ℓ, v_ℓ, v_ℓ)
    K = (U3.T @ U3) * (V3.T @ V3) ** 2
    b = 0.5 * R**2 * torch.stack([_uvv_autograd(f, U3[:, j], V3[:, j]) for j in range(3)])
    a = _nnqp(K, b)
    torch.testing.assert_close(res.alpha, torch.stack([a, a], 1).reshape(6)[:5], rtol=1e-6, atol=1e-8)


# ================================================================== 2. linear DCT
def test_explicit_jacobian_equals_autograd(cmap) -> None:  # type: ignore[no-untyped-def]
    delta, f = cmap
    J = _jac0(f, delta.d_model)
    torch.testing.assert_close(explicit_jacobian(delta), J, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(explicit_jacobian(delta, chunk_size=5), J, rtol=1e-9, atol=1e-12)


def test_linear_full_is_the_svd_of_the_autograd_jacobian(cmap) -> None:  # type: ignore[no-untyped-def]
    delta, f = cmap
    d = delta.d_model
    R = 2.0
    J = _jac0(f, d)
    ev, Q = torch.linalg.eigh(J.T @ J)  # ascending; right singular vectors of J
    s_ref, V_ref = ev.flip(0).clamp_min(0).sqrt(), Q.flip(1)
    m = 7  # odd: 4 directions, the last without its negation
    res = linear_full(delta, m, R=R)
    V, U, a = res.V, res.U, res.alpha
    assert res.method == "linear" and V.shape == U.shape == (d, m) and res.n_iter == 0
    torch.testing.assert_close(a[0::2] / R, s_ref[:4], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a[1::2], a[0::2][:3], rtol=0, atol=0)
    torch.testing.assert_close(V[:, 1::2], -V[:, 0::2][:, :3], rtol=0, atol=0)
    torch.testing.assert_close(U[:, 1::2], -U[:, 0::2][:, :3], rtol=0, atol=0)
    _assert_same_up_to_sign(V[:, 0::2], V_ref[:, :4], 1e-8)
    # every column, negations included, is a singular pair: J v = s u and Jᵀu = s v
    torch.testing.assert_close(J @ V, U * (a / R), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(J.T @ U, V * (a / R), rtol=1e-9, atol=1e-11)
    # deterministic sign: the largest-|·| entry of each v_i is positive
    Vi = V[:, 0::2]
    assert bool((Vi[Vi.abs().argmax(dim=0), torch.arange(4)] > 0).all())


def test_linear_full_with_2d_factors_reconstructs_RJ(gpt2) -> None:  # type: ignore[no-untyped-def]
    delta, f = gpt2
    d, R = delta.d_model, 0.7
    res = linear_full(delta, 2 * d, R=R)
    half = slice(0, 2 * d, 2)
    recon = (res.U[:, half] * res.alpha[half]) @ res.V[:, half].T
    torch.testing.assert_close(recon, R * _jac0(f, d), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(res.V[:, half].T @ res.V[:, half], torch.eye(d, dtype=F64), rtol=0, atol=1e-12)


def test_linear_projected_directions_are_top_right_singular_vectors_of_WJ(cmap) -> None:  # type: ignore[no-untyped-def]
    """W is the first (d, d_proj) float64 Gaussian draw of the seeded generator (init.py's
    documented contract); the scale of W does not change the singular vectors."""
    delta, f = cmap
    d, R, d_proj, seed = delta.d_model, 1.5, 8, 7
    J = _jac0(f, d)
    W = torch.randn(d, d_proj, generator=torch.Generator().manual_seed(seed), dtype=F64).T
    M = W @ J  # (d_proj, d)
    ev, Q = torch.linalg.eigh(M.T @ M)
    V_ref = Q.flip(1)[:, :4]
    res = linear_projected(delta, 8, R=R, d_proj=d_proj, random_state=seed)
    assert res.method == "linear-projected" and res.V.shape == (d, 8)
    _assert_same_up_to_sign(res.V[:, 0::2], V_ref, 1e-8)
    torch.testing.assert_close(res.V[:, 1::2], -res.V[:, 0::2], rtol=0, atol=0)
    # U = normalise(Δ_R(V)) from the value function; α = max(0, R⟨u, J v⟩) since the
    # v's of one sign are orthonormal, so K = (UᵀU)⊙(VᵀV) = I within each half
    torch.testing.assert_close(res.U, _normalise(_cols(f, R * res.V)), rtol=1e-9, atol=1e-12)
    b = R * (res.U * (J @ res.V)).sum(dim=0)
    torch.testing.assert_close(res.alpha, b.clamp_min(0), rtol=1e-9, atol=1e-12)
    assert bool((b[0::2] > 0).all())  # Δ_R(v) leans towards J v here: the + half keeps α > 0
    # the singular values returned by projected_directions are those of (W/√d) J
    _, S = projected_directions(delta, 4, d_proj=d_proj, generator=make_generator(seed))
    torch.testing.assert_close(S, torch.linalg.svdvals(M)[:4] / math.sqrt(d), rtol=1e-9, atol=1e-12)


def test_linear_methods_span_the_row_space_of_a_low_rank_jacobian(synth) -> None:  # type: ignore[no-untyped-def]
    """A W-independent property: rank J = K < d_proj ⇒ the top-K right singular vectors of
    W J span the row space of J, i.e. the planted input directions."""
    delta, _ = synth
    Vp = torch.linalg.qr(delta.W_in.T).Q  # (16, 5) basis of the planted input span
    P = Vp @ Vp.T
    for res in (
        linear_projected(delta, 10, R=1.0, d_proj=12, random_state=1),
        linear_projected(delta, 10, R=1.0, d_proj=12, random_state=2),
        linear_full(delta, 10, R=1.0),
    ):
        Vh = res.V[:, 0::2]
        torch.testing.assert_close(Vh @ Vh.T, P, rtol=0, atol=1e-9)


# ================================================================== 3. OGI
def test_ogi_step_equals_autograd_vjp(cmap) -> None:  # type: ignore[no-untyped-def]
    delta, f = cmap
    d, R = delta.d_model, 2.5
    U, V = _units(d, 4, 5), _units(d, 4, 6)
    step = ogi_step(delta, U, V, R)
    obj = 0.0
    for j in range(4):
        val, g = vjp(f, R * V[:, j], U[:, j])  # Δ(R v), J(R v)ᵀ u
        torch.testing.assert_close(step.value[:, j], val, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(step.U[:, j], val / val.norm(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(step.V[:, j], R * g / (R * g).norm(), rtol=1e-10, atol=1e-12)
        obj += float(U[:, j] @ val)
    assert step.objective == pytest.approx(obj, rel=1e-12)


@pytest.mark.parametrize("beta", [0.25, 0.7])
def test_ogi_damping_mixes_normalised_gradients_with_the_old_factors(synth, beta: float) -> None:  # type: ignore[no-untyped-def]
    delta, f = synth
    R = 1.2
    U, V = _units(16, 3, 7), _units(16, 3, 8)
    step = ogi_step(delta, U, V, R, beta=beta)
    GU = _normalise(_cols(f, R * V))
    GV = _normalise(torch.stack([vjp(f, R * V[:, j], U[:, j])[1] for j in range(3)], dim=1))
    torch.testing.assert_close(step.U, _normalise(beta * GU + (1 - beta) * U), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(step.V, _normalise(beta * GV + (1 - beta) * V), rtol=1e-10, atol=1e-12)
    # "β means the same whatever the scale of Δ": a 1000× larger map, the same step
    big = SyntheticMap(delta.W_in, 1000.0 * delta.W_out)
    s2 = ogi_step(big, U, V, R, beta=beta)
    torch.testing.assert_close(s2.U, step.U, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s2.V, step.V, rtol=1e-10, atol=1e-12)
    # and damping really damps: closer to the old factors than the undamped step
    s1 = ogi_step(delta, U, V, R)
    assert float((step.U - U).norm()) < float((s1.U - U).norm())
    # β = 1: the new U does not depend on the old U at all
    torch.testing.assert_close(ogi_step(delta, _units(16, 3, 9), V, R).U, s1.U, rtol=0, atol=0)


@pytest.mark.parametrize("ortho_iters", [None, 1, 0])
def test_exponential_dct_orthogonalises_v_as_scheduled(synth, ortho_iters: int | None) -> None:  # type: ignore[no-untyped-def]
    delta, f = synth
    R = 1.5
    U0, V0 = _units(16, 4, 10), _units(16, 4, 11) + 0.9 * _units(16, 1, 12)
    states: list[tuple[Tensor, Tensor, float, float]] = []

    def cb(it: int, s) -> None:  # type: ignore[no-untyped-def]
        states.append((s.U.clone(), s.V.clone(), s.objective, s.movement))

    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        res = exponential_dct(delta, 4, R=R, max_iter=3, tol=0.0, init=(U0, V0), ortho_iters=ortho_iters, callback=cb,
                              beta=1.0, ortho="qr", anneal=None)  # the published step, which this reference computes
    U, V = _normalise(U0), _normalise(V0)
    for it, (Us, Vs, obj, mv) in enumerate(states):
        ortho = ortho_iters is None or it < ortho_iters
        Vo = _gram_schmidt(V) if ortho else V
        GU = _cols(f, R * Vo)
        GV = torch.stack([vjp(f, R * Vo[:, j], U[:, j])[1] for j in range(4)], dim=1)
        torch.testing.assert_close(Us, _normalise(GU), rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(Vs, _normalise(GV), rtol=1e-9, atol=1e-11)
        assert obj == pytest.approx(float((U * GU).sum()), rel=1e-10) == pytest.approx(res.history[it], rel=1e-12)
        assert mv == pytest.approx(max(float((Us - U).norm(dim=0).max()), float((Vs - V).norm(dim=0).max())), rel=1e-9)
        U, V = Us, Vs
    assert res.n_iter == 3 and not res.converged and res.movement == [s[3] for s in states]
    # the returned V is the last update, not re-orthogonalised; α from the formula
    assert torch.equal(res.V, states[-1][1]) and torch.equal(res.U, states[-1][0])
    K = (U.T @ U) * torch.expm1(V.T @ V)
    b = (U * _cols(f, R * V)).sum(dim=0)
    torch.testing.assert_close(res.alpha, _nnqp(K, b), rtol=1e-6, atol=1e-8)
    if ortho_iters != 0:  # with QR, the factors the first step starts from are orthonormal
        Vq = qr_columns(_normalise(V0))
        torch.testing.assert_close(Vq, _gram_schmidt(_normalise(V0)), rtol=1e-10, atol=1e-12)
        assert _rel(_normalise(V0), Vq) > 0.1  # and QR is not a no-op here


def test_planted_factors_are_an_ogi_fixed_point_and_stop_the_fit() -> None:
    """Orthonormal planted (u*, v*): Δ(R v*_k) ∝ u*_k and R J(R v*_k)ᵀ u*_k ∝ v*_k, so OGI
    must stop after one iteration (movement ~ 1e-16 < tol), for any R."""
    delta, Vs, Us = SyntheticMap.planted(12, 3, alpha=[1.0, 2.0, 3.0], orthogonal=True, seed=5, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # converging must not warn
        res = exponential_dct(delta, 3, R=2.3, max_iter=20, tol=1e-9, init=(Us, Vs))
        assert res.converged and res.n_iter == 1 and res.movement[0] < 1e-12
        torch.testing.assert_close(res.V, Vs, rtol=0, atol=1e-12)
        # from a perturbed start it converges back (movement shrinks below tol)
        U0, V0 = Us + 0.05 * _units(12, 3, 20), Vs + 0.05 * _units(12, 3, 21)
        res = exponential_dct(delta, 3, R=2.3, max_iter=50, tol=1e-6, init=(U0, V0))
    assert res.converged and 1 < res.n_iter < 50 and res.movement[-1] < 1e-6 <= min(res.movement[:-1])
    torch.testing.assert_close(res.V, Vs, rtol=0, atol=1e-5)
    torch.testing.assert_close(res.U, Us, rtol=0, atol=1e-5)
    # without tol it runs to max_iter and warns; a callback returning True stops it
    with pytest.warns(ConvergenceWarning, match=r"max_iter=4 .*tol=0"):
        assert exponential_dct(delta, 3, R=2.3, max_iter=4, tol=0.0, init=(U0, V0)).n_iter == 4
    stop = exponential_dct(delta, 3, R=2.3, max_iter=50, tol=0.0, init=(U0, V0), callback=lambda it, s: it == 1)
    assert stop.n_iter == 2 and not stop.converged


# ================================================================== 4. alphas
def test_exponential_alphas_of_a_planted_transcoder_are_the_planted_scales() -> None:
    """At R = 1 the planted map *is* an exponential transcoder, so K α* = b exactly."""
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5], dtype=F64)
    delta, Vs, Us = SyntheticMap.planted(16, 5, alpha=alpha, seed=4, dtype=F64)
    torch.testing.assert_close(exponential_alphas(delta, Us, Vs, 1.0), alpha, rtol=1e-9, atol=1e-12)
    # quadratic: ½R² T(·,θ,θ) = Σ ½R² α*_k ⟨v*_k, θ⟩² u*_k, so α = ½R² α*
    torch.testing.assert_close(quadratic_alphas(delta, Us, Vs, 1.7), 0.5 * 1.7**2 * alpha, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
def test_alphas_solve_K_alpha_b_from_the_documented_formulas(cmap, aligned: bool) -> None:  # type: ignore[no-untyped-def]
    """K and b recomputed entry by entry from method.md §3 / alphas.py. With u aligned to
    the factor's own response (as after a fit) every α > 0 and K α = b exactly; with random
    u some raw solutions are negative and α is the minimiser of the loss over α ≥ 0 (found by
    enumerating active sets), which is not the clip of K⁻¹b."""
    delta, f = cmap
    d, R, m = delta.d_model, 1.8, 5
    V = _units(d, m, 14)
    Ue = _normalise(_cols(f, R * V)) if aligned else _units(d, m, 13)
    Uq = _normalise(torch.stack([_hvv_autograd(f, V[:, j]) for j in range(m)], dim=1)) if aligned else Ue
    exp_, sq = math.expm1, lambda x: x * x
    for U, sigma, gram, alphas, b in (
        (Ue, exp_, exponential_gram, exponential_alphas, (Ue * _cols(f, R * V)).sum(dim=0)),
        (Uq, sq, quadratic_gram, quadratic_alphas, 0.5 * R**2 * torch.stack([_uvv_autograd(f, Uq[:, j], V[:, j]) for j in range(m)])),
    ):
        K = torch.tensor([[float(U[:, i] @ U[:, j]) * sigma(float(V[:, i] @ V[:, j])) for j in range(m)] for i in range(m)], dtype=F64)
        torch.testing.assert_close(gram(U, V), K, rtol=1e-12, atol=1e-14)
        got = alphas(delta, U, V, R)
        raw = torch.linalg.solve(K, b)
        torch.testing.assert_close(got, _nnqp(K, b), rtol=1e-6, atol=1e-8)
        if aligned:
            assert bool((got > 0).all())
            torch.testing.assert_close(got, raw, rtol=1e-8, atol=1e-10)
            torch.testing.assert_close(K @ got, b, rtol=1e-8, atol=1e-10)
        else:
            assert bool((raw < 0).any()) and bool((raw > 0).any())  # the constraint is active
            assert not torch.allclose(got, raw.clamp_min(0), rtol=1e-3, atol=1e-6)  # and clipping is not the answer


def test_alphas_with_duplicated_factors_are_the_min_norm_split(synth) -> None:  # type: ignore[no-untyped-def]
    """K is singular when a factor is duplicated: α stays finite, still solves K α = b,
    and the duplicate pair shares the single factor's α equally (minimum norm)."""
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=F64)
    delta, Vs, Us = SyntheticMap.planted(12, 4, alpha=alpha, seed=6, dtype=F64)
    U2, V2 = torch.cat([Us[:, :1], Us], dim=1), torch.cat([Vs[:, :1], Vs], dim=1)
    assert float(torch.linalg.matrix_rank(exponential_gram(U2, V2))) == 4  # really singular
    a = exponential_alphas(delta, U2, V2, 1.0)
    assert bool(a.isfinite().all())
    torch.testing.assert_close(a, torch.cat([alpha[:1] / 2, alpha[:1] / 2, alpha[1:]]), rtol=1e-8, atol=1e-10)
    b = (U2 * delta.value(V2)).sum(dim=0)
    torch.testing.assert_close(exponential_gram(U2, V2) @ a, b, rtol=1e-8, atol=1e-10)
    # nearly duplicated (cos = 1 − 1e-18): ill-conditioned, still finite and no larger than the split
    V3 = V2.clone()
    V3[:, 0] = _normalise((Vs[:, 0] + 1e-9 * _units(12, 1, 15)[:, 0])[:, None])[:, 0]
    a3 = exponential_alphas(delta, U2, V3, 1.0)
    assert bool(a3.isfinite().all()) and float(a3.abs().max()) < 10 * float(alpha.max())
    torch.testing.assert_close(a3, a, rtol=1e-5, atol=1e-6)
    # all-zero factors: K = 0, α = 0 (not NaN)
    Z = torch.zeros(12, 3, dtype=F64)
    assert torch.equal(exponential_alphas(delta, Z, Z, 1.0), torch.zeros(3, dtype=F64))


def test_nonnegative_alphas_keep_the_strongest_planted_feature_on_top() -> None:
    """Many more factors than planted features: the factors that found the strongest
    feature carry the largest total α (clipping K⁻¹b gave them α = 0 here)."""
    delta, Vs, _ = SyntheticMap.planted(64, 4, alpha=[1, 1.5, 2, 2.5], seed=25, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = ExponentialDCT(64, lam=0.5, init="random", random_state=1025, max_iter=10, ortho_iters=1).fit(delta)
    U, V = est.U_, est.V_
    found = (Vs.T @ V) > 0.99  # (4, 64)
    assert bool(found.any(dim=1).all())
    totals = torch.stack([est.alpha_[row].sum() for row in found])
    assert bool((totals[1:] > totals[:-1]).all()), totals  # ordered as the planted scales
    K, b = exponential_gram(U, V), (U * delta.value(est.R_ * V)).sum(dim=0)
    assert kkt_residual(K, b, est.alpha_) < 1e-6
    assert bool((est.alpha_ >= 0).all())


def test_solve_alphas_clips_and_validates() -> None:
    K = torch.eye(2, dtype=F64)
    b = torch.tensor([1.0, -2.0], dtype=F64)
    assert torch.equal(solve_alphas(K, b), torch.tensor([1.0, 0.0], dtype=F64))
    assert torch.equal(solve_alphas(K, b, nonnegative=False), b)
    with pytest.raises(ValueError, match="rcond must be in .*got 1.5"):
        solve_alphas(K, b, rcond=1.5)
    with pytest.raises(ValueError, match=r"\(2, 2\), \(3,\)"):
        solve_alphas(K, torch.ones(3, dtype=F64))


# ================================================================== 5. calibration
def _E(f: Fn, R: float, V: Tensor, J: Tensor) -> float:
    """E(R) from its definition (method.md §3) with J from autograd."""
    lin = R * (J @ V)
    return math.sqrt(float((((_cols(f, R * V) - lin).norm(dim=0) / lin.norm(dim=0)) ** 2).mean()))


@pytest.mark.parametrize(("which", "lam"), [("synthetic", 0.5), ("gpt2", 0.25)])
def test_calibrate_R_solves_E_equals_lambda(request: pytest.FixtureRequest, which: str, lam: float) -> None:
    """The tiny GPT-2 saturates at E ≈ 0.3 (its residual stream passes θ through), hence λ = 0.25."""
    delta, f = request.getfixturevalue("synth" if which == "synthetic" else "gpt2")
    d = delta.d_model
    res = calibrate_R(delta, lam, n_cal=8, random_state=3)
    # the calibration directions: n_dirs unit Gaussians drawn in float64 from the seed
    Vc = _normalise(torch.randn(d, 8, generator=torch.Generator().manual_seed(3), dtype=F64))
    J = _jac0(f, d)
    assert _E(f, res.R, Vc, J) == pytest.approx(lam, rel=1e-3)
    assert res.error == pytest.approx(_E(f, res.R, Vc, J), rel=1e-8)
    assert res.lam == lam and res.n_evals == len(res.history) <= 20
    for R, e in res.history[:4]:
        assert e == pytest.approx(_E(f, R, Vc, J), rel=1e-8)
    assert nonlinearity_ratio(delta, res.R, Vc, J @ Vc) == pytest.approx(res.error, rel=1e-10)


def _quadratic_bump(c: float, d: int = 6) -> FunctionMap:
    """Δ(θ) = Aθ + c‖θ‖² w, A orthogonal, ‖w‖ = 1 ⇒ E(R) = cR exactly, in every direction."""
    A = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=F64)).Q
    w = _units(d, 1, 2)[:, 0]
    return FunctionMap(lambda th: A @ th + c * (th @ th) * w, d)


@pytest.mark.parametrize("c", [1.0, 1e-5, 1e5])
def test_calibrate_R_exact_root_and_bracket_widening(c: float) -> None:
    """Root λ/c: inside the initial bracket (1e-3, 1e2), far above it, far below it."""
    res = calibrate_R(_quadratic_bump(c), 0.5, n_cal=4, random_state=0)
    assert res.R == pytest.approx(0.5 / c, rel=1e-3)
    assert res.error == pytest.approx(0.5, rel=1e-3)
    for R, e in res.history:
        assert e == pytest.approx(c * R, rel=1e-6)
    tried = [R for R, _ in res.history]
    if c < 1:
        assert max(tried) > 1e2  # widened upwards
    if c > 1:
        assert min(tried) < 1e-3  # widened downwards
    assert res.n_evals <= 20


def test_calibrate_R_without_a_root_raises_quoting_E() -> None:
    # an exactly linear map: E(R) = 0 for every R
    A = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=F64)).Q
    with pytest.raises(CalibrationError) as ei:
        calibrate_R(FunctionMap(lambda th: A @ th, 6), 0.5, n_cal=3)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert "lam = 0.5" in msg and "E(0.001)=" in msg and "E(1e+10)=" in msg  # 8 widenings tried
    assert msg.count("E(") == 10 + 1  # every evaluation, plus "E(R) = lam"
    # a root beyond the widening budget: the quoted values are E(R) = cR
    with pytest.raises(CalibrationError) as ei:
        calibrate_R(_quadratic_bump(1e-5), 0.5, n_cal=3, max_widen=1)
    msg = str(ei.value)
    assert "E(100)=0.001" in msg and "E(1000)=0.01" in msg and "E(0.001)=1e-08" in msg


def test_calibrate_R_undefined_when_the_jacobian_vanishes() -> None:
    w = _units(5, 1, 4)[:, 0]
    with pytest.raises(CalibrationError, match="vanishes"):
        calibrate_R(FunctionMap(lambda th: (th @ th) * w, 5), 0.5, n_cal=2)


def test_calibrate_R_survives_overflow_at_the_top_of_the_bracket() -> None:
    """exp(W_in θ) overflows for R = 1e4: E = inf there counts as 'very non-linear'."""
    delta = SyntheticMap.planted(16, 2, seed=8, dtype=F64).delta
    res = calibrate_R(delta, 0.5, n_cal=6, random_state=1, bracket=(1e-3, 1e4))
    assert any(math.isinf(e) for _, e in res.history)
    assert math.isfinite(res.R) and res.error == pytest.approx(0.5, rel=1e-3)


# ================================================================== 6. determinism
_FITS: dict[str, Callable[..., object]] = {
    "exponential-projected": lambda dl, s: exponential_dct(dl, 6, R=2.0, max_iter=3, random_state=s),
    "exponential-random": lambda dl, s: exponential_dct(dl, 6, R=2.0, max_iter=3, init="random", random_state=s),
    "exponential-backward": lambda dl, s: exponential_dct(dl, 6, R=2.0, max_iter=3, init="backward", random_state=s),
    "quadratic": lambda dl, s: quadratic_dct(dl, 6, R=2.0, max_iter=3, random_state=s),
    "linear-projected": lambda dl, s: linear_projected(dl, 6, R=2.0, random_state=s),
    "estimator": lambda dl, s: ExponentialDCT(4, lam=0.25, max_iter=2, random_state=s).fit(dl).result_,
}


@pytest.mark.parametrize("fit", list(_FITS))
def test_same_seed_bit_identical_different_seed_differs(gpt2, fit: str) -> None:  # type: ignore[no-untyped-def]
    delta, _ = gpt2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b, c = (_FITS[fit](delta, s) for s in (11, 11, 12))
    for x, y in ((a.U, b.U), (a.V, b.V), (a.alpha, b.alpha)):  # type: ignore[attr-defined]
        assert torch.equal(x, y)
    assert a.R == b.R  # type: ignore[attr-defined]
    assert float((a.V - c.V).abs().max()) > 1e-3  # type: ignore[attr-defined]


# ================================================================== 7. initial factors
def test_initial_factors_live_where_documented(synth) -> None:  # type: ignore[no-untyped-def]
    delta, f = synth
    Vp = torch.linalg.qr(delta.W_in.T).Q
    J = _jac0(f, 16)
    for init in ("projected", "backward"):  # V ∝ J(0)ᵀ(·): inside the planted input span
        U, V = initial_factors(delta, 8, init, R=1.5, generator=make_generator(0), d_proj=4)
        torch.testing.assert_close(Vp @ (Vp.T @ V), V, rtol=0, atol=1e-10)
        torch.testing.assert_close(V.norm(dim=0), torch.ones(8, dtype=F64))
        if init == "projected":  # U = normalise(Δ_R(V))
            torch.testing.assert_close(U, _normalise(_cols(f, 1.5 * V)), rtol=1e-10, atol=1e-12)
        else:  # U Gaussian, V = normalise(J(0)ᵀ U)
            torch.testing.assert_close(V, _normalise(J.T @ U), rtol=1e-10, atol=1e-12)
    U, V = initial_factors(delta, 8, "random", R=1.5, generator=make_generator(0))
    assert float((V - Vp @ (Vp.T @ V)).norm()) > 1.0  # random V is not confined


# ================================================================== 8. bad input
def _bad_calls(delta: SyntheticMap) -> list[tuple[Callable[[], object], str]]:
    d = delta.d_model  # 16
    e = exponential_dct
    return [
        (lambda: e(delta, 0, R=1.0), "n_factors must be an integer >= 1, got 0"),
        (lambda: e(delta, -3, R=1.0), "got -3"),
        (lambda: e(delta, 2.5, R=1.0), "got 2.5"),  # type: ignore[arg-type]
        (lambda: e(delta, d + 1, R=1.0), f"n_factors must be <= d_model = {d} to orthogonalise, got {d + 1}"),
        (lambda: e(delta, 4, R=1.0, beta=0.0), r"beta must be in \(0, 1\], got 0.0"),
        (lambda: e(delta, 4, R=1.0, beta=1.5), "got 1.5"),
        (lambda: e(delta, 4, R=1.0, beta=-0.2), "got -0.2"),
        (lambda: e(delta, 4, R=1.0, tol=-1e-3), "tol must be a number >= 0, got -0.001"),
        (lambda: e(delta, 4, R=1.0, init="sideways"), "unknown init 'sideways'; choose one of 'projected'"),
        (lambda: e(delta, 4, R=1.0, max_iter=0), "max_iter must be an integer >= 1, got 0"),
        (lambda: e(delta, 4, R=-2.0), "R must be a finite number > 0, got -2.0"),
        (lambda: e(delta, 4, R=math.nan), "got nan"),
        (lambda: e(delta, 4, R=1.0, random_state="x"), "random_state must be .* got 'x'"),  # type: ignore[arg-type]
        (lambda: e(delta, 4, R=1.0, ortho_iters=-1), "ortho_iters must be an integer >= 0, got -1"),
        (lambda: e(delta, 4, R=1.0, init=(torch.zeros(d, 3), torch.zeros(d, 3))), "3 columns but n_factors=4"),
        (lambda: e(delta, 4, R=1.0, init=(torch.zeros(d + 1, 4), torch.zeros(d, 4))), f"got \\({d + 1}, 4\\)"),
        (lambda: quadratic_dct(delta, 0, R=1.0), "n_factors must be an integer >= 1, got 0"),
        (lambda: quadratic_dct(delta, 2 * d + 1, R=1.0), f"got {2 * d + 1}"),
        (lambda: quadratic_als(delta, d + 1), f"at most d_model = {d} ALS factors to orthogonalise, got {d + 1}"),
        (lambda: quadratic_dct(delta, 4, R=1.0, tol=-0.5), "tol must be a number >= 0, got -0.5"),
        (lambda: quadratic_dct(delta, 4, R=1.0, init="nope"), "unknown init 'nope'"),
        (lambda: quadratic_dct(delta, 4, R=0.0), "R must be a finite number > 0, got 0.0"),
        (lambda: linear_full(delta, 0, R=1.0), "got 0"),
        (lambda: linear_full(delta, 2 * d + 1, R=1.0), f"<= 2 \\* d_model = {2 * d} for linear-full, got {2 * d + 1}"),
        (lambda: linear_projected(delta, 9, R=1.0, d_proj=4), "= 8 for linear-projected, got 9"),
        (lambda: linear_projected(delta, 2, R=1.0, d_proj=0), "d_proj must be an integer >= 1, got 0"),
        (lambda: linear_dct(delta, 2, R=1.0, method="svd"), "unknown linear method 'svd'"),
        (lambda: calibrate_R(delta, 0.0), r"lam 0.0: must be in \(0, 1\)"),
        (lambda: calibrate_R(delta, -0.5), "lam -0.5"),
        (lambda: calibrate_R(delta, 0.5, n_cal=0), "n_cal must be an integer >= 1, got 0"),
        (lambda: calibrate_R(delta, 0.5, bracket=(1.0, 0.5)), r"0 < lo < hi < inf, got \(1.0, 0.5\)"),
        (lambda: calibrate_R(delta, 0.5, rtol=0.0), r"rtol must be in \(0, 1\), got 0.0"),
        (lambda: calibrate_R(delta, 0.5, widen=1.0), "widen must be > 1, got 1.0"),
        (lambda: ExponentialDCT(0, R=1.0).fit(delta), "n_factors must be an integer >= 1, got 0"),
        (lambda: ExponentialDCT(4, R=1.0, beta=2.0).fit(delta), "beta must be in .* got 2.0"),
        (lambda: QuadraticDCT(4, R=1.0, init="bad").fit(delta), "unknown init 'bad'"),
        (lambda: LinearDCT(4, R=1.0, method="bad").fit(delta), "unknown linear method 'bad'"),
    ]


def test_bad_input_raises_value_errors_naming_the_value(synth) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    calls = _bad_calls(delta)
    for call, match in calls:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(TypeError, match="CausalMap, got str"):
        exponential_dct("not a map", 4, R=1.0)  # type: ignore[arg-type]


# ================================================================== estimators
@pytest.mark.parametrize("kind", ["exponential", "quadratic", "linear-projected", "linear-full"])
def test_estimators_set_fitted_attributes_like_the_functions(synth, kind: str) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    est: ExponentialDCT | QuadraticDCT | LinearDCT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "exponential":
            est, ref = ExponentialDCT(6, R=1.5, max_iter=3, random_state=0), exponential_dct(delta, 6, R=1.5, max_iter=3, random_state=0)
        elif kind == "quadratic":
            est, ref = QuadraticDCT(6, R=1.5, max_iter=3, random_state=0), quadratic_dct(delta, 6, R=1.5, max_iter=3, random_state=0)
        else:
            method = kind.split("-")[1]
            est, ref = LinearDCT(6, R=1.5, method=method, random_state=0), linear_dct(delta, 6, R=1.5, method=method, random_state=0)
        assert not hasattr(est, "U_")
        assert est.fit(delta) is est
    U, V = est.U_, est.V_
    assert torch.equal(U, ref.U) and torch.equal(V, ref.V) and torch.equal(est.alpha_, ref.alpha)
    assert est.R_ == 1.5 and est.n_iter_ == ref.n_iter and est.history_ == ref.history
    assert isinstance(est.history_, list) and len(est.history_) == est.n_iter_
    assert (est.n_iter_ == 3) if kind in ("exponential", "quadratic") else (est.n_iter_ == 0)
    assert est.alpha_.shape == (6,) and bool((est.alpha_ >= 0).all())


def test_estimator_calibrates_R_when_not_given(synth) -> None:  # type: ignore[no-untyped-def]
    delta, _ = synth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = ExponentialDCT(4, lam=0.3, max_iter=2, random_state=5).fit(delta)
        R = calibrate_R(delta, 0.3, random_state=make_generator(5)).R  # an int seed: calibration and fit
        ref = exponential_dct(delta, 4, R=R, max_iter=2, random_state=5)  # each draw from seed 5
    assert est.R_ == R and torch.equal(est.V_, ref.V)


def test_calibrate_R_finds_the_upper_root_when_rounding_noise_makes_E_U_shaped() -> None:
    """Δ(θ) = Aθ + c‖θ‖² w + η with a fixed η of size σ (what bf16 rounding adds): E(R)² ≈
    σ²/R² + (cR)², large at both ends of the initial bracket. The root wanted is the upper one,
    ≈ λ/c, where the real non-linearity takes over (the lower one, ≈ σ/λ, is the noise)."""
    d, c, sigma = 6, 1.0, 1e-3
    A = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=F64)).Q
    w = _units(d, 1, 2)[:, 0]
    eta = sigma * _units(d, 1, 5)[:, 0]
    res = calibrate_R(FunctionMap(lambda th: A @ th + c * (th @ th) * w + eta, d), 0.5, n_cal=4, random_state=0)
    assert res.R == pytest.approx(0.5 / c, rel=0.01)
    assert res.error == pytest.approx(0.5, rel=1e-3)
    assert res.history[0][1] > 0.5 and res.history[1][1] > 0.5  # both ends of (1e-3, 1e2) above λ
