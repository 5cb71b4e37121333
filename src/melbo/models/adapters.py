"""LoRA adapters through peft: the adapters melbo trains, and adapter directories loaded onto their base.

* :func:`lora_config` — rank-``r`` LoRA on every ``nn.Linear`` inside the decoder layers
  (a regular expression over their full names, so nothing outside the layers is adapted);
* :func:`attached_lora` — the adapters on a model for training, with ``A`` drawn from a seed
  and ``B = 0``; on exit the model's own modules are back and its parameters' ``requires_grad``
  flags restored (peft swaps the adapted ``nn.Linear`` modules while the block runs);
* :func:`adapter_state` / :func:`set_adapter_state` — the adapter tensors, keyed as peft saves them;
* :func:`save_adapter` — ``adapter_config.json`` + ``adapter_model.safetensors``, peft's own
  format, so ``PeftModel.from_pretrained(base, DIR)`` and ``AutoPeftModelForCausalLM`` load it;
* :func:`load_adapter_dir` — what :func:`melbo.load_model` does with such a directory: load the
  base, apply the adapter with ``PeftModel.from_pretrained`` and merge it in memory into a plain
  model (every melbo primitive finds its layers by name on a plain model).

peft is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from melbo.models.access import get_layer_access
from melbo.models.errors import ModelLoadError
from melbo.store.io import fsync_dir, fsync_tree

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "adapter_base",
    "adapter_state",
    "apply_adapter_dir",
    "attached_lora",
    "is_adapter_dir",
    "lora_config",
    "lora_target_names",
    "merge_lora_state",
    "save_adapter",
    "set_adapter_state",
]

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def lora_target_names(model: nn.Module) -> list[str]:
    """Full names of the ``nn.Linear`` modules inside ``model``'s decoder layers, sorted."""
    access = get_layer_access(model)
    names = [f"{access.layers_path}.{i}.{name}" for i, layer in enumerate(access.layers)
             for name, mod in layer.named_modules() if isinstance(mod, nn.Linear)]
    if not names:
        raise ValueError(f"no nn.Linear modules in the decoder layers of {type(model).__name__} "
                         "(melbo's LoRA adapts nn.Linear only)")
    return sorted(names)


def _target_pattern(model: nn.Module) -> str:
    """A regular expression that peft full-matches against module names: the decoder-layer linears."""
    access = get_layer_access(model)
    rel = sorted({n.split(".", len(access.layers_path.split(".")) + 1)[-1] for n in lora_target_names(model)})
    return rf"{re.escape(access.layers_path)}\.\d+\.({'|'.join(re.escape(r) for r in rel)})"


def lora_config(model: nn.Module, *, rank: int = 16, alpha: float = 32.0, base: str | None = None) -> LoraConfig:
    """peft's ``LoraConfig`` for rank-``rank`` adapters (scale ``alpha / rank``, no dropout) on every
    decoder-layer linear of ``model``; ``base`` is recorded as ``base_model_name_or_path``."""
    from peft import LoraConfig

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r}: must be an integer ≥ 1")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha!r}: must be a finite number > 0")
    a: Any = float(alpha)  # peft annotates an int; the scale alpha / rank takes any number
    return LoraConfig(r=rank, lora_alpha=a, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=_target_pattern(model), init_lora_weights=True,
                      base_model_name_or_path=base)


def _lora_layers(model: nn.Module) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


@contextmanager
def attached_lora(model: nn.Module, config: LoraConfig, *, seed: int = 0) -> Iterator[PeftModel]:
    """``model`` with fresh adapters while inside the block; yields the ``PeftModel`` around it.

    ``A`` of each adapted linear is drawn uniformly in ±1/√in (float64, then cast) from a
    generator seeded with ``seed``, modules in sorted-name order; ``B`` is zero, so the adapted
    model computes what ``model`` computes until it is trained. Only the adapter tensors
    require gradients inside. On exit (also on errors) the adapters are removed
    (``PeftModel.unload``: the original modules are back, weights untouched) and every
    parameter's ``requires_grad`` is what it was. The global torch RNG is not consumed.
    """
    from peft import get_peft_model

    flags = [(p, p.requires_grad) for p in model.parameters()]
    with torch.random.fork_rng(devices=[]):  # peft's own init draws from the global RNG
        peft_model = get_peft_model(model, copy.deepcopy(config))  # peft rewrites the config it is given
    try:
        layers = _lora_layers(model)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name in sorted(layers):
                a = layers[name].lora_A["default"].weight  # (rank, in)
                bound = 1.0 / math.sqrt(a.shape[1])
                draw = (torch.rand(tuple(a.shape), generator=gen, dtype=torch.float64) * 2 - 1) * bound
                a.copy_(draw.to(a.device, a.dtype))
        yield peft_model
    finally:
        peft_model.unload()
        for p, flag in flags:
            p.requires_grad_(flag)


def adapter_state(peft_model: PeftModel) -> dict[str, Tensor]:
    """The adapter tensors on the CPU (contiguous copies), keyed as peft saves them."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}


def set_adapter_state(peft_model: PeftModel, state: dict[str, Tensor]) -> None:
    """Load ``state`` (:func:`adapter_state`'s keys) into the adapters; every key must match."""
    from peft import set_peft_model_state_dict

    want = set(adapter_state(peft_model))
    if set(state) != want:
        missing, extra = sorted(want - set(state))[:3], sorted(set(state) - want)[:3]
        raise ValueError(f"adapter state does not match the model: missing {missing}, unexpected {extra}")
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter state has keys the model lacks: {sorted(unexpected)[:3]}")


def save_adapter(model: nn.Module, config: LoraConfig, state: dict[str, Tensor], out: str | os.PathLike[str],
                 *, base: str) -> list[Path]:
    """Write ``state`` as a peft adapter directory in ``out``: ``adapter_config.json`` (with
    ``base_model_name_or_path = base``) and ``adapter_model.safetensors``. Each file appears
    whole (written in a temporary directory inside ``out``, then moved); ``model`` is left as
    it was. Returns the two paths."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with attached_lora(model, config) as peft_model:
        set_adapter_state(peft_model, state)
        peft_model.peft_config["default"].base_model_name_or_path = base
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".adapter-") as tmp:
            peft_model.save_pretrained(tmp)
            fsync_tree(tmp)  # on disk before the renames commit them
            paths = []
            for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
                os.replace(Path(tmp) / name, out_dir / name)
                paths.append(out_dir / name)
    fsync_dir(out_dir)
    return paths


def merge_lora_state(model: nn.Module, config: LoraConfig, state: dict[str, Tensor]) -> nn.Module:
    """Merge the adapters ``state`` into ``model``'s weights, **in place** (``W ← W + scale · B A``);
    returns ``model``. Only for a model the caller created (an organism being built)."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        peft_model = get_peft_model(model, copy.deepcopy(config))
    set_adapter_state(peft_model, state)
    merged: nn.Module = peft_model.merge_and_unload()
    return merged


# ---------------------------------------------------------------- loading adapter directories


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory with a peft ``adapter_config.json``."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _read_adapter_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {str(path / ADAPTER_CONFIG)!r}: {err}") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{str(path / ADAPTER_CONFIG)!r} is not a JSON object")
    return cfg


def adapter_base(path: str | os.PathLike[str]) -> str:
    """The base model of the adapter directory ``path``, as :func:`melbo.load_model` takes it.

    ``base_model_name_or_path`` of ``adapter_config.json`` when it names an existing
    directory; else the ``base`` that melbo's ``recipe.json`` beside it records (a packaged
    model's name survives moving the cache); else ``base_model_name_or_path`` as a
    Hugging Face id.
    """
    d = Path(path)
    named = _read_adapter_config(d).get("base_model_name_or_path")
    if isinstance(named, str) and named and Path(named).expanduser().is_dir():
        return named
    recipe = d / "recipe.json"
    if recipe.is_file():
        try:
            base = json.loads(recipe.read_text()).get("base")
        except ValueError:
            base = None
        if isinstance(base, str) and base:
            return base
    if isinstance(named, str) and named:
        return named
    raise ModelLoadError(f"the adapter in {str(d)!r} names no base model (base_model_name_or_path is "
                         f"{named!r} in {ADAPTER_CONFIG}, and no recipe.json records one)")


def apply_adapter_dir(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """``PeftModel.from_pretrained(model, path)`` merged into ``model`` (in place, a model the
    caller created); returns the plain model. When ``path`` holds a melbo organism's
    ``recipe.json``, the base model's fingerprint must be the one the organism was trained on."""
    from peft import PeftModel

    from melbo.models.fingerprint import check_same_model

    d = Path(path)
    recipe = d / "recipe.json"
    if recipe.is_file():
        want = json.loads(recipe.read_text()).get("base_fingerprint")
        if isinstance(want, dict) and want:
            check_same_model(want, model, what="adapter",
                             hint=f"the adapter in {str(d)!r} was trained on another base model than the one loaded")
    try:
        peft_model = PeftModel.from_pretrained(model, str(d))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not apply the peft adapter in {str(d)!r}: {type(err).__name__}: {err}") from None
    merged: nn.Module = peft_model.merge_and_unload()
    return merged
