"""melbo.io: atomic writes and the output-directory policy (never overwrite what a user made)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from melbo.io import atomic_write, atomic_write_text, check_out_dir, claim_out_dir


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "f.json"
    p.write_text("old")
    atomic_write_text(p, "new ✓")
    assert p.read_text(encoding="utf-8") == "new ✓" and [q.name for q in tmp_path.iterdir()] == ["f.json"]
    atomic_write(tmp_path / "g.bin", lambda tmp: tmp.write_bytes(b"\x00\x01"))
    assert (tmp_path / "g.bin").read_bytes() == b"\x00\x01"


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_leaves_the_old_file_intact_when_the_writer_raises(tmp_path: Path, error: BaseException) -> None:
    p = tmp_path / "state.json"
    p.write_text("the old state")

    def half_write(tmp: Path) -> None:
        tmp.write_text("half of the new st")
        raise error

    with pytest.raises(type(error)):
        atomic_write(p, half_write)
    assert p.read_text() == "the old state" and [q.name for q in tmp_path.iterdir()] == ["state.json"]


def _users_dir(tmp_path: Path) -> Path:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    return mine


def test_a_missing_or_empty_directory_is_used(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "new", writer="melbo train") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", writer="melbo train", marker=".m", force_foreign=False)


def test_a_non_empty_directory_is_refused_without_force_and_the_path_is_named(tmp_path: Path) -> None:
    mine = _users_dir(tmp_path)
    with pytest.raises(FileExistsError, match=rf"{re.escape(str(mine))}.*is not empty; pass --force"):
        check_out_dir(mine, writer="melbo train")
    with pytest.raises(FileExistsError, match="--resume to continue its checkpoint"):
        check_out_dir(mine, writer="melbo train", resume_file="checkpoint/state.json")
    assert check_out_dir(mine, writer="melbo train", force=True) == mine
    assert (mine / "notes.txt").read_text() == "keep me"  # checking never writes


def test_a_file_in_the_way_is_refused_even_with_force(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        check_out_dir(f, writer="melbo train", force=True)


def test_resume_needs_the_file_it_resumes(tmp_path: Path) -> None:
    mine = _users_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing to resume.*state.json"):
        check_out_dir(mine, writer="melbo train", resume=True, resume_file="checkpoint/state.json")
    (mine / "checkpoint").mkdir()
    (mine / "checkpoint" / "state.json").write_text("{}")
    check_out_dir(mine, writer="melbo train", resume=True, resume_file="checkpoint/state.json")


def test_with_a_marker_a_foreign_directory_is_never_written_unless_force_may_allow_it(tmp_path: Path) -> None:
    mine = _users_dir(tmp_path)
    for force in (False, True):
        with pytest.raises(FileExistsError, match=rf"{re.escape(str(mine))}.*not written by melbo discover; choose another --out$"):
            check_out_dir(mine, writer="melbo discover", marker=".d", force=force, resume=True, force_foreign=False)
    with pytest.raises(FileExistsError, match="not written by melbo demo; choose another --out or pass --force"):
        check_out_dir(mine, writer="melbo demo", marker=".demo", reuse_own=True)
    check_out_dir(mine, writer="melbo demo", marker=".demo", force=True)


def test_with_a_marker_an_earlier_run_needs_resume_or_force_unless_reused(tmp_path: Path) -> None:
    out = claim_out_dir(tmp_path / "run", marker=".d", writer="melbo discover")
    assert json.loads((out / ".d").read_text())["writer"] == "melbo discover"
    (out / "features.json").write_text("{}")
    with pytest.raises(FileExistsError, match="earlier melbo discover run; pass --resume"):
        check_out_dir(out, writer="melbo discover", marker=".d", force_foreign=False)
    check_out_dir(out, writer="melbo discover", marker=".d", resume=True, force_foreign=False)
    check_out_dir(out, writer="melbo discover", marker=".d", force=True, force_foreign=False)
    check_out_dir(out, writer="melbo discover", marker=".d", reuse_own=True)
