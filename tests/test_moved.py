"""The modules that moved into stage subpackages keep their old import names, deprecated."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import melbo
from melbo._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_name_is_the_new_module_with_a_warning_naming_it(old: str) -> None:
    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=MOVED[old].replace(".", r"\.")):
        mod = importlib.import_module(old)
    assert mod is new  # one module object: patching either name patches both


def test_from_import_of_an_old_name_gives_the_same_object() -> None:
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    from melbo.train import TrainConfig\nexcept DeprecationWarning as w:\n    print('warned', w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "melbo.jobs.train" in out
    from melbo.jobs.train import TrainConfig

    with pytest.warns(DeprecationWarning):
        sys.modules.pop("melbo.train", None)
        from melbo.train import TrainConfig as Old  # noqa: F401
    assert Old is TrainConfig


def test_no_new_name_is_shadowed_by_a_file_at_the_old_place() -> None:
    root = {m.name for m in pkgutil.iter_modules(melbo.__path__)}
    left = {old.split(".", 1)[1] for old in MOVED} & root
    assert not left, f"modules both moved and still at the root: {sorted(left)}"
    for new in MOVED.values():
        assert importlib.util.find_spec(new) is not None, new


def test_unknown_names_still_fail() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("melbo.no_such_module")
