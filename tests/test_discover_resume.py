"""``discover --resume`` after an interruption in every stage (claiming the directory, fitting,
saving the features, generating, ranking, writing the report) finishes with the result of an
uninterrupted run: the same features, completions and ranking, and the same files.

The interruptions are raised in this process at each stage's commit points (what a kill there
leaves on disk: every file melbo writes is replaced atomically); one run is SIGKILLed for real
in a subprocess, which also leaves a writer's temporary file behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from melbo.jobs.discover import DiscoverConfig, Discovery, discover

pytestmark = pytest.mark.filterwarnings("ignore:OGI did not converge")  # three iterations, on purpose

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"Tell me about {s}." for s in ("rivers", "owls", "bread", "clocks", "maps", "tea")]
# three iterations with a damping schedule from the first (a resume must continue the schedule,
# not restart it), two scales, random vectors and the semantic shifts: every stage has work
SETTINGS: dict[str, Any] = {"source_layer": 1, "target_layer": 3, "n_factors": 4, "max_iter": 3, "n_train": 3,
                            "n_eval": 3, "scales": (1.0, 2.0), "max_new_tokens": 4, "n_random": 2, "R": 8.0,
                            "chat": True, "anneal": 2.0, "anneal_after": 0}


class Killed(BaseException):
    """The interruption: like a kill, nothing catches it."""


def _run(model: torch.nn.Module, tok: Any, out: Path, **kw: Any) -> Discovery:
    return discover(model, tok, PROMPTS, DiscoverConfig(**SETTINGS), out, **kw)


@pytest.fixture(scope="module")
def reference(llama: torch.nn.Module, tok: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Discovery, Path]:
    out = tmp_path_factory.mktemp("reference") / "run"
    return _run(llama, tok, out), out


def _record(out: Path) -> dict[str, Any]:
    rec = json.loads((out / "behaviours.json").read_text(encoding="utf-8"))
    rec.pop("seconds")
    return rec


def _assert_same(resumed: Discovery, out: Path, reference: tuple[Discovery, Path]) -> None:
    ref, ref_out = reference
    for name in ("U", "V", "alpha"):
        torch.testing.assert_close(getattr(resumed.features, name), getattr(ref.features, name), rtol=1e-5, atol=1e-6)
    assert resumed.features.R == ref.features.R and resumed.features.extra["n_iter"] == ref.features.extra["n_iter"] == 3
    assert resumed.unsteered == ref.unsteered and resumed.completions == ref.completions
    assert resumed.control_completions == ref.control_completions
    assert [asdict(b) for b in resumed.behaviours] == [asdict(b) for b in ref.behaviours]
    assert [g.to_json() for g in resumed.groups] == [g.to_json() for g in ref.groups]
    assert _record(out) == _record(ref_out)
    assert (out / "report.md").read_text(encoding="utf-8") == (ref_out / "report.md").read_text(encoding="utf-8")
    assert not (out / "features" / "checkpoint").exists()


def _after(module: Any, name: str, n: int = 1) -> Callable[[pytest.MonkeyPatch], None]:
    """Interrupt right after the ``n``-th call of ``module.name`` returns."""
    def patch(mp: pytest.MonkeyPatch) -> None:
        real, calls = getattr(module, name), [0]

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            calls[0] += 1
            if calls[0] == n:
                raise Killed(f"after {name} #{n}")
            return result

        mp.setattr(module, name, wrapper)
    return patch


def _before(module: Any, name: str, n: int = 1, *, file: str | None = None) -> Callable[[pytest.MonkeyPatch], None]:
    """Interrupt as the ``n``-th call of ``module.name`` (writing ``file``, if given) starts."""
    def patch(mp: pytest.MonkeyPatch) -> None:
        real, calls = getattr(module, name), [0]

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if file is None or Path(args[0]).name == file:
                calls[0] += 1
                if calls[0] == n:
                    raise Killed(f"before {name} #{n}")
            return real(*args, **kwargs)

        mp.setattr(module, name, wrapper)
    return patch


def _points() -> dict[str, Callable[[pytest.MonkeyPatch], None]]:
    import melbo.features.format
    import melbo.jobs.discover
    import melbo.jobs.train
    import melbo.store.io

    return {
        "claim: the directory is marked, nothing else": _after(melbo.jobs.discover, "claim_out_dir"),
        "fit: after the first iteration's checkpoint": _after(melbo.jobs.train, "_write_checkpoint"),
        "fit: the second checkpoint's tensors written, its manifest not": _before(
            melbo.store.io, "atomic_write_text", 2, file="state.json"),
        "fit: the features' tensors saved, their config not": _before(
            melbo.features.format, "atomic_write_text", file="config.json"),
        "fit: the features saved, the checkpoint not removed yet": _after(melbo.features.Features, "save"),
        "generate: the unsteered completions made, nothing saved": _before(melbo.jobs.discover, "generate_steered", 2),
        "generate: the first scale saved, the second running": _before(melbo.jobs.discover, "generate_steered", 3),
        "rank: ranking": _before(melbo.jobs.discover, "rank_completions"),
        "report: behaviours.json written, report.md not": _before(melbo.jobs.discover, "format_report"),
    }


@pytest.mark.parametrize("point", list(_points()))
def test_resume_after_an_interruption_gives_the_uninterrupted_result(
        point: str, llama: torch.nn.Module, tok: Any, reference: tuple[Discovery, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _points()[point](mp)
        with pytest.raises(Killed):
            _run(llama, tok, out)
    said: list[str] = []
    resumed = _run(llama, tok, out, resume=True, say=said.append)
    _assert_same(resumed, out, reference)
    if point.startswith(("generate: the first", "rank", "report")):  # done work is reused, not redone
        assert any("reusing" in s and "features" in s for s in said) and any("cached" in s for s in said), said
    if point.startswith(("rank", "report")):
        assert not any(s.startswith("generating") for s in said), said


# A discover run that SIGKILLs itself as it is about to commit the completions of its second
# scale: the temporary file of that write stays behind, as after a real kill.
KILLED_RUN = r"""
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from tiny_models import tiny_model
from melbo.testing import tiny_tokenizer
import test_discover_resume as t

real_replace, n = os.replace, [0]
def replace(src, dst):
    if Path(dst).name == "completions.json":
        n[0] += 1
        if n[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace
tok = tiny_tokenizer(with_chat_template=True)
t._run(tiny_model("llama", vocab=len(tok)), tok, Path(sys.argv[1]))
"""


def test_resume_after_a_real_kill_mid_generation(llama: torch.nn.Module, tok: Any, reference: tuple[Discovery, Path],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    left = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".completions.json."), sorted(os.listdir(out))
    said: list[str] = []
    resumed = _run(llama, tok, out, resume=True, say=said.append)
    _assert_same(resumed, out, reference)
    assert any("cached" in s for s in said) and sum(s.startswith("generating") for s in said) == 1, said


def test_a_save_cut_over_an_earlier_runs_features_is_fitted_again(
        llama: torch.nn.Module, tok: Any, reference: tuple[Discovery, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import melbo.features.format
    from melbo.features import Features

    out = tmp_path / "run"
    discover(llama, tok, PROMPTS, DiscoverConfig(**{**SETTINGS, "R": 4.0}), out)  # an earlier run, other settings
    with monkeypatch.context() as mp:  # resumed with new settings: fits again, and is cut between the save's files
        _before(melbo.features.format, "atomic_write_text", file="config.json")(mp)
        with pytest.raises(Killed):
            _run(llama, tok, out, resume=True)
    with pytest.raises(ValueError, match="does not match"):  # the new tensors beside the old config
        Features.load(out / "features")
    _assert_same(_run(llama, tok, out, resume=True), out, reference)


def test_completions_cut_short_or_of_another_shape_are_generated_again(
        llama: torch.nn.Module, tok: Any, reference: tuple[Discovery, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import melbo.jobs.discover

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _before(melbo.jobs.discover, "rank_completions")(mp)
        with pytest.raises(Killed):
            _run(llama, tok, out)
    path = out / "completions.json"
    cache = json.loads(path.read_text(encoding="utf-8"))
    cache["features@2"] = cache["features@2"][:3]  # a vector's row cut off
    cache["random@1"][0] = cache["random@1"][0][:2]  # a prompt's completion cut off
    path.write_text(json.dumps(cache), encoding="utf-8")
    said: list[str] = []
    _assert_same(_run(llama, tok, out, resume=True, say=said.append), out, reference)
    assert [s for s in said if s.startswith("generating")] == ["generating: 2 random vectors × 3 prompts at 1·R…",
                                                               "generating: 4 features vectors × 3 prompts at 2·R…"]
    path.write_text("5", encoding="utf-8")  # not a cache at all
    _assert_same(_run(llama, tok, out, resume=True), out, reference)
