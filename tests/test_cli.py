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


def test_demo_prints_layer_map_and_delta_evaluation(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", str(tiny_dir), "--source-layer", "1", "--target-layer", "3"]) == 0
    out = capsys.readouterr().out
    assert "model.layers[0..3]" in out
    assert "E(R)" in out and out.count("\n  1 ") + out.count("\n  4 ") >= 1


def test_bad_layer_is_a_one_line_error(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--model", str(tiny_dir), "--source-layer", "3", "--target-layer", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "target_layer=2" in err and "Traceback" not in err


def test_missing_gguf_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--model", str(tmp_path / "nope.gguf")])
    assert "nope.gguf" in capsys.readouterr().err
