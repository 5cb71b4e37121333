"""melbo train / inspect / rank / steer on a tiny model saved to disk."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model

from melbo.cli import main
from melbo.features import Features
from melbo.jobs.train import CHECKPOINT, TrainConfig, train
from melbo.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    tok = tiny_tokenizer(with_chat_template=True)
    model = tiny_model("llama", vocab=len(tok))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "prompts.txt").write_text("hello there\nwrite a poem about cats\nhow do I make tea\n")
    return root / "model", root / "prompts.txt"


def _train_args(model: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--prompts", str(prompts), "--source-layer", "1", "--target-layer", "3",
            "--factors", "6", "--iters", "4", "--out", str(out), "--no-progress", *extra]


def test_train_writes_features_and_refuses_to_overwrite(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, prompts = tiny
    out = tmp_path / "run"
    assert main(_train_args(model, prompts, out)) == 0
    feats = Features.load(out)
    assert feats.n_factors == 6 and feats.method == "exponential" and len(feats.history) == 4
    assert not (out / CHECKPOINT).exists()
    before = (out / "features.safetensors").read_bytes()
    with pytest.raises(SystemExit):
        main(_train_args(model, prompts, out))
    assert "holds an earlier melbo train run; pass --force" in capsys.readouterr().err
    assert (out / "features.safetensors").read_bytes() == before
    assert main(_train_args(model, prompts, out, "--force", "--seed", "1")) == 0
    assert (out / "features.safetensors").read_bytes() != before


def test_same_seed_gives_identical_features(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, prompts = tiny
    for name in ("a", "b"):
        assert main(_train_args(model, prompts, tmp_path / name)) == 0
    a, b = Features.load(tmp_path / "a"), Features.load(tmp_path / "b")
    assert torch.equal(a.V, b.V) and torch.equal(a.U, b.U) and a.R == b.R


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from melbo.models.loading import load_model

    model_dir, prompts_file = tiny
    model, tok = load_model(model_dir)
    prompts = prompts_file.read_text().split("\n")[:3]
    cfg = TrainConfig(source_layer=1, target_layer=3, n_factors=6, max_iter=4, chat=True)
    full = train(model, tok, prompts, cfg)

    def stop_at_2(it: int, obj: float) -> None:
        if it == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, prompts, cfg, out, on_iteration=stop_at_2)
    state = json.loads((out / CHECKPOINT / "state.json").read_text())
    assert state["iteration"] == 2 and len(state["history"]) == 2
    resumed = train(model, tok, prompts, cfg, out, resume=True)
    torch.testing.assert_close(resumed.V, full.V, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resumed.U, full.U, rtol=1e-5, atol=1e-6)
    assert resumed.history == pytest.approx(full.history, rel=1e-5)
    # every iteration counts, those before the resume too
    assert resumed.extra["n_iter"] == full.extra["n_iter"] == 4 and resumed.extra["resumed_at"] == 2
    assert Features.load(out).extra["n_iter"] == 4
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, prompts, cfg, tmp_path / "run2", on_iteration=stop_at_2)
    cfg2 = TrainConfig(source_layer=1, target_layer=3, n_factors=6, max_iter=4, chat=True, random_state=5)
    with pytest.raises(ValueError, match="different configuration"):
        train(model, tok, prompts, cfg2, tmp_path / "run2", resume=True)


@pytest.fixture(scope="module")
def tiny_loaded(tiny: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    from melbo.models.loading import load_model

    model, tok = load_model(tiny[0])
    return model, tok, tiny[1].read_text().split("\n")[:3]


def test_a_kill_between_the_checkpoints_two_writes_leaves_the_previous_checkpoint_whole(
    tiny_loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    import melbo.store.io

    model, tok, prompts = tiny_loaded
    cfg = TrainConfig(source_layer=1, target_layer=3, n_factors=6, max_iter=4, chat=True)
    full = train(model, tok, prompts, cfg)
    out = tmp_path / "run"
    real = melbo.store.io.atomic_write_text
    calls = {"n": 0}

    def die_on_the_third_manifest(path, text):  # type: ignore[no-untyped-def]
        if Path(path).name == "state.json":
            calls["n"] += 1
            if calls["n"] == 3:  # iteration 3's tensors are on disk, its state is not
                raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(melbo.store.io, "atomic_write_text", die_on_the_third_manifest)
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, prompts, cfg, out)
    monkeypatch.undo()
    state = json.loads((out / CHECKPOINT / "state.json").read_text())
    assert state["iteration"] == 2
    saved = load_file(str(out / CHECKPOINT / state["files"]["state.safetensors"]["file"]))
    full_2 = train(model, tok, prompts, TrainConfig(source_layer=1, target_layer=3, n_factors=6, max_iter=2, chat=True))
    torch.testing.assert_close(saved["V"], full_2.V, rtol=1e-5, atol=1e-6)  # iteration 2's tensors, not 3's
    resumed = train(model, tok, prompts, cfg, out, resume=True)
    torch.testing.assert_close(resumed.V, full.V, rtol=1e-5, atol=1e-6)
    assert resumed.extra["n_iter"] == 4 and not (out / CHECKPOINT).exists()


def test_a_checkpoint_whose_files_do_not_belong_together_is_refused(tiny_loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok, prompts = tiny_loaded
    cfg = TrainConfig(source_layer=1, target_layer=3, n_factors=6, max_iter=4, chat=True)

    def stop_at_2(it: int, obj: float) -> None:
        if it == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, prompts, cfg, out, on_iteration=stop_at_2)
    state = json.loads((out / CHECKPOINT / "state.json").read_text())
    tensors = out / CHECKPOINT / state["files"]["state.safetensors"]["file"]
    data = load_file(str(tensors))
    save_file({"U": data["U"], "V": -data["V"]}, str(tensors))  # tampered: not the pair the manifest proves
    with pytest.raises(ValueError, match=r"does not match its sha256 in .*state.json"):
        train(model, tok, prompts, cfg, out, resume=True)


def test_an_interrupted_features_save_is_refused_not_mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import melbo.features.format

    old = Features(U=torch.randn(8, 3), V=torch.randn(8, 3), alpha=torch.ones(3), R=2.0, method="exponential",
                   source_layer=1, target_layer=3)
    old.save(tmp_path)
    new = Features(U=torch.randn(8, 3), V=torch.randn(8, 3), alpha=torch.ones(3), R=5.0, method="exponential",
                   source_layer=1, target_layer=3)

    def killed(path, text):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # the kill lands after the tensors, before config.json

    monkeypatch.setattr(melbo.features.format, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="features.safetensors does not match .*config.json"):
        Features.load(tmp_path)


def test_train_force_makes_an_earlier_analysis_stale_and_report_refuses_it(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from melbo.evaluate.analysis import Analysis

    model, prompts = tiny
    out = tmp_path / "run"
    assert main(_train_args(model, prompts, out)) == 0
    feats = Features.load(out)
    analysis = Analysis(config={"threshold": 5.0, "features_fingerprint": feats.fingerprint()}, unsteered=0.0,
                        feature_scores=[0.0] * 6, ranking=list(range(6)), selected=[0], set_rule="top_k", n_above=0)
    analysis.save(out / "analysis.json")
    assert main(["report", str(out), "-o", str(tmp_path / "a.html")]) == 0  # its own analysis: used
    assert main(_train_args(model, prompts, out, "--force", "--seed", "1")) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["report", str(out), "-o", str(tmp_path / "b.html")])
    err = capsys.readouterr().err
    assert "analysis.json was computed from other features" in err and "melbo analyze" in err
    assert not (tmp_path / "b.html").exists()


def test_inspect_rank_and_steer(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, prompts = tiny
    out = tmp_path / "run"
    assert main(_train_args(model, prompts, out, "--R", "4.0")) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_factors"] == 6 and info["R"] == 4.0
    assert main(["rank", str(out), "--by", "readout", "--model", str(model), "--prompts", str(prompts),
                 "--token-a", "a", "--token-b", "b", "--out", str(tmp_path / "rank.json")]) == 0
    ranking = json.loads((tmp_path / "rank.json").read_text())
    assert sorted(r["feature"] for r in ranking) == list(range(6))
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)
    capsys.readouterr()
    assert main(["steer", str(out), "--model", str(model), "--feature", "0", "--prompt", "hello there",
                 "--scale", "50", "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr().out
    assert "--- unsteered:" in text and "--- feature 0" in text


@pytest.mark.parametrize(("flag", "value", "match"), [("--factors", "0", "--factors: '0': must be an integer ≥ 1"), ("--method", "cubic", "invalid choice"), ("--R", "-1", "--R: '-1': must be > 0")])
def test_bad_train_arguments_are_clear_errors(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, match: str) -> None:
    model, prompts = tiny
    args = _train_args(model, prompts, tmp_path / "x")
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    with pytest.raises(SystemExit):
        main(args)
    assert match in capsys.readouterr().err


def test_anneal_reaches_the_fit_and_is_refused_where_it_means_nothing(tiny: tuple[Path, Path], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from melbo.fit.exponential import exponential_dct
    from melbo.maps.transformer import TransformerCausalMap
    from melbo.models.loading import load_model

    model, prompts = tiny
    extra = ("--R", "0.5", "--beta", "0.5", "--ortho", "polar", "--chat", "no")
    assert main(_train_args(model, prompts, tmp_path / "a", *extra, "--anneal", "2", "--anneal-after", "0")) == 0
    feats = Features.load(tmp_path / "a")
    # the same fit through the function: β_k = 0.5/(1 + k/2)
    m, tok = load_model(str(model))
    delta = TransformerCausalMap(m, prompts.read_text().splitlines(), 1, 3, tokenizer=tok, chat=False)
    ref = exponential_dct(delta, 6, R=0.5, max_iter=4, beta=0.5, ortho="polar", anneal=2.0, anneal_after=0, random_state=0)
    torch.testing.assert_close(feats.V, ref.V, rtol=1e-5, atol=1e-6)
    assert main(_train_args(model, prompts, tmp_path / "b", *extra, "--anneal", "none")) == 0
    assert not torch.allclose(Features.load(tmp_path / "b").V, feats.V)  # fixed β differs
    for bad, match in ((["--anneal", "0"], "--anneal"), (["--method", "quadratic", "--anneal", "2"], "anneal")):
        with pytest.raises(SystemExit):
            main(_train_args(model, prompts, tmp_path / "c", "--R", "0.5", *bad))
        assert match in capsys.readouterr().err


def test_the_step_is_an_option_of_every_ogi_method_only() -> None:
    for method in ("exponential", "contrastive", "model-diff"):
        TrainConfig(source_layer=1, target_layer=3, method=method, ortho="polar", beta=0.5).validate()
        TrainConfig(source_layer=1, target_layer=3, method=method, ortho="qr", anneal=None).validate()
    with pytest.raises(ValueError, match="beta/ortho/anneal/anneal_after are the OGI step of methods"):
        TrainConfig(source_layer=1, target_layer=3, method="quadratic", ortho="qr").validate()
    with pytest.raises(ValueError, match="sequential/orient are options of method 'exponential'"):
        TrainConfig(source_layer=1, target_layer=3, method="model-diff", orient=True).validate()
