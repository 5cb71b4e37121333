"""Low-rank adapters (LoRA) on a model's decoder layers, applied by removable forward hooks.

Every ``nn.Linear`` inside the decoder layers gets ``W x + (alpha / rank) · B A x`` with
``A`` random and ``B = 0`` at the start, so the adapted model equals the model until it is
trained. The model is not edited while adapters are attached (hooks only, removed on exit,
also on errors); :func:`merge_lora` writes ``W ← W + (alpha / rank) · B A`` into the
weights for good — that is how a fine-tuned organism is saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from melbo.hooks import removing
from melbo.models.access import get_layer_access

__all__ = ["LoRA", "init_lora", "lora_targets", "merge_lora"]


def lora_targets(model: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules inside the decoder layers, by their name in ``model``."""
    access = get_layer_access(model)
    out: dict[str, nn.Linear] = {}
    for i, layer in enumerate(access.layers):
        for name, mod in layer.named_modules():
            if isinstance(mod, nn.Linear):
                out[f"{access.layers_path}.{i}.{name}"] = mod
    if not out:
        raise ValueError(
            f"no nn.Linear modules in the decoder layers of {type(model).__name__} "
            "(LoRA here adapts nn.Linear only)"
        )
    return out


@dataclass
class LoRA:
    """Adapter factors per module name: ``A`` of shape (rank, in), ``B`` of shape (out, rank)."""

    A: dict[str, nn.Parameter]
    B: dict[str, nn.Parameter]
    rank: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def names(self) -> list[str]:
        return sorted(self.A)

    def parameters(self) -> list[nn.Parameter]:
        """All factors in a fixed order (A then B of each module, by sorted name)."""
        return [p for n in self.names() for p in (self.A[n], self.B[n])]

    def state_dict(self) -> dict[str, Tensor]:
        out = {f"{n}.A": self.A[n].detach().cpu().contiguous() for n in self.names()}
        out.update({f"{n}.B": self.B[n].detach().cpu().contiguous() for n in self.names()})
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        want = set(self.state_dict())
        if set(state) != want:
            missing, extra = sorted(want - set(state))[:3], sorted(set(state) - want)[:3]
            raise ValueError(f"LoRA state does not match the model: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for n in self.names():
                self.A[n].copy_(state[f"{n}.A"])
                self.B[n].copy_(state[f"{n}.B"])

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Add the adapters' outputs to their modules' outputs while inside the block."""
        targets = lora_targets(model)
        if set(targets) != set(self.A):
            raise ValueError("these adapters were made for a model with other linear layers")
        with removing() as handles:
            for name, mod in targets.items():
                handles.append(mod.register_forward_hook(_hook(self.A[name], self.B[name], self.scale)))
            yield


def _hook(A: nn.Parameter, B: nn.Parameter, scale: float):  # type: ignore[no-untyped-def]
    def hook(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = inputs[0]  # (..., in)
        return output + (x @ A.T) @ B.T * scale  # (..., out)

    return hook


def init_lora(model: nn.Module, *, rank: int = 16, alpha: float = 32.0, seed: int = 0) -> LoRA:
    """Fresh adapters for every decoder-layer linear of ``model`` (device and dtype of each weight).

    ``A`` is drawn uniformly in ±1/√in from a generator seeded with ``seed`` (modules in
    sorted-name order); ``B`` is zero.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r}: must be an integer ≥ 1")
    if not alpha > 0:
        raise ValueError(f"alpha={alpha!r}: must be > 0")
    gen = torch.Generator().manual_seed(seed)
    A: dict[str, nn.Parameter] = {}
    B: dict[str, nn.Parameter] = {}
    targets = lora_targets(model)
    for name in sorted(targets):
        w = targets[name].weight  # (out, in)
        bound = 1.0 / math.sqrt(w.shape[1])
        a = (torch.rand(rank, w.shape[1], generator=gen, dtype=torch.float64) * 2 - 1) * bound
        A[name] = nn.Parameter(a.to(w.device, w.dtype))
        B[name] = nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device, dtype=w.dtype))
    return LoRA(A, B, rank, float(alpha))


def merge_lora(model: nn.Module, lora: LoRA) -> None:
    """Write the adapters into ``model``'s weights (in place): ``W ← W + scale · B A``."""
    targets = lora_targets(model)
    if set(targets) != set(lora.A):
        raise ValueError("these adapters were made for a model with other linear layers")
    with torch.no_grad():
        for name, mod in targets.items():
            delta = (lora.B[name].double() @ lora.A[name].double()) * lora.scale  # (out, in)
            mod.weight.add_(delta.to(mod.weight.dtype))
