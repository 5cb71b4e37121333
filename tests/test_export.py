"""melbo export: the llama.cpp control-vector GGUF (round trip, layer convention, bad input)
and the ``melbo export`` command."""

from __future__ import annotations

import json
import re
import sys
import types
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from melbo import cli
from melbo.export import FORMATS, export_features, format_names, get_format
from melbo.features import Features
from melbo.fit.result import FitResult
from melbo.models.access import get_layer_access

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf extra")

from melbo.export.gguf import (  # noqa: E402
    GGUF_API,
    GGUF_MIN_VERSION,
    export_gguf,
    llama_cpp_layer,
    missing_gguf_api,
    read_control_vector,
    write_control_vector,
)


def _features(source_layer: int = 3, d: int = 32, m: int = 6, seed: int = 0, **kw: Any) -> Features:
    g = torch.Generator().manual_seed(seed)
    V = torch.nn.functional.normalize(torch.randn(d, m, generator=g), dim=0)
    args: dict[str, Any] = dict(U=None, V=V, alpha=torch.rand(m, generator=g), R=2.75, method="mean-diff",
                                source_layer=source_layer, target_layer=source_layer + 1,
                                model={"name": "org/tiny", "family": "llama", "weights_sha256": "w"})
    args.update(kw)
    return Features(**args)


def _gguf_fields(path: Path) -> tuple[dict[str, Any], list[Any]]:
    """Read a GGUF with gguf's own reader only (independent of melbo's reader)."""
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items()}, list(r.tensors)


# ------------------------------------------------------------------ format and round trip


def test_gguf_holds_C_R_sum_v_at_direction_s_minus_1_with_control_vector_metadata(tmp_path: Path) -> None:
    f = _features(source_layer=3)
    out = export_features(f, tmp_path / "cv.gguf", format="gguf", indices=[1, 4], scale=1.5)
    fields, tensors = _gguf_fields(out)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == 1
    assert [t.name for t in tensors] == ["direction.2"]
    assert tensors[0].tensor_type == gguf.GGMLQuantizationType.F32
    expected = (1.5 * 2.75 * (f.V[:, 1].double() + f.V[:, 4].double())).float().numpy()
    np.testing.assert_array_equal(np.asarray(tensors[0].data), expected)
    assert fields["melbo.features"] == [1, 4] and fields["melbo.scale"] == 1.5 and fields["melbo.R"] == 2.75
    assert fields["melbo.source_layer"] == 3
    # melbo's own reader agrees with gguf's
    cv = read_control_vector(out)
    assert list(cv.directions) == [2] and cv.n_embd == 32 and cv.model_hint == "llama"
    np.testing.assert_array_equal(cv.directions[2], expected)
    dense = cv.dense(n_layers=4).reshape(3, 32)  # llama.cpp's buffer: layer 1 first
    np.testing.assert_array_equal(dense[1], expected)
    assert not dense[0].any() and not dense[2].any()


def test_negative_index_means_the_same_feature_and_model_hint_can_be_given(tmp_path: Path) -> None:
    f = _features()
    a = read_control_vector(export_gguf(f, tmp_path / "a.gguf", indices=[-1]))
    b = read_control_vector(export_gguf(f, tmp_path / "b.gguf", indices=[5], model_hint="gemma3"))
    np.testing.assert_array_equal(a.directions[2], b.directions[2])
    assert a.metadata["melbo.features"] == [5] and b.model_hint == "gemma3"


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_direction_N_on_block_N_output_steers_exactly_as_melbo_at_layer_N_plus_1(family: str, tmp_path: Path) -> None:
    """llama.cpp's semantics (add direction.N to the output of block N), emulated with a forward
    hook, reproduce melbo's steering at source_layer s = N + 1 bit for bit in fp32."""
    model = tiny_model(family, seed=0)
    acc = get_layer_access(model)
    res = FitResult(U=None, V=torch.nn.functional.normalize(torch.randn(32, 3), dim=0), alpha=torch.ones(3),
                    R=3.0, method="mean-diff")
    f = Features.from_fit(res, source_layer=2, target_layer=3, model=model)
    cv = read_control_vector(export_gguf(f, tmp_path / "cv.gguf", indices=[0, 2], scale=1.25))
    ((n, direction),) = cv.directions.items()
    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(1))

    def add_to_output(module: Any, args: Any, output: Any) -> Any:
        vec = torch.from_numpy(direction).to(output[0].dtype if isinstance(output, tuple) else output.dtype)
        return (output[0] + vec, *output[1:]) if isinstance(output, tuple) else output + vec

    from melbo.steering.interventions import steering

    with torch.no_grad():
        plain = model(ids).logits
        handle = acc.layers[n].register_forward_hook(add_to_output)
        try:
            theirs = model(ids).logits
        finally:
            handle.remove()
        with steering(model, [(2, f.steering_vector(0)), (2, f.steering_vector(2))], scale=1.25):
            ours = model(ids).logits
    assert n == 1 and (theirs - plain).abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_llama_cpp_layer_is_s_minus_1_and_refuses_s_below_2() -> None:
    assert [llama_cpp_layer(s) for s in (2, 3, 17)] == [1, 2, 16]
    for s in (0, 1):
        with pytest.raises(ValueError, match=f"source_layer {s} cannot be exported.*direction.0.*--source-layer ≥ 2"):
            llama_cpp_layer(s)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("s", [0, 1])
def test_source_layer_0_and_1_are_refused_before_writing(s: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"source_layer {s} cannot be exported"):
        export_gguf(_features(source_layer=s), tmp_path / "cv.gguf", indices=[0])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"indices": [6]}, IndexError, r"feature index 6 is out of range for 6 features"),
        ({"indices": [-7]}, IndexError, r"feature index -7 is out of range"),
        ({"indices": []}, ValueError, r"need at least one feature index"),
        ({"indices": [2, 2]}, ValueError, r"feature indices repeat"),
        ({"indices": [0], "scale": float("nan")}, ValueError, r"scale nan: must be a finite number"),
        ({"indices": [0], "scale": float("inf")}, ValueError, r"scale inf: must be a finite number"),
        # refused as every command refuses a steering scale (melbo.errors.check_scale)
        ({"indices": [0], "scale": 1e30}, ValueError, r"scale 1e\+30: must be non-zero with \|scale\| ≤ 100"),
        ({"indices": [0], "scale": 0}, ValueError, r"scale 0: must be non-zero"),
        ({"indices": [0], "R": 1e40}, ValueError, r"not finite in float32"),
    ],
)
def test_bad_export_input_is_a_clear_error_and_writes_nothing(
    kwargs: dict[str, Any], err: type[Exception], match: str, tmp_path: Path
) -> None:
    R = kwargs.pop("R", 2.75)
    with pytest.raises(err, match=match):
        export_gguf(_features(R=R), tmp_path / "cv.gguf", **kwargs)
    assert not any(tmp_path.iterdir())


def test_force_replaces_only_an_earlier_export_never_a_users_file(tmp_path: Path) -> None:
    out = tmp_path / "cv.gguf"
    out.write_text("mine")
    for force in (False, True):  # not a control vector melbo wrote: never replaced
        with pytest.raises(FileExistsError, match="not written by melbo export"):
            export_gguf(_features(), out, indices=[0], force=force)
    assert out.read_text() == "mine"
    out.unlink()
    export_gguf(_features(), out, indices=[0])
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        export_gguf(_features(), out, indices=[1])
    assert read_control_vector(out).metadata["melbo.features"] == [0]
    export_gguf(_features(), out, indices=[1], force=True)  # melbo's own earlier export: replaced
    assert read_control_vector(out).metadata["melbo.features"] == [1]
    with pytest.raises(FileExistsError, match="is a directory"):
        export_gguf(_features(), tmp_path, indices=[0], force=True)


def test_write_control_vector_rejects_layer_0_non_finite_and_ragged_directions(tmp_path: Path) -> None:
    out = tmp_path / "cv.gguf"
    with pytest.raises(ValueError, match="int ≥ 1.*direction.0"):
        write_control_vector(out, {0: np.ones(4)}, model_hint="x")
    with pytest.raises(ValueError, match="direction.2 has 1 non-finite"):
        write_control_vector(out, {2: np.array([1.0, np.nan])}, model_hint="x")
    with pytest.raises(ValueError, match="one length n_embd"):
        write_control_vector(out, {1: np.ones(4), 2: np.ones(3)}, model_hint="x")
    assert not out.exists()


def test_reading_bad_files_names_the_file(tmp_path: Path) -> None:
    text = tmp_path / "not.gguf"
    text.write_text("hello, not a gguf")
    with pytest.raises(ValueError, match=f"{text}.*not a readable GGUF"):
        read_control_vector(text)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_control_vector(tmp_path / "missing.gguf")

    def raw_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> Path:
        w = gguf.GGUFWriter(str(path), arch)
        for name, arr in tensors.items():
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path

    other = raw_gguf(tmp_path / "llama.gguf", "llama", {"direction.1": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match=f"{other}.*'llama', not 'controlvector'"):
        read_control_vector(other)
    zero = raw_gguf(tmp_path / "zero.gguf", "controlvector", {"direction.0": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match=f"{zero}.*'direction.0' is not direction.N with N ≥ 1"):
        read_control_vector(zero)
    f16 = raw_gguf(tmp_path / "f16.gguf", "controlvector", {"direction.1": np.ones(4, np.float16)})
    with pytest.raises(ValueError, match=f"{f16}.*F16, llama.cpp needs F32"):
        read_control_vector(f16)


# ------------------------------------------------------------------ the gguf package: which versions work


def _version(text: str) -> tuple[int, ...]:
    parts = [int(x) for x in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def test_installed_gguf_has_every_name_the_code_uses_and_pyproject_requires_the_minimum() -> None:
    import melbo.export.gguf as module

    used = set(re.findall(r"\bgguf\.([A-Z]\w*)", Path(module.__file__).read_text()))
    assert used and used <= set(GGUF_API), f"gguf names used but not listed in GGUF_API: {used - set(GGUF_API)}"
    assert missing_gguf_api(gguf) == []
    assert _version(version("gguf")) >= _version(GGUF_MIN_VERSION)
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    bounds = re.findall(r'"gguf>=([0-9.]+)', pyproject)
    assert len(bounds) == 3 and {_version(b) for b in bounds} == {_version(GGUF_MIN_VERSION)}, bounds


def test_a_gguf_older_than_the_minimum_is_named_with_what_to_install(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """gguf 0.14's ReaderField has no contents() (checked against its wheel): a clear ImportError,
    not an AttributeError in the middle of reading."""
    path = export_gguf(_features(), tmp_path / "cv.gguf", indices=[0])

    class OldReaderField(tuple):  # type: ignore[type-arg]
        pass

    old = types.ModuleType("gguf")
    old.__dict__.update({name: getattr(gguf, name) for name in GGUF_API})
    old.ReaderField = OldReaderField  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gguf", old)
    assert missing_gguf_api(old) == ["ReaderField.contents"]
    with pytest.raises(ImportError, match=rf"lacks ReaderField\.contents.*pip install 'gguf>={GGUF_MIN_VERSION}'"):
        read_control_vector(path)


# ------------------------------------------------------------------ registry and command line


def test_registry_names_gguf_and_rejects_unknown_formats() -> None:
    assert "gguf" in format_names() and set(format_names()) == set(FORMATS)
    assert get_format("gguf").load_writer() is export_gguf
    with pytest.raises(ValueError, match="unknown export format 'onnx'; valid formats: .*gguf"):
        get_format("onnx")


def test_cli_export_writes_the_file_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _features(source_layer=4)
    f.save(tmp_path / "feats")
    out = tmp_path / "cv.gguf"
    argv = ["export", str(tmp_path / "feats"), "--feature", "0", "--feature", "3", "--scale", "2",
            "--format", "gguf", "-o", str(out)]
    assert cli.main(argv) == 0
    assert "direction" not in capsys.readouterr().err
    cv = read_control_vector(out)
    np.testing.assert_allclose(cv.directions[3], (2 * 2.75 * (f.V[:, 0] + f.V[:, 3])).numpy(), rtol=1e-6)
    before = out.read_bytes()
    with pytest.raises(SystemExit) as exc:
        cli.main(argv[:-4] + ["--scale", "3", "--format", "gguf", "-o", str(out)])
    assert exc.value.code == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert cli.main([*argv, "--force", "--scale", "3"]) == 0
    assert read_control_vector(out).metadata["melbo.scale"] == 3.0
    with pytest.raises(SystemExit):
        cli.main([*argv[:4], "--feature", "9", "--format", "gguf", "-o", str(tmp_path / "x.gguf")])
    assert "--feature 9" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
    json.loads((tmp_path / "feats" / "config.json").read_text())  # the features are untouched
