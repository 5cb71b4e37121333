"""A compiled slice keeps torch's compile caches in melbo's directory: a second process
loads the compiled forward and backward instead of compiling them again, and the user's own
``$TORCHINDUCTOR_CACHE_DIR`` is neither written to nor left changed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from melbo.store.compile_cache import (
    TORCH_CACHE_ENV_VAR,
    resolve_compile_cache,
    torch_compile_cache,
)

ROOT = Path(__file__).resolve().parents[1]

# One process: compile a one-layer slice of a tiny model with inductor, run Δ and its VJP
# (the forward graph on the first call, the backward graph lazily in autograd.grad), compare
# with eager, and report torch's cache counters and the user's variable afterwards.
SCRIPT = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
from torch._dynamo.utils import counters
from tiny_models import tiny_model
from melbo.maps.transformer import TransformerCausalMap
from melbo.prompts import PromptBatch, resolve_positions

model = tiny_model("llama", dtype=torch.float32, attn="sdpa")
g = torch.Generator().manual_seed(0)
ids = torch.randint(3, 96, (2, 7), generator=g)
batch = PromptBatch(ids, torch.ones_like(ids), resolve_positions(3, [7, 7], [0, 0]), ("a", "b"), "none")
V = torch.nn.functional.normalize(torch.randn(32, 3, generator=g), dim=0) * 2.0
U = torch.nn.functional.normalize(torch.randn(32, 3, generator=g), dim=0)
comp = TransformerCausalMap(model, batch, 1, 2, compile=True, compile_cache=sys.argv[1])
d1, g1 = comp.value_and_vjp(V, U)
d0, g0 = TransformerCausalMap(model, batch, 1, 2).value_and_vjp(V, U)
torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)
print(json.dumps({
    "inductor": dict(counters["inductor"]),
    "aot_autograd": dict(counters["aot_autograd"]),
    "env_after": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
}))
"""


def _run(cache: Path, user_dir: Path) -> dict:
    env = {**os.environ, TORCH_CACHE_ENV_VAR: str(user_dir),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_compiled_slice_from_melbos_cache(tmp_path: Path) -> None:
    cache, user_dir = tmp_path / "melbo-compile", tmp_path / "user-torch-cache"
    cold = _run(cache, user_dir)
    assert cold["inductor"].get("fxgraph_cache_miss", 0) == 2, cold  # forward and backward graphs
    assert cold["inductor"].get("fxgraph_cache_hit", 0) == 0, cold
    assert cold["aot_autograd"].get("autograd_cache_saved", 0) == 1, cold
    assert (cache / "fxgraph").is_dir() and (cache / "aotautograd").is_dir()
    warm = _run(cache, user_dir)
    assert warm["inductor"].get("fxgraph_cache_hit", 0) == 2, warm
    assert warm["inductor"].get("fxgraph_cache_miss", 0) == 0, warm
    assert warm["aot_autograd"].get("autograd_cache_hit", 0) == 1, warm
    assert warm["aot_autograd"].get("autograd_cache_miss", 0) == 0, warm
    # the user's setting is back after melbo's calls, and torch wrote nothing there
    assert cold["env_after"] == warm["env_after"] == str(user_dir)
    assert not any(user_dir.rglob("*")) if user_dir.exists() else True


def test_scope_restores_the_variable_also_on_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TORCH_CACHE_ENV_VAR, raising=False)
    with torch_compile_cache(tmp_path / "a"):
        assert os.environ[TORCH_CACHE_ENV_VAR] == str(tmp_path / "a")
    assert TORCH_CACHE_ENV_VAR not in os.environ
    monkeypatch.setenv(TORCH_CACHE_ENV_VAR, "/user/dir")
    with pytest.raises(RuntimeError), torch_compile_cache(tmp_path / "b"):
        raise RuntimeError("boom")
    assert os.environ[TORCH_CACHE_ENV_VAR] == "/user/dir"
    with torch_compile_cache(None):
        assert os.environ[TORCH_CACHE_ENV_VAR] == "/user/dir"


def test_resolve_compile_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MELBO_CACHE", str(tmp_path))
    assert resolve_compile_cache(True) == resolve_compile_cache(None) == tmp_path / "compile"
    assert resolve_compile_cache(False) is None
    assert resolve_compile_cache(str(tmp_path / "x")) == tmp_path / "x"
    with pytest.raises(ValueError, match="compile_cache=3"):
        resolve_compile_cache(3)  # type: ignore[arg-type]


def test_nothing_is_set_at_import() -> None:
    # torch._dynamo sets $TORCHINDUCTOR_CACHE_DIR when imported: melbo imports it only to compile
    code = ("import os, sys; os.environ.pop('TORCHINDUCTOR_CACHE_DIR', None); import melbo, melbo.maps.transformer, "
            "melbo.jobs.train, melbo.store.compile_cache; print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout.strip()
    assert out == "None False"
