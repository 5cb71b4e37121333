"""The modules that moved when the package root was grouped into stages, still importable under
their old names with a :class:`DeprecationWarning` naming the new one.

``import melbo.interventions`` (or ``from melbo.train import TrainConfig``) finds the module at
its new home (:mod:`melbo.steering.interventions`, :mod:`melbo.jobs.train`) and registers the
same module object under the old name too, so ``melbo.interventions is
melbo.steering.interventions`` and patching either patches both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {
    "melbo.builtin_prompts": "melbo.prompts.builtin",
    "melbo.cache": "melbo.store.cache",
    "melbo.causal_map": "melbo.maps.transformer",
    "melbo.compile_cache": "melbo.store.compile_cache",
    "melbo.decode": "melbo.generation.decode",
    "melbo.demo": "melbo.jobs.demo",
    "melbo.discover": "melbo.jobs.discover",
    "melbo.discover_config": "melbo.jobs.discover_config",
    "melbo.distributed": "melbo.jobs.distributed",
    "melbo.fingerprint": "melbo.models.fingerprint",
    "melbo.hooks": "melbo.models.hooks",
    "melbo.interventions": "melbo.steering.interventions",
    "melbo.io": "melbo.store.io",
    "melbo.monitor": "melbo.jobs.monitor",
    "melbo.outputs": "melbo.store.outputs",
    "melbo.prefix": "melbo.generation.prefix",
    "melbo.prompt_files": "melbo.prompts.files",
    "melbo.protocol": "melbo.maps.protocol",
    "melbo.rank": "melbo.evaluate.rank",
    "melbo.synthetic": "melbo.maps.synthetic",
    "melbo.train": "melbo.jobs.train",
}
"""Old module name → its new home."""


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old name will be removed)",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:  # the module is already executed at its new home
        pass


def install(meta_path: list[Any] | None = None) -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    path = sys.meta_path if meta_path is None else meta_path
    if not any(isinstance(f, _Alias) for f in path):
        path.append(_Alias())
