"""Calling transformers, offline: a tokenizer and a causal LM from a resolved
:class:`~melbo.models.source.ModelSource`, GGUF files dequantised to plain dense models.

Every call passes ``local_files_only=True``; what transformers cannot read becomes a
:class:`~melbo.models.errors.ModelLoadError` that says why.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from melbo.models.errors import ModelLoadError
from melbo.models.source import ModelSource

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["forget_gguf_quantizer", "load_causal_lm", "load_tokenizer", "require_gguf_support"]

# Exceptions transformers raises for a checkpoint it cannot read (as opposed to bugs).
_LOAD_ERRORS = (OSError, ValueError, KeyError, ImportError)


def _common_kwargs(source: ModelSource, trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    if source.gguf_file is not None:
        kwargs["gguf_file"] = source.gguf_file
    return kwargs


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """The tokenizer saved with ``source`` (or read from its GGUF)."""
    from transformers import AutoTokenizer

    if source.gguf_file is not None:
        require_gguf_support()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location, **_common_kwargs(source, trust_remote_code)
        )
    except _LOAD_ERRORS as error:
        raise ModelLoadError(
            f"could not load the tokenizer of {source.description}: {_describe(error)}"
        ) from None
    return tokenizer


def load_causal_lm(
    source: ModelSource,
    *,
    dtype: torch.dtype | None,
    trust_remote_code: bool,
    attn_implementation: str | None,
    device_map: str | dict[str, Any] | None = None,
) -> PreTrainedModel:
    """The causal LM of ``source``; ``dtype=None`` keeps the checkpoint's dtype."""
    from transformers import AutoModelForCausalLM

    kwargs = _common_kwargs(source, trust_remote_code)
    # with peft installed, transformers looks for an adapter_config.json beside the model, on the
    # Hub too: its auto class does not pass local_files_only on to that lookup (transformers 5.x)
    kwargs["adapter_kwargs"] = {"local_files_only": True}
    # None keeps the checkpoint's own dtype ("auto"); without it transformers < 5 would
    # load everything in float32.
    kwargs["dtype"] = dtype if dtype is not None else "auto"
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    # With peft installed, transformers looks for an adapter_config.json of a hub id through
    # its own call, which does not inherit local_files_only: offline there too.
    kwargs["adapter_kwargs"] = {"local_files_only": True}
    import torch

    if dtype == torch.float64 and _has_experts_implementations():
        # Mixture-of-experts models default to the grouped_mm experts kernel, which has no
        # float64 kernel: their forward pass would fail. The per-expert loop computes the same.
        kwargs["experts_implementation"] = "eager"
    if device_map is not None:
        kwargs["device_map"] = device_map
    if source.gguf_file is not None:
        require_gguf_support()
        gguf_config = _dequantizing_gguf_config()
        if gguf_config is not None:
            kwargs["quantization_config"] = gguf_config
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except _LOAD_ERRORS as error:
        raise ModelLoadError(f"could not load {source.description}: {_describe(error)}") from None
    except SafetensorError as error:
        raise ModelLoadError(_broken_weights(source, error)) from None
    return model


def _broken_weights(source: ModelSource, error: BaseException) -> str:
    """One line for a truncated or corrupt ``*.safetensors``: which file, and how to get a good one."""
    files = sorted(Path(source.location).glob("*.safetensors")) if source.kind == "dir" else []
    named = ", ".join(str(f) for f in files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")
    fix = (f"delete {source.location} to have melbo re-convert it" if source.description.startswith("packaged model")
           else "re-download or re-convert the model (or save it again with save_pretrained)")
    return (f"could not load {source.description}: its weights {named or 'file'} are truncated or corrupt "
            f"({error}); {fix}")


def _has_experts_implementations() -> bool:
    """Whether this transformers chooses an experts kernel per model (transformers ≥ 5)."""
    from transformers import PreTrainedModel

    return hasattr(PreTrainedModel, "get_correct_experts_implementation")


def _describe(error: BaseException) -> str:
    message = str(error).strip() or "(no message)"
    return f"{type(error).__name__}: {message}"


def require_gguf_support() -> None:
    """Raise :class:`ImportError` (naming the ``pip install``) unless ``gguf`` and
    ``accelerate`` are installed."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"loading a GGUF file needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'melbo[gguf]'"
        )


def _dequantizing_gguf_config() -> Any:
    """A ``GgufConfig(dequantize=True)`` where transformers has one (>= 5.x), else ``None``.

    Recent transformers can keep GGUF weights packed in their quantised blocks when the
    ``kernels`` package is installed; melbo differentiates through the model and needs plain
    dense weights, so it always asks for the dequantised model.
    """
    try:
        from transformers import GgufConfig  # type: ignore[attr-defined]
    except ImportError:
        return None
    return GgufConfig(dequantize=True)


def forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """Make a model dequantised from GGUF a plain model again.

    transformers attaches its GGUF "quantizer" even when it dequantised every weight; the
    model then refuses ``save_pretrained`` and reports ``is_quantized``. The weights are
    ordinary dense tensors, so dropping the attachment is safe (melbo created this model).
    """
    if getattr(model, "hf_quantizer", None) is not None:
        setattr(model, "hf_quantizer", None)  # noqa: B010 (nn.Module attribute typing)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config
