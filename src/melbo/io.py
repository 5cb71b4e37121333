"""Writing files safely: atomic writes and the output-directory policy.

* :func:`atomic_write` / :func:`atomic_write_text` — write a file through a temporary file in
  the same directory and move it into place with :func:`os.replace`: a reader (or a crash)
  never sees a half-written file, and when the writer raises the old file is left intact.
* :func:`check_out_dir` / :func:`claim_out_dir` — the policy every command that writes a
  directory follows: **never silently overwrite anything a user made.** A missing or empty
  directory is used; a non-empty one only with ``force`` (or ``resume``), and where the
  writer marks its directories, one it did not write never without ``force`` — or never at
  all (``force_foreign=False``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "check_out_dir", "claim_out_dir"]

PathLike = str | os.PathLike[str]


def atomic_write(path: PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a fresh temporary path next to ``path``, then move it onto ``path``.

    The temporary file is removed when ``write`` (or the move) raises; ``path`` is then what
    it was before. The parent directory must exist.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_out_dir(
    out: PathLike,
    *,
    writer: str,
    force: bool = False,
    resume: bool = False,
    resume_file: str | None = None,
    marker: str | None = None,
    force_foreign: bool = True,
    reuse_own: bool = False,
) -> Path:
    """Check that ``out`` may be written by ``writer`` (e.g. ``"melbo train"``); returns it.

    Rules, in order:

    1. a path that exists and is not a directory is refused;
    2. ``resume`` with ``resume_file`` (relative to ``out``): that file must exist (it is what
       is resumed); nothing else is checked;
    3. a missing or empty directory is fine;
    4. with ``marker`` (a file ``writer`` puts in every directory it writes): a directory
       without it was made by someone else — refused, unless ``force`` and ``force_foreign``;
       one with it holds an earlier run — reused with ``reuse_own``, ``force`` or ``resume``,
       else refused;
    5. without ``marker``: a non-empty directory needs ``force``.

    Raises
    ------
    FileExistsError
        naming the path and the flag that would allow it.
    FileNotFoundError
        for ``resume`` when ``resume_file`` is missing.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a directory")
    if resume and resume_file is not None:
        if not (out / resume_file).is_file():
            raise FileNotFoundError(f"nothing to resume: {str(out / resume_file)!r} does not exist")
        return out
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if marker is not None:
        if not (out / marker).exists():
            if force and force_foreign:
                return out
            how = "choose another --out or pass --force" if force_foreign else "choose another --out"
            raise FileExistsError(f"{str(out)!r} is not empty and was not written by {writer}; {how}")
        if reuse_own or force or resume:
            return out
        raise FileExistsError(
            f"{str(out)!r} holds an earlier {writer} run; pass --resume to continue it or --force to start over"
        )
    if force:
        return out
    also = " or --resume to continue its checkpoint" if resume_file is not None else ""
    raise FileExistsError(f"output directory {str(out)!r} is not empty; pass --force to overwrite it{also}")


def claim_out_dir(out: PathLike, *, marker: str, writer: str) -> Path:
    """Create ``out`` (parents too) and put ``writer``'s ``marker`` file in it; returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / marker).write_text(f"written by {writer}\n")
    return out
