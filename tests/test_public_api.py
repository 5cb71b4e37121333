"""The public API: every exported name resolves, every dotted ``melbo.…`` name that a
docstring or README sends a user to resolves, and ``import melbo`` stays cheap (no torch)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import melbo

SRC = Path(melbo.__file__).resolve().parent  # src/melbo
ROOT = SRC.parent.parent
PACKAGES = sorted(
    ["melbo"] + [f"melbo.{m.name}" for m in pkgutil.iter_modules([str(SRC)]) if m.ispkg]
)
MODULES = sorted(
    m.name for m in pkgutil.walk_packages([str(SRC)], prefix="melbo.")
    if not m.ispkg and m.name != "melbo.__main__"  # importing __main__ runs the command line
)


# ---------------------------------------------------------------------------------------
# (a) exported names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_exports_its_public_names(package: str) -> None:
    mod = importlib.import_module(package)
    names = getattr(mod, "__all__", None)
    assert names, f"{package} has no __all__: a subpackage exports its public names"
    assert len(set(names)) == len(names), f"{package}.__all__ repeats a name"
    missing = [n for n in names if not _resolves_attr(mod, n)]
    assert not missing, f"{package}.__all__ names that do not resolve: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_all_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ names that do not exist: {missing}"


def test_top_level_offers_what_a_user_needs() -> None:
    need = {
        "load_model", "get_layer_access", "TransformerCausalMap", "build_prompts", "calibrate_R",
        "ExponentialDCT", "QuadraticDCT", "LinearDCT", "MelboV1", "OneShotSteering", "MeanDifference",
        "RandomVectors", "Features", "steer", "ablate", "jailbreak_score", "build_organism",
        "ConvergenceWarning", "method_names", "DiscoverConfig", "__version__",
    }
    assert need <= set(melbo.__all__)
    assert set(melbo.__all__) <= set(dir(melbo))
    assert {"fit", "evaluate", "organisms", "jobs"} <= set(dir(melbo))  # subpackages, lazily


def test_every_registered_method_has_a_top_level_estimator() -> None:
    from melbo.methods import estimator_class, method_names

    for name in method_names():
        cls = estimator_class(name)
        assert getattr(melbo, cls.__name__) is cls, name


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_names_do_not_collide_with_submodules(package: str) -> None:
    # importing melbo.x.y sets the package attribute y to the module, which would silently
    # replace a lazily exported object of the same name
    mod = importlib.import_module(package)
    if "__getattr__" not in vars(mod):
        return
    subs = {m.name for m in pkgutil.iter_modules(mod.__path__)}
    assert not subs & set(mod.__all__), f"{package}: {sorted(subs & set(mod.__all__))}"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        melbo.nope  # noqa: B018
    assert not hasattr(melbo, "_private_nope")


def test_one_version_source() -> None:
    import tomllib

    from melbo.features import melbo_version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "melbo._version.__version__"}
    import melbo._version

    assert melbo_version() == melbo.__version__ == melbo._version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", melbo.__version__)


# ---------------------------------------------------------------------------------------
# (b) dotted names in docstrings and READMEs

_SPAN = re.compile(r"(?::[\w:]+:)?(`+)(.+?)\1", re.DOTALL)  # `x`, ``x``, :func:`x`
_NAME = re.compile(r"(?<![\w./\-])~?(melbo(?:\.[A-Za-z_]\w*)+)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _names_in_text(text: str, first_line: int) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []

    def collect(chunk: str, offset: int) -> None:
        for m in _NAME.finditer(chunk):
            found.append((m.group(1), first_line + text.count("\n", 0, offset + m.start())))

    for fence in _FENCE.finditer(text):  # code blocks: every dotted name in them
        collect(fence.group(1), fence.start(1))
    rest = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in _SPAN.finditer(rest):
        collect(span.group(2), span.start(2))
    return found


def _docstring_names() -> list[tuple[str, str]]:
    """(name, where) for every dotted melbo name in a docstring under src/melbo or a README."""
    out: list[tuple[str, str]] = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node, clean=False)
            if not doc:
                continue
            line = node.body[0].lineno  # the docstring's first line
            for name, ln in _names_in_text(doc, line):
                out.append((name, f"{path.relative_to(ROOT)}:{ln}"))
    for readme in (ROOT / "README.md", ROOT / "bench" / "README.md"):
        if readme.is_file():
            for name, ln in _names_in_text(readme.read_text(encoding="utf-8"), 1):
                out.append((name, f"{readme.relative_to(ROOT)}:{ln}"))
    return out


def _resolves_attr(obj: Any, attr: str) -> bool:
    try:
        getattr(obj, attr)
        return True
    except AttributeError:
        pass
    if isinstance(obj, type):  # an instance attribute: a dataclass field or an annotation
        if dataclasses.is_dataclass(obj) and attr in {f.name for f in dataclasses.fields(obj)}:
            return True
        return any(attr in getattr(k, "__annotations__", {}) for k in obj.__mro__)
    return False


def resolve(name: str) -> bool:
    """Whether a dotted name resolves: submodules are imported, anything else is an attribute."""
    head, *rest = name.split(".")
    obj: Any = importlib.import_module(head)
    path = head
    for i, part in enumerate(rest):
        path = f"{path}.{part}"
        if hasattr(obj, "__path__") and importlib.util.find_spec(path) is not None:
            obj = importlib.import_module(path)
            continue
        if not _resolves_attr(obj, part):
            return False
        try:
            obj = getattr(obj, part)
        except AttributeError:  # an instance attribute: nothing further to follow
            return i == len(rest) - 1
    return True


def test_the_walk_finds_names_in_every_form() -> None:
    text = ("See :func:`melbo.fit.calibrate_R`, :class:`~melbo.maps.transformer.TransformerCausalMap`,\n"
            "``melbo.load_model(DIR)`` and `melbo.organisms.data` but not src/melbo.x or melbo_version.\n"
            "```python\nx = melbo.Features.load(d)\n```\n")
    assert [n for n, _ in _names_in_text(text, 1)] == [
        "melbo.Features.load", "melbo.fit.calibrate_R", "melbo.maps.transformer.TransformerCausalMap",
        "melbo.load_model", "melbo.organisms.data",
    ]
    assert resolve("melbo.maps.transformer.TransformerCausalMap") and resolve("melbo.features.Features.R")
    assert not resolve("melbo.maps.transformer.Nope") and not resolve("melbo.nope.x")
    assert len(_docstring_names()) > 50


def test_every_dotted_name_in_docstrings_and_readmes_resolves() -> None:
    bad = sorted({(name, where) for name, where in _docstring_names() if not resolve(name)})
    assert not bad, "names that point nowhere:\n" + "\n".join(f"  {w}: {n}" for n, w in bad)


# ---------------------------------------------------------------------------------------
# (c) import melbo stays cheap


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC.parent), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("module", ["melbo", "melbo.methods", "melbo.cli"])
def test_import_does_not_import_torch(module: str) -> None:
    code = (f"import sys, {module}, melbo\n"
            "dir(melbo); melbo.__version__; melbo.method_names()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert out.stdout.strip() == "[]", out.stdout
