"""One OGI step by default for every entry point (melbo.fit.step), the published one a name away,
and the deprecated aliases: each warns naming the canonical name and still works; the canonical
names do not warn.

The published step is checked against the publication's OGI written out here (Gram–Schmidt,
autograd, one column at a time, float64), not against melbo's own step."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model
from torch import Tensor
from torch.autograd.functional import vjp

from melbo.cli import main
from melbo.cli._common import _step_options
from melbo.cli.app import build_parser
from melbo.features import Features
from melbo.fit import (
    ContrastiveDCT,
    ConvergenceWarning,
    ExponentialDCT,
    ModelDiffDCT,
    exponential_dct,
    two_map_dct,
)
from melbo.fit.calibrate import calibrate_R
from melbo.fit.step import (
    ANNEALED,
    DEFAULT_STEP,
    PUBLISHED,
    STEPS,
    damping,
    get_step,
    resolve_anneal_after,
    step_options,
)
from melbo.jobs.discover_config import DiscoverConfig
from melbo.jobs.train import OGI_METHODS, TrainConfig
from melbo.maps.synthetic import SyntheticMap
from melbo.testing import tiny_tokenizer

F64 = torch.float64
FIELDS = ("max_iter", "beta", "ortho", "anneal", "anneal_after")


def _units(d: int, m: int, seed: int) -> Tensor:
    X = torch.randn(d, m, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return X / X.norm(dim=0)


# ---------------------------------------------------------------- one definition
def test_the_default_is_the_annealed_step_and_the_published_one_is_the_papers() -> None:
    assert DEFAULT_STEP is ANNEALED and set(STEPS) == {"annealed", "published"}
    assert ANNEALED.options() == {"max_iter": 20, "beta": 0.5, "ortho": "polar", "anneal": 5.0, "anneal_after": 10}
    assert PUBLISHED.options() == {"max_iter": 10, "beta": 1.0, "ortho": "qr", "anneal": None, "anneal_after": 0}
    # β_k: β for the first anneal_after iterations, then β/(1 + j/anneal); a fixed β without a schedule
    assert [damping(0.5, k, 5.0, 10) for k in (0, 9, 10, 11, 15)] == [0.5, 0.5, 0.5, 0.5 / 1.2, 0.25]
    assert {damping(1.0, k, None, 0) for k in range(30)} == {1.0}


@pytest.mark.parametrize("fit", [exponential_dct, two_map_dct, ExponentialDCT, ContrastiveDCT, ModelDiffDCT])
def test_every_fit_function_and_estimator_defaults_to_the_one_step(fit: Any) -> None:
    params = inspect.signature(fit).parameters
    got = {k: params[k].default for k in FIELDS}
    assert {**got, "anneal_after": resolve_anneal_after(got["anneal"], got["anneal_after"])} == DEFAULT_STEP.options()


def test_train_and_discover_configs_default_to_the_one_step() -> None:
    want = tuple(DEFAULT_STEP.options().values())
    for method in OGI_METHODS:
        cfg = TrainConfig(source_layer=1, target_layer=3, method=method)
        cfg.validate()
        assert (cfg.resolved_max_iter(), cfg.beta, cfg.ortho, *cfg.schedule()) == want, method
        opts = cfg.estimator_options()
        assert (opts["beta"], opts["ortho"], opts["anneal"], opts["anneal_after"]) == want[1:]
    d = DiscoverConfig()
    assert (d.max_iter, d.beta, d.ortho, *d.schedule()) == want


def _argv(command: str, tmp_path: Path) -> list[str]:
    return {"train": ["train", "--prompts", "p.txt", "--source-layer", "1", "--target-layer", "3", "--out", str(tmp_path)],
            "discover": ["discover", "m", "--prompts", "p.txt", "--out", str(tmp_path)],
            "demo": ["demo"]}[command]


@pytest.mark.parametrize("command", ["train", "discover", "demo"])
def test_every_command_defaults_to_the_one_step_and_takes_step_published(command: str, tmp_path: Path) -> None:
    parser, argv = build_parser(), _argv(command, tmp_path)

    def step(*flags: str) -> dict[str, Any]:
        return _step_options(parser.parse_args([*argv, *flags]))

    assert step() == DEFAULT_STEP.options()
    assert step("--step", "published") == PUBLISHED.options() == step_options("published")
    assert step("--step", "published", "--beta", "0.7", "--max-iter", "3") == {**PUBLISHED.options(), "beta": 0.7, "max_iter": 3}
    # --anneal without --anneal-after leaves it to the schedule (10 with one, 0 without)
    assert step("--anneal", "2") == {**DEFAULT_STEP.options(), "anneal": 2.0, "anneal_after": None}
    assert step("--anneal", "none") == {**DEFAULT_STEP.options(), "anneal": None, "anneal_after": None}
    assert step("--anneal", "2", "--anneal-after", "3")["anneal_after"] == 3


def test_a_bad_step_is_refused_naming_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("settled", None, 1):
        with pytest.raises(ValueError, match=r"step=.*: choose one of annealed, published \(default annealed\)"):
            get_step(bad)
    with pytest.raises(SystemExit) as exc:
        main([*_argv("train", tmp_path), "--step", "settled"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--step" in err and "'annealed', 'published'" in err and "Traceback" not in err


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    tok = tiny_tokenizer(with_chat_template=True)
    tiny_model("llama", vocab=len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "p.txt").write_text("hello there\nwrite a poem about cats\nhow do I make tea\n")
    return tmp_path / "model", tmp_path / "p.txt"


def test_train_fits_and_records_the_step_it_was_asked_for(tiny: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model, prompts = tiny
    base = ["train", "--model", str(model), "--prompts", str(prompts), "--source-layer", "1", "--target-layer", "3",
            "--factors", "4", "--no-progress"]
    for flags, want in (([], DEFAULT_STEP), (["--step", "published"], PUBLISHED)):
        out = tmp_path / ("run" + "".join(flags))
        assert main([*base, *flags, "--out", str(out)]) == 0
        feats = Features.load(out)
        assert {k: feats.extra["fit"][k] for k in FIELDS} == want.options() and len(feats.history) == want.max_iter
    # the step is the OGI methods': a method without it refuses it before the model is loaded
    with pytest.raises(SystemExit) as exc:
        main([*base, "--method", "quadratic", "--step", "published", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--step: the OGI step of methods exponential, contrastive, model-diff, not 'quadratic'" in err
    with pytest.raises(ValueError, match="OGI step of methods .* not 'linear'"):
        TrainConfig(source_layer=1, target_layer=3, method="linear", beta=1.0).validate()


# ---------------------------------------------------------------- the published step reproduces the paper's
def _gram_schmidt(V: Tensor) -> Tensor:
    Q = torch.zeros_like(V)
    for j in range(V.shape[1]):
        q = V[:, j] - Q[:, :j] @ (Q[:, :j].T @ V[:, j])
        Q[:, j] = q / q.norm()
    return Q


def test_published_step_is_the_publications_ogi() -> None:
    """Every one of its 10 iterations is the undamped OGI step from the factors the one before
    left: V ← Gram–Schmidt(V); U ← normalise(Δ(R V)); V ← normalise(R J(R V)ᵀ U_old), written
    out with autograd (checked step by step: the published step is chaotic on the extra factors,
    so rounding differences grow over the iterations)."""
    pm = SyntheticMap.planted(12, 5, alpha=[1.0, 0.6, 1.7, 0.8, 1.2], seed=3, dtype=F64)  # m ≤ K: V keeps full rank
    W_in, W_out = pm.delta.W_in.clone(), pm.delta.W_out.clone()

    def f(theta: Tensor) -> Tensor:
        return W_out @ torch.expm1(W_in @ theta)

    R, U0, V0 = 1.3, _units(12, 4, 1), _units(12, 4, 2)
    states: list[tuple[Tensor, Tensor]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = exponential_dct(pm.delta, 4, R=R, tol=0.0, init=(U0, V0), **step_options("published"),
                              callback=lambda it, st: states.append((st.U.clone(), st.V.clone())))  # type: ignore[func-returns-value]
        est = ExponentialDCT(4, R=R, tol=0.0, init=(U0, V0), **step_options("published")).fit(pm.delta)
        default = exponential_dct(pm.delta, 4, R=R, tol=0.0, init=(U0, V0))
    assert res.n_iter == len(states) == 10 and est.n_iter_ == 10 and default.n_iter == 20
    U, V = U0, V0
    for Us, Vs in states:
        Q = _gram_schmidt(V)
        GU = torch.stack([f(R * Q[:, j]) for j in range(4)], dim=1)
        GV = torch.stack([vjp(f, R * Q[:, j], U[:, j])[1] for j in range(4)], dim=1)
        torch.testing.assert_close(Us, GU / GU.norm(dim=0), rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(Vs, GV / GV.norm(dim=0), rtol=1e-9, atol=1e-11)
        U, V = Us, Vs
    assert torch.equal(est.V_, res.V) and torch.equal(res.V, states[-1][1])
    assert not torch.allclose(default.V, res.V, atol=1e-3)  # the default is another step


# ---------------------------------------------------------------- deprecated aliases
@pytest.fixture(scope="module")
def fitted() -> tuple[SyntheticMap, ExponentialDCT, Features]:
    delta = SyntheticMap.planted(16, 3, seed=0, dtype=F64).delta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = ExponentialDCT(4, R=1.0, max_iter=3, random_state=0).fit(delta)
    return delta, est, est.to_features(source_layer=1, target_layer=3)


def test_each_alias_warns_naming_the_new_name_and_still_works(fitted: Any) -> None:
    delta, est, feats = fitted
    with pytest.deprecated_call(match=r"TrainConfig\(iters=...\) is deprecated: use max_iter="):
        assert TrainConfig(source_layer=1, target_layer=3, iters=4).max_iter == 4
    with pytest.deprecated_call(match=r"TrainConfig\(steps=...\) is deprecated: use max_iter="):
        assert TrainConfig(source_layer=1, target_layer=3, method="melbo-v1", steps=7).max_iter == 7
    with pytest.deprecated_call(match=r"TrainConfig\(seed=...\) is deprecated: use random_state="):
        assert TrainConfig(source_layer=1, target_layer=3, seed=5).random_state == 5
    ref = calibrate_R(delta, 0.5, n_cal=4, random_state=1)
    with pytest.deprecated_call(match=r"calibrate_R\(n_dirs=...\) is deprecated: use n_cal="):
        assert calibrate_R(delta, 0.5, n_dirs=4, random_state=1).R == ref.R
    with pytest.deprecated_call(match=r"calibrate_R\(seed=...\) is deprecated: use random_state="):
        assert calibrate_R(delta, 0.5, n_cal=4, seed=1).R == ref.R
    with pytest.deprecated_call(match=r"ExponentialDCT.factors_ is deprecated: use U_ and V_"):
        U, V = est.factors_
    assert U is est.U_ and V is est.V_
    with pytest.deprecated_call(match=r"Features.objective is deprecated: use Features.history"):
        assert feats.objective == feats.history == est.history_
    # the warning points at the caller's line, not at melbo
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.factors_  # noqa: B018
    assert caught[0].filename == __file__


def test_canonical_names_do_not_warn(fitted: Any) -> None:
    delta, est, feats = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = TrainConfig(source_layer=1, target_layer=3, max_iter=4, random_state=5)
        cfg.validate()
        assert (cfg.max_iter, cfg.random_state) == (4, 5)
        assert calibrate_R(delta, 0.5, n_cal=4, random_state=1).R > 0
        assert est.U_ is not None and est.V_.shape == (16, 4) and len(est.history_) == 3
        assert feats.history == est.history_
