"""Lazy package exports: a package names its public objects without importing them.

``import melbo`` (and the command line's ``--help``) must not pay for torch. A package
lists ``{public name: "module:attribute"}`` and gets a module ``__getattr__`` (PEP 562)
that imports the defining module on first access and caches the object in the package
namespace, and a ``__dir__`` that shows the lazy names and the subpackages too. A
subpackage or module of the package (``melbo.fit``) is imported on first access as well.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``(__getattr__, __dir__)`` pair of the package whose ``globals()`` is ``namespace``.

    exports : public name → ``"module:attribute"`` (``module`` absolute)
    """
    package: str = namespace["__name__"]
    path: list[str] = list(namespace.get("__path__", []))

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is not None:
            module, _, attr = target.partition(":")
            value = getattr(importlib.import_module(module), attr)
        elif not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        subs = {m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_")}
        return sorted(set(namespace) | set(exports) | subs)

    return __getattr__, __dir__
