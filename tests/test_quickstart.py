"""The README's quickstart is two self-sufficient commands, and CI runs exactly its test command."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_make_demo_and_make_test() -> None:
    assert _quickstart_commands() == ["make demo", "make test"]


def test_ci_runs_the_readmes_test_command() -> None:
    ci = [line.split("#", 1)[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci
    assert "make lint" in ci  # ruff + mypy stay in CI


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["demo", "test", "lint"])
def test_make_targets_create_the_venv_first(target: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True,
                          text=True, check=True).stdout
    create = plan.index(f"-m venv {venv}")
    install = plan.index(f"{venv}/bin/python -m pip install -q -e '.[gemma,dev]'")
    assert create < install < plan.index(f"{venv}/bin/", install + 1)
    # a venv already installed (stamp newer than pyproject.toml) is reused as it is
    venv.mkdir()
    (venv / ".melbo-installed").touch()
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True,
                          text=True, check=True).stdout
    assert "-m venv" not in plan and "pip install" not in plan and f"{venv}/bin/" in plan
