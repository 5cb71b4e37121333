"""The method registry: one estimator contract for every method, the same factors through
every entry point (the Python estimator, ``melbo.jobs.train.train`` and the benches' helper),
and a Features round trip for every method."""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import tiny_model

from melbo.features import CONFIG_FILE, TENSORS_FILE, Features
from melbo.fit import ConvergenceWarning, FitEstimator
from melbo.jobs.train import TrainConfig, train
from melbo.maps.transformer import TransformerCausalMap
from melbo.methods import REGISTRY, estimator_class, get_method, make_estimator, method_names
from melbo.testing import tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _case  # noqa: E402

S, T, SEED = 1, 3, 7
PROMPTS = ["hello there", "write a poem about cats", "how do I make tea"]
CONTRAST = ["tell me a story", "what is two plus two", "name a colour"]
BASE = tiny_model("llama", vocab=len(tiny_tokenizer(with_chat_template=True)), seed=1)  # model-diff's base
# per method: (estimator options, TrainConfig options beyond n_factors / max_iter)
OPTIONS: dict[str, dict[str, Any]] = {
    "exponential": {"n_factors": 4, "max_iter": 2},
    "quadratic": {"n_factors": 4, "max_iter": 2},
    "linear": {"n_factors": 4},
    "linear-projected": {"n_factors": 4},
    "melbo-v1": {"n_factors": 2, "max_iter": 3, "lr": 0.01},
    "one-shot": {"n_factors": 1, "max_iter": 3, "completion": "Sure"},
    "mean-diff": {"n_factors": 1, "contrast_prompts": CONTRAST},
    "contrastive": {"n_factors": 4, "max_iter": 2, "contrast_prompts": CONTRAST},
    "model-diff": {"n_factors": 4, "max_iter": 2, "base_model": BASE},
    "obprop": {"n_factors": 1, "token_a": "Sure", "token_b": "I"},  # "Sorry" is not one tiny-tokenizer token
    "random": {"n_factors": 3},
}


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    tok = tiny_tokenizer(with_chat_template=True)
    return tiny_model("llama", vocab=len(tok)), tok


def _delta(lm: tuple[Any, Any]) -> TransformerCausalMap:
    model, tok = lm
    return TransformerCausalMap(model, PROMPTS, S, T, tokenizer=tok, positions=3, chat="auto")


def _quiet(fn: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn()


@pytest.fixture(scope="module")
def fitted(lm: tuple[Any, Any]) -> dict[str, Any]:
    """Every method fitted through the Python API, R calibrated (random_state seeds both)."""
    out = {}
    for name in method_names():
        opts = {k: v for k, v in OPTIONS[name].items() if not (k == "n_factors" and name in ("one-shot", "mean-diff", "obprop"))}
        est = make_estimator(name, random_state=SEED, **opts)
        out[name] = _quiet(lambda est=est: est.fit(_delta(lm)))
    return out


def test_every_method_is_registered_once_with_an_estimator_of_the_one_contract() -> None:
    assert set(method_names()) == set(OPTIONS) and len(method_names()) == len(set(method_names()))
    for name in method_names():
        cls = estimator_class(name)
        assert issubclass(cls, FitEstimator), name
        est = get_method(name).make(random_state=3, R=2.0)
        assert est.random_state == 3 and est.R == 2.0 and not hasattr(est, "result_")
        # an option the estimator lacks is refused, naming it and the options it takes (its signature)
        with pytest.raises(ValueError, match=f"method '{name}' takes no option 'unknown_option'; its options: ") as exc:
            get_method(name).make(random_state=3, unknown_option=1)
        taken = str(exc.value).split("its options: ")[1].split(", ")
        assert set(taken) == set(inspect.signature(cls).parameters) - set(get_method(name).fixed)
    with pytest.raises(ValueError, match="choose one of"):
        get_method("cubic")


@pytest.mark.parametrize("name", list(OPTIONS))
def test_fitted_attributes_are_the_same_for_every_method(fitted: dict[str, Any], name: str) -> None:
    est, spec = fitted[name], REGISTRY[name]
    res = est.result_
    assert res.method == name
    assert (est.U_ is None) == (not spec.has_targets)
    m = est.V_.shape[1]
    assert est.V_.shape == (32, m) and est.alpha_.shape == (m,)
    torch.testing.assert_close(est.V_.norm(dim=0), torch.ones(m))
    assert est.R_ > 0 and est.calibration_ is not None
    assert isinstance(est.history_, list) and isinstance(est.scores_, list)
    assert est.scores_ == [] or len(est.scores_) == m
    if spec.iterative:
        assert len(est.history_) == est.n_iter_ == 2
    elif name not in ("melbo-v1", "one-shot"):
        assert est.history_ == [] and est.n_iter_ == 0 and est.converged_
    assert isinstance(est.converged_, bool)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_registry_round_trip_through_features_on_disk(fitted: dict[str, Any], name: str, tmp_path: Path) -> None:
    est = fitted[name]
    feats = est.to_features(prompts=PROMPTS, positions=3)
    assert feats.method == name and (feats.source_layer, feats.target_layer) == (S, T)
    feats.save(tmp_path / name)
    back = Features.load(tmp_path / name)
    assert back.method == name and back.V.shape == est.V_.shape and back.alpha.shape == est.alpha_.shape
    assert torch.equal(back.V, est.V_.cpu()) and back.R == est.R_
    assert (back.U is None) == (not REGISTRY[name].has_targets)
    if back.U is not None:
        assert torch.equal(back.U, est.U_.cpu())
    else:
        with pytest.raises(ValueError, match="learns none"):
            back.require_targets("ablating targets")
    assert back.history == est.history_ and back.scores == pytest.approx(est.scores_)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_same_seed_gives_bit_identical_factors_through_api_train_and_bench(
    fitted: dict[str, Any], lm: tuple[Any, Any], name: str
) -> None:
    model, tok = lm
    opts = dict(OPTIONS[name])
    contrast = opts.pop("contrast_prompts", None)
    base = opts.pop("base_model", None)
    m = opts.pop("n_factors")
    tau = opts.pop("max_iter", None)
    cfg = TrainConfig(source_layer=S, target_layer=T, method=name, n_factors=m, max_iter=tau, random_state=SEED, **opts)
    via_train = _quiet(lambda: train(model, tok, PROMPTS, cfg, contrast_prompts=contrast, base_model=base))
    spec = get_method(name)
    via_bench, _ = _quiet(lambda: _case.fit(
        model, tok, PROMPTS, method=name, m=m, iters=tau if spec.iterative else 10, s=S, t=T, lam=0.5, R=None,
        seed=SEED, steps=None if spec.iterative else tau, contrast_prompts=contrast, base_model=base, **opts,
    ))
    est = fitted[name]
    for feats in (via_train, via_bench):
        assert feats.method == name and feats.R == est.R_
        assert torch.equal(feats.V, est.V_) and torch.equal(feats.alpha, est.alpha_)
        assert (feats.U is None and est.U_ is None) or torch.equal(feats.U, est.U_)
        assert feats.history == est.history_


def _write_format_1(path: Path, method: str, U: torch.Tensor, V: torch.Tensor, objective: list[float]) -> None:
    path.mkdir()
    save_file({"U": U, "V": V, "alpha": torch.ones(V.shape[1])}, str(path / TENSORS_FILE))
    cfg = {"R": 2.0, "method": method, "source_layer": 1, "target_layer": 3, "positions": 3, "objective": objective,
           "prompts_hash": "", "model": {}, "extra": {}, "melbo_version": "0.1.0", "format_version": 1}
    (path / CONFIG_FILE).write_text(json.dumps(cfg))


def test_format_1_directories_still_load_with_one_meaning_per_field(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(8, 2, generator=g), dim=0)
    U = torch.nn.functional.normalize(torch.randn(8, 2, generator=g), dim=0)
    _write_format_1(tmp_path / "exp", "exponential", U, V, [1.0, 2.0, 3.0])
    _write_format_1(tmp_path / "v1", "melbo-v1", U, V, [5.0, 4.0])
    _write_format_1(tmp_path / "os", "one-shot", V[:, :1].clone(), V[:, :1].clone(), [-3.0, -2.0, -1.5])
    exp, v1, os_ = (Features.load(tmp_path / n) for n in ("exp", "v1", "os"))
    assert exp.history == [1.0, 2.0, 3.0] and exp.scores == [] and torch.equal(exp.U, U)  # type: ignore[arg-type]
    with pytest.deprecated_call(match="use Features.history"):
        assert exp.objective == exp.history  # the old name reads the training curve, with a warning
    assert v1.history == [] and v1.scores == [5.0, 4.0] and torch.equal(v1.U, U)  # type: ignore[arg-type]
    assert os_.U is None and torch.equal(os_.V, V[:, :1]) and os_.history == [-3.0, -2.0, -1.5]
    os_.save(tmp_path / "os2")
    assert Features.load(tmp_path / "os2").U is None


def test_estimator_contract_errors_are_clear(lm: tuple[Any, Any]) -> None:
    from melbo.maps.synthetic import SyntheticMap

    synth = SyntheticMap.planted(8, 2, seed=0).delta
    for name in ("melbo-v1", "one-shot", "mean-diff"):
        with pytest.raises(TypeError, match="TransformerCausalMap"):
            make_estimator(name, R=1.0).fit(synth)
    est = make_estimator("random", n_factors=2, R=1.0, random_state=0)
    with pytest.raises(AttributeError, match="not fitted"):
        est.to_features()
    est.fit(synth)
    with pytest.raises(ValueError, match="source_layer"):
        est.to_features()
    assert est.to_features(source_layer=0, target_layer=1).method == "random"
    model, tok = lm
    from melbo.prompts import build_prompts

    batch_map = TransformerCausalMap(model, build_prompts(tok, PROMPTS, chat=False), S, T)
    with pytest.raises(ValueError, match="prompt text and tokenizer"):
        make_estimator("one-shot", completion="Sure", R=1.0, max_iter=1).fit(batch_map)


def test_a_calibrated_fit_draws_the_factors_of_a_fit_given_that_R(lm: tuple[Any, Any]) -> None:
    """An int seed seeds calibration and fit apart: calibrating first changes R, not the draws."""
    from melbo.fit import ExponentialDCT

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cal = ExponentialDCT(n_factors=4, max_iter=2, random_state=3).fit(_delta(lm))
        given = ExponentialDCT(n_factors=4, max_iter=2, random_state=3, R=cal.R_).fit(_delta(lm))
    assert cal.calibration_ is not None and given.calibration_ is None
    assert torch.equal(cal.V_, given.V_) and torch.equal(cal.U_, given.U_)
