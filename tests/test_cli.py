"""The command line, on a tiny model saved to disk (no network)."""

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
    return ["demo", "--model", str(tiny_dir), "--source-layer", "1", "--target-layer", "3", "--factors", "6",
            "--iters", "2", "--top-k", "2", "--max-new-tokens", "3", "--out", str(tmp_path / "feats"),
            "-o", str(tmp_path / "report.html"), "--no-progress", "--token-b", "I", *extra]


def test_demo_runs_end_to_end_and_leaves_a_report(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_demo(tiny_dir, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "model.layers[0..3]" in out and "E(R)" in out and "── feature" in out
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and 'name="generator" content="melbo' in html
    assert (tmp_path / "feats" / "features.safetensors").is_file()
    assert main(_demo(tiny_dir, tmp_path)) == 0  # a previous demo's outputs may be replaced


def test_demo_never_overwrites_a_users_files(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "report.html").write_text("<html>my own notes</html>")
    with pytest.raises(SystemExit):
        main(_demo(tiny_dir, tmp_path))
    assert "not a melbo report" in capsys.readouterr().err
    assert (tmp_path / "report.html").read_text() == "<html>my own notes</html>"


def test_bad_layer_is_a_one_line_error(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_demo(tiny_dir, tmp_path, "--source-layer", "3", "--target-layer", "2"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "target_layer=2" in err and "Traceback" not in err


def test_missing_gguf_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--model", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "o"), "-o", str(tmp_path / "r.html")])
    assert "nope.gguf" in capsys.readouterr().err
