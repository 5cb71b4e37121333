"""A method is one module and one registration: tests/toy_method.py's ``toy-axes``, registered
with one call, trains through the real ``melbo train`` with nothing else edited; and the
registry's estimators refuse options they do not take (:meth:`melbo.methods.MethodSpec.make`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import toy_method
from tiny_models import tiny_model

from melbo.cli import build_parser, main
from melbo.features import Features
from melbo.jobs.train import TrainConfig
from melbo.methods import (
    REGISTRY,
    MethodOption,
    MethodSpec,
    get_method,
    make_estimator,
    method_names,
    register,
    registered,
    unregister,
)
from melbo.testing import tiny_tokenizer


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    tok = tiny_tokenizer(with_chat_template=True)
    model = tiny_model("llama", vocab=len(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "p.txt").write_text("hello there\nwrite a poem about cats\nhow do I make tea\n")
    return tmp_path / "model", tmp_path / "p.txt"


def _train(model: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--prompts", str(prompts), "--source-layer", "1", "--target-layer", "3",
            "--no-progress", "--out", str(out), *extra]


def _flags() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {s for a in sub.choices["train"]._actions for s in a.option_strings}  # type: ignore[attr-defined]


def test_a_method_registered_in_one_call_trains_through_the_cli(tiny: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    model, prompts = tiny
    assert toy_method.NAME not in method_names() and "--toy-offset" not in _flags()
    with registered(toy_method.SPEC):
        assert "--toy-offset" in _flags()
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--help"])
        assert "toy-axes: the first standard basis vectors" in " ".join(capsys.readouterr().out.split())
        assert main(_train(model, prompts, tmp_path / "f", "--method", "toy-axes", "--factors", "3",
                           "--toy-offset", "5", "--R", "0.5")) == 0
        feats = Features.load(tmp_path / "f")
        # the ground truth: V is e_5, e_6, e_7 (the toy's definition), U and α read off the model
        assert feats.method == "toy-axes" and feats.V.shape == (32, 3) and feats.U is not None
        assert feats.U.shape == (32, 3) and feats.alpha.shape == (3,) and feats.R == 0.5
        torch.testing.assert_close(feats.V, torch.eye(32)[:, 5:8])
        assert feats.extra["toy_offset"] == 5 and feats.extra["fit"]["offset"] == 5
        # the default offset needs no flag; the option's value is checked as the flag is parsed
        assert main(_train(model, prompts, tmp_path / "g", "--method", "toy-axes", "--factors", "2", "--R", "0.5")) == 0
        torch.testing.assert_close(Features.load(tmp_path / "g").V, torch.eye(32)[:, :2])
        for bad, msg in ((["--method", "toy-axes", "--toy-offset", "-1"], "--toy-offset: '-1': must be an integer ≥ 0"),
                         (["--toy-offset", "2"], "offset is an option of method 'toy-axes', not 'exponential'"),
                         (["--method", "toy-axes", "--mu", "2"], "mu/penalty are options of methods contrastive, "
                                                                 "model-diff, not 'toy-axes'"),
                         (["--method", "toy-axes", "--factors", "33"], "fits at most the hidden size = 32")):
            with pytest.raises(SystemExit) as exc:
                main(_train(model, prompts, tmp_path / "bad", *bad))
            assert exc.value.code == 2 and msg in capsys.readouterr().err, bad
        assert not (tmp_path / "bad").exists()  # refused before anything was written
    # unregistered: gone from the registry and from the command line
    assert toy_method.NAME not in REGISTRY and "--toy-offset" not in _flags()
    with pytest.raises(SystemExit):
        main(_train(model, prompts, tmp_path / "h", "--method", "toy-axes"))
    assert "invalid choice: 'toy-axes'" in capsys.readouterr().err


def test_a_registered_options_values_live_in_method_options_and_are_recorded_only_when_set() -> None:
    with registered(toy_method.SPEC):
        cfg = TrainConfig(source_layer=1, target_layer=3, method="toy-axes", method_options={"offset": 2})
        cfg.validate()
        assert cfg.estimator_options() == {"R": None, "lam": 0.5, "random_state": 0, "n_factors": 256, "offset": 2}
        assert cfg.as_record()["method_options"] == {"offset": 2}
        with pytest.raises(ValueError, match="offset is an option of method 'toy-axes', not 'random'"):
            TrainConfig(source_layer=1, target_layer=3, method="random", method_options={"offset": 2}).validate()
        with pytest.raises(ValueError, match="'offst' is no method's option; method 'toy-axes' takes offset"):
            TrainConfig(source_layer=1, target_layer=3, method="toy-axes", method_options={"offst": 2}).validate()
        with pytest.raises(ValueError, match="'mu' is a field of TrainConfig: give mu=... instead"):
            TrainConfig(source_layer=1, target_layer=3, method="contrastive", method_options={"mu": 2.0}).validate()
        with pytest.raises(ValueError, match="offset -1: must be an integer ≥ 0"):
            TrainConfig(source_layer=1, target_layer=3, method="toy-axes", method_options={"offset": -1}).validate()
    # a configuration without method options records what it recorded before the field existed
    assert "method_options" not in TrainConfig(source_layer=1, target_layer=3).as_record()


def test_make_refuses_an_option_the_method_does_not_take_naming_those_it_does() -> None:
    with pytest.raises(ValueError, match=r"method 'exponential' takes no option 'n_factor'; its options: n_factors, ") as exc:
        make_estimator("exponential", n_factor=3)
    assert "max_iter" in str(exc.value) and "beta" in str(exc.value)
    # another method's option, and an argument the spec fixes itself
    with pytest.raises(ValueError, match="method 'random' takes no option 'mu'"):
        make_estimator("random", n_factors=2, mu=0.5)
    with pytest.raises(ValueError, match="method 'linear' takes no option 'method'"):
        get_method("linear").make(method="projected")
    assert make_estimator("random", n_factors=2, R=1.0).n_factors == 2


def test_the_registry_refuses_a_name_twice_and_an_option_name_with_two_meanings() -> None:
    with pytest.raises(ValueError, match="'random' is already registered"):
        register(get_method("random"))
    clash = MethodSpec("toy-clash", "toy_method:AxisVectors", "clash",
                       options=(MethodOption("mu", "another μ", default=0.0, type=float),))
    with pytest.raises(ValueError, match="option 'mu' differs from the one of methods contrastive, model-diff"):
        register(clash)
    assert "toy-clash" not in REGISTRY
    with registered(toy_method.SPEC):
        assert unregister(toy_method.NAME) is toy_method.SPEC  # the context manager tolerates an early unregister
    with pytest.raises(ValueError, match="choose one of"):
        unregister("toy-axes")


def test_capabilities_declared_in_the_spec_drive_trains_checks() -> None:
    import dataclasses

    import melbo.jobs.train as train_module
    from melbo.jobs.train import check_base_model, check_contrast_prompts, check_two_maps_differ

    spec = dataclasses.replace(toy_method.SPEC, name="toy-contrast", contrast=True, base_model=True)
    with registered(spec):
        assert train_module.CONTRAST_METHODS == ("mean-diff", "contrastive", "toy-contrast")
        with pytest.raises(ValueError, match="method 'toy-contrast' needs a contrast prompt set B"):
            check_contrast_prompts("toy-contrast", None)
        with pytest.raises(ValueError, match="only used by methods mean-diff, contrastive, toy-contrast, not 'random'"):
            check_contrast_prompts("random", ["b"])
        with pytest.raises(ValueError, match="method 'toy-contrast' needs the base model"):
            check_base_model("toy-contrast", False)
        with pytest.raises(ValueError, match="the two maps are equal"):
            check_two_maps_differ("toy-contrast", ["a", "b"], ["b", "a"])
        check_two_maps_differ("toy-contrast", ["a"], ["b"])
    assert "toy-contrast" not in train_module.CONTRAST_METHODS
    with pytest.raises(ValueError, match="the two maps are equal"):  # mean difference of one set with itself is zero
        check_two_maps_differ("mean-diff", ["a"], ["a"])
