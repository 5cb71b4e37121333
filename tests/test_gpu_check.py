"""The GPU check's CPU dry run: the script that is run on a lent device must not rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_writes_a_passing_report(tmp_path: Path) -> None:
    gc = _load()
    out = tmp_path / "gpu_check.json"
    rc = gc.main(["--dry-run", "--out", str(out)])  # type: ignore[attr-defined]
    rep = json.loads(out.read_text())
    assert rc == 0 and rep["passed"], rep
    (fam,) = rep["correctness"]
    # fp32 against an fp64 copy of the same weights: rounding only
    for key in ("value", "vjp", "jvp0", "hvv0", "uhv0"):
        assert 0 <= fam[key] < 1e-5, (key, fam[key])
    assert fam["slice_y_vs_hidden_states"] < 1e-6 and fam["delta_vs_hooked_forward"] < 1e-5
    assert 0 < fam["bf16_model_value"] < 0.1  # bf16 rounding is visible, and small
    job = rep["job"]["result"]
    assert job["melbo"]["objective"] and job["agreement"]["first_iter_V_rel_diff"] < 0.5
    assert set(rep["targets"]["met"]) == {"total_seconds", "ratio_vs_vmap", "peak_fraction"}


def test_refuses_without_a_device_unless_dry(monkeypatch: pytest.MonkeyPatch) -> None:
    gc = _load()
    monkeypatch.setattr(gc.torch.cuda, "is_available", lambda: False)  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        gc.main([])  # type: ignore[attr-defined]
