"""Features: validation, save/load round trip, overwrite refusal, model fingerprints."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model

from melbo.features import (
    CONFIG_FILE,
    TENSORS_FILE,
    Features,
    ModelMismatchError,
    prompts_hash,
)
from melbo.models.fingerprint import model_fingerprint, same_model


def _features(d: int = 32, m: int = 6, seed: int = 0, **kw: Any) -> Features:
    g = torch.Generator().manual_seed(seed)
    U = torch.nn.functional.normalize(torch.randn(d, m, generator=g), dim=0)
    V = torch.nn.functional.normalize(torch.randn(d, m, generator=g), dim=0)
    args: dict[str, object] = dict(
        U=U,
        V=V,
        alpha=torch.rand(m, generator=g),
        R=4.25,
        method="exponential",
        source_layer=1,
        target_layer=3,
        positions=3,
        history=[1.0, 2.5, 3.125],
        prompts_hash=prompts_hash(["How do I bake a cake?", "Tell me a story."]),
        model={"name": "x", "config_sha256": "c", "weights_sha256": "w"},
        extra={"n_iter": 3, "converged": True, "seed": 0},
    )
    args.update(kw)
    return Features(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- validation


def test_valid_features_report_their_sizes() -> None:
    f = _features(d=32, m=6)
    assert (len(f), f.n_factors, f.d_model) == (6, 6, 32)
    assert torch.equal(f.steering_vector(2), 4.25 * f.V[:, 2])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"V": torch.zeros(32, 5)}, r"U \(32, 6\) and V \(32, 5\)"),
        ({"alpha": torch.zeros(5)}, r"alpha must have shape .* \(6,\), got \(5,\)"),
        ({"R": 0.0}, r"R must be a finite number > 0, got 0.0"),
        ({"R": float("nan")}, r"R must be a finite number > 0, got nan"),
        ({"source_layer": 3, "target_layer": 3}, r"source_layer=3, target_layer=3"),
        ({"alpha": torch.tensor([1.0, 2, float("inf"), 4, 5, 6])}, r"alpha\[2\] = inf"),
        ({"extra": {"x": object()}}, r"extra must be JSON-serialisable"),
        ({"method": ""}, r"method must be a non-empty str"),
    ],
)
def test_invalid_features_are_rejected_with_the_offending_value(
    change: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        _features(**change)


def test_integer_tensors_and_bool_layers_are_rejected() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        _features(U=torch.zeros(32, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="source_layer must be an int, got True"):
        _features(source_layer=True)


# ---------------------------------------------------------------------- I/O


def test_save_load_round_trips_bit_exactly_with_all_metadata(tmp_path: Path) -> None:
    f = _features(U=_features().U.to(torch.float64))  # dtypes are kept too
    f.save(tmp_path / "feat")
    g = Features.load(tmp_path / "feat")
    for name in ("U", "V", "alpha"):
        a, b = getattr(f, name), getattr(g, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for name in (
        "R", "method", "source_layer", "target_layer", "positions", "history", "scores",
        "prompts_hash", "model", "extra", "melbo_version",
    ):
        assert getattr(f, name) == getattr(g, name), name
    cfg = json.loads((tmp_path / "feat" / CONFIG_FILE).read_text())
    assert cfg["format_version"] == 2
    assert set(load_file(str(tmp_path / "feat" / TENSORS_FILE))) == {"U", "V", "alpha"}
    assert not [p for p in (tmp_path / "feat").iterdir() if p.name.startswith(".")]  # no temp files


def test_save_never_overwrites_silently(tmp_path: Path) -> None:
    _features(seed=0).save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match=TENSORS_FILE):
        _features(seed=1).save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / TENSORS_FILE).unlink()  # config.json alone also blocks
    with pytest.raises(FileExistsError, match=CONFIG_FILE):
        _features(seed=1).save(tmp_path)
    _features(seed=1).save(tmp_path, overwrite=True)
    assert torch.equal(Features.load(tmp_path).U, _features(seed=1).U)


def test_load_rejects_inconsistent_shapes_naming_them(tmp_path: Path) -> None:
    f = _features()
    f.save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    del cfg["tensors_sha256"]  # as written by an older melbo: nothing proves the pair, the shapes are checked
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    save_file({"U": f.U, "V": f.V[:, :4].contiguous(), "alpha": f.alpha}, str(tmp_path / TENSORS_FILE))
    with pytest.raises(ValueError, match=r"U \(32, 6\) and V \(32, 4\)"):
        Features.load(tmp_path)
    save_file({"U": f.U, "V": f.V, "alpha": f.alpha[:2].contiguous()}, str(tmp_path / TENSORS_FILE))
    with pytest.raises(ValueError, match=r"alpha must have shape .*\(6,\), got \(2,\)"):
        Features.load(tmp_path)
    save_file({"U": f.U, "V": f.V}, str(tmp_path / TENSORS_FILE))
    with pytest.raises(ValueError, match=r"lacks the tensors \['alpha'\]"):
        Features.load(tmp_path)


def test_load_rejects_missing_files_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=TENSORS_FILE):
        Features.load(tmp_path)
    _features().save(tmp_path)
    cfg_path = tmp_path / CONFIG_FILE
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ValueError, match=r"format_version=99.*upgrade melbo"):
        Features.load(tmp_path)
    cfg_path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "R"}))
    with pytest.raises(ValueError, match=r"lacks the keys \['R'\]"):
        Features.load(tmp_path)
    cfg_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json:1:2: invalid JSON"):
        Features.load(tmp_path)


def test_load_warns_on_a_different_major_version(tmp_path: Path) -> None:
    _features(melbo_version="999.0.0").save(tmp_path)
    with pytest.warns(UserWarning, match="melbo 999.0.0"):
        g = Features.load(tmp_path)
    assert g.melbo_version == "999.0.0"


# ---------------------------------------------------------------------- helpers


def test_subset_and_order_by_return_new_reordered_features() -> None:
    f = _features(m=6)
    s = f.subset([4, 0, -1])
    assert torch.equal(s.U, f.U[:, [4, 0, 5]]) and torch.equal(s.alpha, f.alpha[[4, 0, 5]])
    assert s.R == f.R and s.model == f.model and len(f) == 6
    o = f.order_by(f.alpha**2)
    assert torch.all(o.alpha[:-1] >= o.alpha[1:])
    assert torch.equal(f.order_by(f.alpha, descending=False).alpha, torch.sort(f.alpha).values)
    with pytest.raises(IndexError, match=r"\[6\] are out of range for 6 features"):
        f.subset([6])
    with pytest.raises(ValueError, match="one score per feature"):
        f.order_by([1.0, 2.0])


def test_prompts_hash_is_canonical() -> None:
    a = [[{"role": "user", "content": "hi"}], "plain"]
    b = [[{"content": "hi", "role": "user"}], "plain"]
    assert prompts_hash(a) == prompts_hash(b)
    assert prompts_hash(a) != prompts_hash(list(reversed(a)))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        prompts_hash([object()])


def test_from_fit_records_provenance() -> None:
    from melbo.fit.result import FitResult

    f0 = _features()
    res = FitResult(U=f0.U, V=f0.V, alpha=f0.alpha, R=2.0, method="quadratic",
                    history=[1.0, 2.0], n_iter=2, converged=True)
    model = tiny_model("llama", seed=0)
    f = Features.from_fit(res, source_layer=0, target_layer=2, model=model, prompts=["a"],
                          positions=3)
    assert f.extra == {"n_iter": 2, "converged": True} and f.prompts_hash == prompts_hash(["a"])
    f.check_model(model)


# ---------------------------------------------------------------------- fingerprints


def test_fingerprint_tells_models_apart_and_ignores_volatile_config() -> None:
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    a2: Any = tiny_model("llama", seed=0)
    a2.config._name_or_path = "/some/local/path"
    a2.config._attn_implementation = "sdpa"
    fa, fa2, fb = model_fingerprint(a), model_fingerprint(a2), model_fingerprint(b)
    assert json.loads(json.dumps(fa)) == fa
    assert same_model(fa, fa2)
    assert not same_model(fa, fb)
    assert fa["config_sha256"] == fb["config_sha256"] != model_fingerprint(tiny_model("gpt2"))["config_sha256"]
    assert same_model(fa, model_fingerprint(a.to(torch.bfloat16)))  # robust to fp32 -> bf16


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_check_model_detects_a_different_model_unless_forced(
    family: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tiny_model(family, seed=0), tiny_model(family, seed=1)
    _features(model=model_fingerprint(a)).save(tmp_path)
    f = Features.load(tmp_path)
    f.check_model(a)
    with pytest.raises(ModelMismatchError, match=r"(?s)features: .*model: .*force=True"):
        f.check_model(b)
    with caplog.at_level(logging.WARNING, logger="melbo.features"):
        f.check_model(b, force=True)
    assert "force=True" in caplog.text
    with pytest.raises(ModelMismatchError, match="no model fingerprint"):
        _features(model={}).check_model(a)
