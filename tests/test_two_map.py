"""Two-map DCTs (melbo.fit.two_map): contrastive and model-diff against planted ground truth."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from melbo.cli import main
from melbo.features import Features
from melbo.fit.exceptions import ConvergenceWarning
from melbo.fit.exponential import exponential_dct
from melbo.fit.step import step_options
from melbo.fit.two_map import (
    ContrastiveDCT,
    DifferenceMap,
    ModelDiffDCT,
    contrastive_step,
    two_map_dct,
)
from melbo.jobs.train import TrainConfig
from melbo.maps.synthetic import SyntheticMap
from melbo.maps.transformer import TransformerCausalMap
from melbo.methods import make_estimator
from melbo.testing import tiny_tokenizer

F64 = torch.float64
PROMPTS = ["hello there", "write a poem about cats", "how do I make tea"]
CONTRAST = ["the weather is nice", "count to five"]


def planted_pair(seed: int, d: int = 32, n_shared: int = 3, n_a: int = 2, n_b: int = 2, alpha_shared: float = 2.0):
    """Two planted maps: A = shared + A-only factors, B = the same shared factors + B-only ones.
    The shared factors are stronger (α 2 vs 1), so a plain DCT of A prefers them."""
    g = torch.Generator().manual_seed(seed)
    K = n_shared + n_a + n_b
    V = torch.linalg.qr(torch.randn(d, K, generator=g, dtype=F64)).Q
    U = torch.linalg.qr(torch.randn(d, K, generator=g, dtype=F64)).Q
    a = torch.tensor([alpha_shared] * n_shared + [1.0] * (n_a + n_b), dtype=F64)
    S, A, B = list(range(n_shared)), list(range(n_shared, n_shared + n_a)), list(range(n_shared + n_a, K))

    def make(idx: list[int]) -> SyntheticMap:
        return SyntheticMap(V[:, idx].T.contiguous(), (U[:, idx] * a[idx]).contiguous())

    return make(S + A), make(S + B), V, S, A


def _top(scores: list[float], k: int) -> torch.Tensor:
    return torch.tensor(scores).argsort(descending=True)[:k]


@pytest.mark.parametrize("penalty,seeds", [("norm", [0, 1, 2, 3]), ("difference", [1, 2, 3])])
def test_two_map_fit_recovers_the_a_only_planted_factors_not_the_shared_ones(penalty: str, seeds: list[int]) -> None:
    # on the published step: the default (annealed, damped) step does not recover these small
    # orthogonal planted pairs to cosine 0.999 (bench/results/default_step.md)
    step = {**step_options("published"), "max_iter": 50}
    for seed in seeds:
        da, db, V, S, A = planted_pair(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = two_map_dct(da, db, 8, R=2.0, penalty=penalty, random_state=seed, **step)
            plain = exponential_dct(da, 8, R=2.0, random_state=seed, **step)
        top = _top(res.scores, len(A))
        cos = (V.T @ res.V[:, top]).abs()  # (K, 2)
        # each A-only factor is one of the two top-scored features, and they are not shared ones
        assert cos[A].max(dim=1).values.min() > 0.999, (penalty, seed, cos[A])
        assert cos[S].max() < 0.05, (penalty, seed, cos[S])
        assert min(res.scores[i] for i in top.tolist()) > 5.0  # ‖Δ_A‖ = e² − 1 along them, Δ_B = 0
        # the plain exponential DCT of A finds (stronger) shared factors: the contrast matters
        assert ((V[:, S].T @ plain.V).abs().max(dim=1).values > 0.99).sum() >= 2


def test_difference_map_is_the_planted_map_of_the_stacked_factors() -> None:
    """Δ_A − μΔ_B is the synthetic map with B's rows appended and its outputs scaled by −μ:
    every primitive must agree with it."""
    da, db, _, _, _ = planted_pair(0, d=12)
    mu = 0.7
    ref = SyntheticMap(torch.cat([da.W_in, db.W_in]), torch.cat([da.W_out, -mu * db.W_out], dim=1))
    D = DifferenceMap(da, db, mu)
    g = torch.Generator().manual_seed(1)
    T, U = torch.randn(12, 5, generator=g, dtype=F64), torch.randn(12, 5, generator=g, dtype=F64)
    torch.testing.assert_close(D.value(T), ref.value(T))
    torch.testing.assert_close(D.vjp(T, U), ref.vjp(T, U))
    for got, want in zip(D.value_and_vjp(T, U), ref.value_and_vjp(T, U), strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(D.jvp0(T), ref.jvp0(T))
    torch.testing.assert_close(D.hvv0(T), ref.hvv0(T))
    torch.testing.assert_close(D.uhv0(U, T), ref.uhv0(U, T))
    with pytest.raises(ValueError, match="d_model"):
        DifferenceMap(da, SyntheticMap.planted(8, 2, seed=0, dtype=F64).delta)
    with pytest.raises(ValueError, match="mu"):
        DifferenceMap(da, db, -1.0)


def test_contrastive_step_moves_v_along_the_autograd_gradient_of_the_objective() -> None:
    """V_new = normalise(∇_v ½(⟨u, Δ_A(Rv)⟩² − μ²‖Δ_B(Rv)‖²)), U_new = normalise(Δ_A(RV)),
    objective = the same sum at the input factors — with autograd through Δ's values."""
    da, db, _, _, _ = planted_pair(2, d=10)
    R, mu = 1.3, 0.8
    g = torch.Generator().manual_seed(3)
    U = torch.nn.functional.normalize(torch.randn(10, 4, generator=g, dtype=F64), dim=0)
    V = torch.nn.functional.normalize(torch.randn(10, 4, generator=g, dtype=F64), dim=0)
    step = contrastive_step(da, db, U, V, R, mu)
    Vg = V.clone().requires_grad_(True)
    GA, GB = da.value(R * Vg), db.value(R * Vg)
    f = 0.5 * ((U * GA).sum(dim=0).square().sum() - mu**2 * GB.square().sum())
    (grad,) = torch.autograd.grad(f, Vg)
    torch.testing.assert_close(step.V, torch.nn.functional.normalize(grad, dim=0))
    torch.testing.assert_close(step.U, torch.nn.functional.normalize(GA.detach(), dim=0))
    assert step.objective == pytest.approx(float(f.detach()), rel=1e-12)


def test_two_map_fit_validates_its_inputs() -> None:
    da, db, _, _, _ = planted_pair(0, d=12)
    with pytest.raises(ValueError, match="penalty='l1'"):
        two_map_dct(da, db, 2, R=1.0, penalty="l1")
    with pytest.raises(ValueError, match="n_factors must be <= d_model = 12"):
        two_map_dct(da, db, 13, R=1.0)
    with pytest.raises(ValueError, match="mu nan: must be a finite number"):
        two_map_dct(da, db, 2, R=1.0, mu=float("nan"))
    with pytest.raises(ValueError, match="mu 1e\\+308: must be a number in 0 … 1000"):  # overflowed the SVD
        two_map_dct(da, db, 2, R=1.0, mu=1e308)


# ---------------------------------------------------------------- real (tiny) models
@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return tiny_tokenizer(with_chat_template=True)


def test_model_diff_of_one_perturbed_weight_finds_only_its_output_direction(tok) -> None:  # type: ignore[no-untyped-def]
    """(fp32: the tiny fp64 Llama gives NaN activations on these left-padded chat prompts.)
    The "fine-tune" is the base with a rank-1 change c·a bᵀ of the MLP down-projection of
    the slice's last layer (Llama: added straight to the residual). Then Δ_fine − Δ_base is
    c·a·(bᵀ(act(θ) − act(0))), exactly along a: every model-diff target direction is ±a.
    The fine-tune's own DCT has no reason to point there."""
    base = tiny_model("llama", vocab=len(tok))
    fine = copy.deepcopy(base)
    g = torch.Generator().manual_seed(7)
    W = fine.model.layers[2].mlp.down_proj.weight  # (d, d_ff), layer t − 1 for s, t = 1, 3
    a, b = torch.randn(W.shape[0], generator=g), torch.randn(W.shape[1], generator=g)
    with torch.no_grad():
        W += 0.5 * torch.outer(a, b)
    delta = TransformerCausalMap(fine, PROMPTS, 1, 3, tokenizer=tok, chat=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = ModelDiffDCT(4, base_model=base, max_iter=4, random_state=0).fit(delta)
        plain = make_estimator("exponential", n_factors=4, max_iter=4, R=est.R_, random_state=0).fit(delta)
    a_unit = a / a.norm()
    assert (est.U_.T @ a_unit).abs().min() > 1 - 1e-5
    assert (plain.U_.T @ a_unit).abs().max() < 0.99
    assert est.to_features().method == "model-diff" and len(est.scores_) == 4
    # the base map is the base model's Δ on the very same tokens
    torch.testing.assert_close(est.contrast_map_.value(est.R_ * est.V_),
                               TransformerCausalMap(base, delta.prompts, 1, 3).value(est.R_ * est.V_))


def test_model_diff_refuses_a_base_of_another_architecture(tok) -> None:  # type: ignore[no-untyped-def]
    fine = tiny_model("llama", vocab=len(tok))
    delta = TransformerCausalMap(fine, PROMPTS, 1, 3, tokenizer=tok)
    with pytest.raises(ValueError, match="base model"):
        ModelDiffDCT(2, R=1.0).fit(delta)
    other = tiny_model("llama", vocab=len(tok) + 5)
    with pytest.raises(ValueError, match="tokenizer"):
        ModelDiffDCT(2, base_model=other, R=1.0).fit(delta)


def test_contrastive_builds_the_contrast_map_like_the_fitted_one(tok) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("llama", vocab=len(tok))
    delta = TransformerCausalMap(model, PROMPTS, 1, 3, tokenizer=tok, chat=True, positions=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = make_estimator("contrastive", n_factors=3, max_iter=3, random_state=0, contrast_prompts=CONTRAST).fit(delta)
    assert isinstance(est, ContrastiveDCT) and est.result_.method == "contrastive" and len(est.history_) == 3
    ref = TransformerCausalMap(model, CONTRAST, 1, 3, tokenizer=tok, chat=True, positions=2)
    theta = est.R_ * est.V_
    torch.testing.assert_close(est.contrast_map_.value(theta), ref.value(theta))
    want = delta.value(theta).norm(dim=0) - ref.value(theta).norm(dim=0)
    torch.testing.assert_close(torch.tensor(est.scores_), want)
    with pytest.raises(ValueError, match="contrast prompt set B"):
        ContrastiveDCT(2, R=1.0).fit(delta)


def test_equal_maps_are_refused_not_fitted_to_zero_features(tok) -> None:  # type: ignore[no-untyped-def]
    """Contrastive with the same prompts on both sides, model-diff with a copy of the model as its
    base: Δ_A = Δ_B, the contrast is zero (it used to "save 4 features" of zeros)."""
    model = tiny_model("llama", vocab=len(tok))
    delta = TransformerCausalMap(model, PROMPTS, 1, 3, tokenizer=tok, chat=True)
    for est in (ContrastiveDCT(2, R=1.0, max_iter=2, contrast_prompts=list(PROMPTS)),
                ModelDiffDCT(2, R=1.0, max_iter=2, base_model=copy.deepcopy(model))):
        with pytest.raises(ValueError, match="the two maps are equal"):
            est.fit(delta)
    da, db, _, _, _ = planted_pair(0, d=12)
    with pytest.raises(ValueError, match="the two maps are equal"):
        two_map_dct(da, da, 2, R=1.0, penalty="difference")
    two_map_dct(da, db, 2, R=1.0, max_iter=1)  # maps that differ: fitted
    from melbo.jobs.train import TrainConfig, train

    for method, kw in (("contrastive", {"contrast_prompts": list(reversed(PROMPTS))}), ("model-diff", {"base_model": model})):
        with pytest.raises(ValueError, match="the two maps are equal"):
            train(model, tok, list(PROMPTS), TrainConfig(1, 3, method=method, n_factors=2, max_iter=1, R=1.0), **kw)


# ---------------------------------------------------------------- train / CLI
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, tok) -> tuple[Path, Path, Path, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("twomap")
    for name, seed in (("fine", 0), ("base", 1)):
        m = tiny_model("llama", vocab=len(tok), seed=seed)
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "a.txt").write_text("\n".join(PROMPTS) + "\n")
    (root / "b.txt").write_text("\n".join(CONTRAST) + "\n")
    return root / "fine", root / "base", root / "a.txt", root / "b.txt"


def _args(model: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--prompts", str(prompts), "--source-layer", "1", "--target-layer", "3",
            "--factors", "3", "--iters", "2", "--out", str(out), "--no-progress", *extra]


def test_cli_trains_contrastive_and_model_diff(saved, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    fine, base, a, b = saved
    assert main(_args(fine, a, tmp_path / "c", "--method", "contrastive", "--contrast-prompts", str(b), "--mu", "0.5")) == 0
    c = Features.load(tmp_path / "c")
    assert c.method == "contrastive" and len(c.scores) == 3 and c.extra["n_contrast_prompts"] == 2
    assert main(_args(fine, a, tmp_path / "d", "--method", "model-diff", "--base-model", str(base))) == 0
    d = Features.load(tmp_path / "d")
    assert d.method == "model-diff" and len(d.scores) == 3 and d.extra["base_model"]["name"].endswith("base")
    # missing or misplaced inputs are refused before any model is loaded
    for extra, msg in ((("--method", "model-diff"), "needs the base model"),
                       (("--method", "contrastive"), "needs a contrast prompt set"),
                       (("--base-model", str(base)), "only used by method 'model-diff'"),
                       (("--mu", "2"), "mu/penalty are options")):
        with pytest.raises(SystemExit):
            main(_args(fine, a, tmp_path / "e", *extra))
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_train_config_refuses_a_bad_penalty() -> None:
    with pytest.raises(ValueError, match="penalty='l2'"):
        TrainConfig(1, 3, method="contrastive", penalty="l2").validate()
