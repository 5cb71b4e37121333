"""melbo.store.io: atomic writes and the output-directory policy (never overwrite what a user made)."""

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

from melbo.store.io import atomic_write, atomic_write_text, check_output, claim_out_dir, fsync_tree

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


def _out_dir(out: Path, **kw: Any) -> Path:
    return check_output(out, flag="--out", writer="melbo discover", ours=".d", directory=True, **kw)


def test_a_missing_or_empty_directory_is_used(tmp_path: Path) -> None:
    assert _out_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    _out_dir(tmp_path / "empty")


def test_a_directory_melbo_did_not_write_is_refused_even_with_force_and_the_path_is_named(tmp_path: Path) -> None:
    mine = _users_dir(tmp_path)
    for kw in ({}, {"force": True}, {"resume": True}, {"reuse_own": True}, {"force": True, "resume": True}):
        with pytest.raises(FileExistsError, match=rf"{re.escape(str(mine))}.*not written by melbo discover; choose another --out"):
            _out_dir(mine, **kw)
    with pytest.raises(FileExistsError, match="not written by melbo train"):  # no way to recognise one: never ours
        check_output(mine, flag="--out", writer="melbo train", ours=None, directory=True, force=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # checking never writes


def test_a_file_in_the_way_of_a_directory_is_refused_even_with_force(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        _out_dir(f, force=True)


def test_resume_needs_the_file_it_resumes(tmp_path: Path) -> None:
    out = claim_out_dir(tmp_path / "run", marker=".d", writer="melbo discover")
    with pytest.raises(FileNotFoundError, match="nothing to resume.*state.json"):
        _out_dir(out, resume=True, resume_file="checkpoint/state.json")
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.json").write_text("{}")
    _out_dir(out, resume=True, resume_file="checkpoint/state.json")


def test_an_earlier_run_is_replaced_with_force_resume_or_reuse(tmp_path: Path) -> None:
    out = claim_out_dir(tmp_path / "run", marker=".d", writer="melbo discover")
    assert json.loads((out / ".d").read_text())["writer"] == "melbo discover"
    (out / "features.json").write_text("{}")
    with pytest.raises(FileExistsError, match="earlier melbo discover run; pass --resume to continue it or --force"):
        _out_dir(out, resumable=True)
    with pytest.raises(FileExistsError, match="earlier melbo discover run; pass --force to start over"):
        _out_dir(out)
    for kw in ({"resume": True}, {"force": True}, {"reuse_own": True}):
        assert _out_dir(out, **kw) == out
    ours = tmp_path / "feats"  # a predicate recognises the directory by its content
    ours.mkdir()
    (ours / "config.json").write_text('{"v": 1}')
    assert check_output(ours, flag="--out", writer="w", ours=lambda d: "v" in json.loads((d / "config.json").read_text()),
                        directory=True, force=True) == ours


def _out_file(path: Path, **kw: Any) -> Path:
    return check_output(path, flag="-o", writer="melbo export", ours=lambda p: p.read_text() == "melbo's", **kw)


def test_an_existing_file_is_replaced_only_when_melbo_wrote_it_and_force_or_reuse_allows(tmp_path: Path) -> None:
    assert _out_file(tmp_path / "new.gguf") == tmp_path / "new.gguf"
    mine = tmp_path / "mine.gguf"
    mine.write_text("the user's")
    for kw in ({}, {"force": True}, {"reuse_own": True}):
        with pytest.raises(FileExistsError, match="exists and was not written by melbo export"):
            _out_file(mine, **kw)
    ours = tmp_path / "ours.gguf"
    ours.write_text("melbo's")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        _out_file(ours)
    assert _out_file(ours, force=True) == _out_file(ours, reuse_own=True) == ours
    with pytest.raises(FileExistsError, match="is a directory"):
        _out_file(tmp_path, force=True)
    broken = tmp_path / "broken.gguf"  # a recogniser that raises on a file recognises nothing
    broken.write_bytes(b"\xff")
    with pytest.raises(FileExistsError, match="not written by melbo export"):
        _out_file(broken, force=True)


def test_an_input_or_a_path_inside_one_is_never_an_output(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    inputs = [("--prompts", prompts), ("DIR", _users_dir(tmp_path)), ("--model", "not-a-path/org"), ("--x", None)]
    for path, directory in ((prompts, False), (tmp_path / "mine", True), (tmp_path / "mine" / "sub", True)):
        with pytest.raises(FileExistsError, match="an input of this command"):
            check_output(path, flag="--out", writer="w", ours=lambda p: True, directory=directory, force=True,
                         inputs=inputs)
    with pytest.raises(FileExistsError, match="inside DIR .*not an earlier output of w"):  # a file of the input
        check_output(tmp_path / "mine" / "notes.txt", flag="-o", writer="w", ours=lambda p: False, force=True,
                     inputs=inputs)
    # a new file inside an input directory, or an earlier output of this command there, is fine
    check_output(tmp_path / "mine" / "report.html", flag="-o", writer="w", ours=None, inputs=inputs)
    check_output(tmp_path / "mine" / "notes.txt", flag="-o", writer="w", ours=lambda p: True, reuse_own=True,
                 inputs=inputs)
    with pytest.raises(FileExistsError, match="--prompts .* is inside --out"):  # a directory output holding an input
        check_output(tmp_path, flag="--out", writer="w", ours=lambda p: True, directory=True, force=True,
                     inputs=[("--prompts", prompts)])
    with pytest.raises(FileExistsError, match="-o .* and --out .* overlap"):
        check_output(tmp_path / "run" / "behaviours.json", flag="-o", writer="w", ours=None,
                     others=[("--out", tmp_path / "run")])


def test_a_symbolic_link_is_never_written_through(tmp_path: Path) -> None:
    foreign = _users_dir(tmp_path)
    (foreign / ".d").write_text("{}")  # even a directory that looks like melbo's
    link = tmp_path / "link"
    link.symlink_to(foreign)
    with pytest.raises(FileExistsError, match="is a symbolic link"):
        _out_dir(link, force=True)
    flink = tmp_path / "f.gguf"
    flink.symlink_to(foreign / "notes.txt")
    with pytest.raises(FileExistsError, match="is a symbolic link"):
        _out_file(flink, force=True)


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
# melbo.store.io.atomic_write; each content is written in 64 KiB pieces (many write calls), so a kill
# can land in the middle of one.
KILLED_WRITER = r"""
import sys
from pathlib import Path
from melbo.store.io import atomic_write
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
