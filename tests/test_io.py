"""melbo.io: atomic writes and the output-directory policy (never overwrite what a user made)."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from melbo.io import atomic_write, atomic_write_text, check_out_dir, claim_out_dir, fsync_tree

ROOT = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------- durability: fsync, and kills at random points


def test_atomic_write_syncs_the_file_before_the_rename_and_the_directory_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync dir" if stat.S_ISDIR(st.st_mode) else "fsync file", st.st_ino))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    p = tmp_path / "f.bin"
    atomic_write(p, lambda tmp: tmp.write_bytes(b"new"))
    # the synced file is the one now at p (its inode), the synced directory p's parent
    assert events == [("fsync file", p.stat().st_ino), ("replace", "f.bin"), ("fsync dir", tmp_path.stat().st_ino)]


def test_a_file_system_that_cannot_sync_a_directory_still_gets_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(tmp_path / "f.txt", "new")
    fsync_tree(tmp_path)
    assert (tmp_path / "f.txt").read_text() == "new"


# A writer that replaces one file over and over with two known contents, alternately, through
# melbo.io.atomic_write; each content is written in 64 KiB pieces (many write calls), so a kill
# can land in the middle of one.
KILLED_WRITER = r"""
import sys
from pathlib import Path
from melbo.io import atomic_write
path, a, b = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()
def writer(content):
    def write(tmp):
        with open(tmp, "wb", buffering=0) as fh:
            for i in range(0, len(content), 1 << 16):
                fh.write(content[i : i + (1 << 16)])
    return write
print("READY", flush=True)
while True:
    for content in (b, a):
        atomic_write(path, writer(content))
"""


def test_a_writer_killed_at_random_points_leaves_the_old_or_the_new_file_never_a_mix(tmp_path: Path) -> None:
    rng = random.Random(1234)
    a, b = rng.randbytes(1 << 21), rng.randbytes(1 << 21)  # 2 MiB each
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    work = tmp_path / "work"
    work.mkdir()
    path = work / "state.bin"
    atomic_write(path, lambda tmp: tmp.write_bytes(a))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    seen = []
    rounds = 16
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(tmp_path / "a"), str(tmp_path / "b")],
                                env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL  # it was still writing, not crashed
        proc.stdout.close()
        content = path.read_bytes()
        assert content in (a, b), f"a mix of {len(content)} bytes"
        seen.append(content == a)
    assert len(set(seen)) == 2, "the writer never got to replace the file"
    # what a kill leaves besides the file is only writers' temporary files, which no reader opens
    others = [q.name for q in work.iterdir() if q != path]
    assert len(others) <= rounds and all(re.fullmatch(r"\.state\.bin\.[^.]+\.tmp", n) for n in others), others
