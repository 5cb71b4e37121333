"""Features as a shareable artefact: the recorded hook site, save_pretrained /
from_pretrained from a directory and from a Hugging Face cache layout (offline, never the
network), and clear errors for bad files."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.features import CONFIG_FILE, TENSORS_FILE, Features, hook_site
from melbo.fit.result import FitResult
from melbo.models.access import get_layer_access
from melbo.steering.interventions import steer_features

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp_path, offline, named by HF_HOME / HF_HUB_CACHE."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))  # read at import time: point the module there too
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return cache


def _place_in_cache(cache: Path, repo_id: str, src: Path, subfolder: str = "") -> Path:
    """Lay out ``src``'s files as huggingface_hub does: blobs, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT / subfolder
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in src.iterdir():
        blob = repo / "blobs" / f"blob-{subfolder.replace('/', '-')}-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def _fitted(model: torch.nn.Module, source_layer: int = 2) -> Features:
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(32, 4, generator=g), dim=0)
    res = FitResult(U=V.flip(0), V=V, alpha=torch.rand(4, generator=g), R=2.5, method="exponential")
    return Features.from_fit(res, source_layer=source_layer, target_layer=3, model=model, prompts=["a", "b"])


def _same(a: Features, b: Features) -> None:
    assert torch.equal(a.V, b.V) and a.U is not None and b.U is not None and torch.equal(a.U, b.U)
    assert torch.equal(a.alpha, b.alpha) and a.to_config() == b.to_config()


# ------------------------------------------------------------------ hook site


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_recorded_hook_site_reproduces_melbo_steering_from_names_alone(family: str, tmp_path: Path) -> None:
    """Another tool reading only config.json's hook (module names, hidden_states index) adds the
    vector where melbo does: a pre-hook on `module`, a forward hook on `output_of`."""
    model = tiny_model(family, seed=0)
    feats = _fitted(model, source_layer=2)
    feats.save_pretrained(tmp_path / "f")
    hook = json.loads((tmp_path / "f" / CONFIG_FILE).read_text())["hook"]
    assert hook["layers_path_known"] and hook["hidden_states_index"] == 2
    assert hook["transformer_lens"] == "blocks.2.hook_resid_pre" and hook["llama_cpp_direction"] == 1
    vec = 0.75 * feats.R * feats.V[:, 1]
    ids = torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with steer_features(model, feats, 1, scale=0.75):
            ours = model(ids).logits
        h = model.get_submodule(hook["module"]).register_forward_pre_hook(
            lambda mod, args: (args[0] + vec, *args[1:]))
        try:
            pre = model(ids).logits
        finally:
            h.remove()

        def add_out(mod: Any, args: Any, out: Any) -> Any:
            return (out[0] + vec, *out[1:]) if isinstance(out, tuple) else out + vec

        h = model.get_submodule(hook["output_of"]).register_forward_hook(add_out)
        try:
            post = model(ids).logits
        finally:
            h.remove()
        plain = model(ids, output_hidden_states=True)
    assert (ours - plain.logits).abs().max() > 1e-3
    torch.testing.assert_close(pre, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(post, ours, rtol=1e-5, atol=1e-5)
    # hidden_states[s] is the stream entering the hooked module
    seen: list[torch.Tensor] = []
    h = model.get_submodule(hook["module"]).register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        h.remove()
    torch.testing.assert_close(seen[0], plain.hidden_states[hook["hidden_states_index"]], rtol=0, atol=0)
    assert get_layer_access(model).layers_path == hook["layers_path"]


def test_hook_site_without_a_fingerprint_assumes_model_layers_and_says_so() -> None:
    h = hook_site(0)
    assert h["module"] == "model.layers.0" and not h["layers_path_known"]
    assert h["output_of"] is None and h["llama_cpp_direction"] is None
    assert hook_site(5, "transformer.h")["output_of"] == "transformer.h.4"
    with pytest.raises(ValueError, match="source_layer must be ≥ 0, got -1"):
        hook_site(-1)


# ------------------------------------------------------------------ save_pretrained / from_pretrained


def test_save_pretrained_round_trips_and_writes_a_hub_model_card(tmp_path: Path) -> None:
    feats = _fitted(tiny_model("llama", seed=0))
    out = feats.save_pretrained(tmp_path / "f")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_FILE, TENSORS_FILE]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: melbo\n") and "blocks.2.hook_resid_pre" in card
    assert "`direction.1`" in card
    _same(Features.from_pretrained(out), feats)
    _same(Features.load(out), feats)  # one on-disk format
    with pytest.raises(FileExistsError, match="README.md already exists"):
        feats.save_pretrained(out)
    feats.save_pretrained(out, overwrite=True)


def test_save_pretrained_refuses_a_users_readme(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("mine")
    with pytest.raises(FileExistsError, match="README.md already exists"):
        _fitted(tiny_model("llama", seed=0)).save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "mine" and not (tmp_path / CONFIG_FILE).exists()


def test_from_pretrained_reads_a_repo_from_the_local_hub_cache_offline(tmp_path: Path, hub_cache: Path) -> None:
    feats = _fitted(tiny_model("llama", seed=0))
    feats.save_pretrained(tmp_path / "f")
    _place_in_cache(hub_cache, "melbo-test/features", tmp_path / "f")
    _place_in_cache(hub_cache, "melbo-test/features", tmp_path / "f", subfolder="layer2")
    _same(Features.from_pretrained("melbo-test/features"), feats)
    _same(Features.from_pretrained("melbo-test/features", subfolder="layer2"), feats)
    _same(Features.from_pretrained("melbo-test/features", revision=COMMIT), feats)
    # download=True under HF_HUB_OFFLINE still serves the cached copy, without the network
    _same(Features.from_pretrained("melbo-test/features", download=True), feats)


def test_from_pretrained_never_downloads_unless_asked(hub_cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config.json of 'melbo-test/absent' is not in the local "
                       r"Hugging Face cache .*pass download=True"):
        Features.from_pretrained("melbo-test/absent")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        Features.from_pretrained("melbo-test/absent", download=True)
    with pytest.raises(FileNotFoundError, match="not a directory and not a Hugging Face repository id"):
        Features.from_pretrained("./no/such/dir")


def test_bad_files_in_the_cache_give_errors_naming_the_file(tmp_path: Path, hub_cache: Path) -> None:
    _fitted(tiny_model("llama", seed=0)).save(tmp_path / "f")
    (tmp_path / "f" / TENSORS_FILE).write_bytes(b"not safetensors")
    snap = _place_in_cache(hub_cache, "melbo-test/broken", tmp_path / "f")
    with pytest.raises(ValueError, match=f"{snap / TENSORS_FILE}.* (not a readable safetensors|does not match)"):
        Features.from_pretrained("melbo-test/broken")


def test_a_hook_that_disagrees_with_source_layer_is_refused_naming_the_file(tmp_path: Path) -> None:
    _fitted(tiny_model("llama", seed=0)).save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    cfg["hook"]["layer"] = 5
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"{tmp_path / CONFIG_FILE}: hook .* does not agree with source_layer=2"):
        Features.load(tmp_path)


@pytest.mark.parametrize("history", ["123", {"1": 2}, [1, "2"], [True], 7])
def test_a_history_that_is_not_a_list_of_numbers_is_refused_naming_the_file(tmp_path: Path, history: object) -> None:
    """"history": "123" used to be read as [1.0, 2.0, 3.0]."""
    _fitted(tiny_model("llama", seed=0)).save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    cfg["history"] = history
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"{tmp_path}.*history must be a list of floats, got {re.escape(repr(history))}"):
        Features.from_pretrained(tmp_path)
    cfg["history"] = [3, 2.5]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    assert Features.from_pretrained(tmp_path).history == [3.0, 2.5]


def test_directories_written_before_the_hook_existed_still_load(tmp_path: Path) -> None:
    feats = _fitted(tiny_model("llama", seed=0))
    feats.save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    del cfg["hook"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    _same(Features.from_pretrained(tmp_path), feats)
