"""Files that cannot half-exist, and bounded readers of user files.

* :func:`atomic_write` / :func:`atomic_write_text` — write a file through a temporary file in
  the same directory and move it into place with :func:`os.replace`: a reader (or a crash)
  never sees a half-written file, and when the writer raises the old file is left intact.
* :func:`check_out_dir` / :func:`claim_out_dir` — the policy every command that writes a
  directory follows: **never silently overwrite anything a user made.** A missing or empty
  directory is used; a non-empty one only with ``force`` (or ``resume``), and where the
  writer marks its directories, one it did not write never without ``force`` — or never at
  all (``force_foreign=False``).
* :func:`write_file_set` / :func:`read_file_set` — several files that are only valid together
  (a checkpoint's tensors and its state) written as one unit: a manifest naming each file
  and its sha256 is the single commit point, and the reader verifies the hashes.
* :func:`record_output` / :func:`wrote_output` — a writer records (in its directory marker)
  the files it wrote elsewhere, so it later overwrites only those, byte for byte.
* :func:`read_text_file` / :func:`read_json_file` / :func:`parse_json` — reading user files
  with limits: a size limit, a JSON nesting limit (checked before parsing, so nothing
  recurses), UTF-8 with or without a BOM, and errors (:class:`FileFormatError`, a
  ``ValueError``) that name the file, the line and column, and what would fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TEXT_BYTES",
    "FileFormatError",
    "atomic_write",
    "atomic_write_text",
    "check_out_dir",
    "claim_out_dir",
    "file_sha256",
    "json_depth",
    "parse_json",
    "read_file_set",
    "read_json_file",
    "read_text_file",
    "record_output",
    "split_lines",
    "write_file_set",
    "wrote_output",
]

logger = logging.getLogger(__name__)

MAX_TEXT_BYTES = 256 * 2**20
"""Default size limit of a user text file (prompt files): 256 MiB."""
MAX_JSON_BYTES = 64 * 2**20
"""Default size limit of a JSON metadata file (config.json, checkpoints, analyses): 64 MiB."""
MAX_JSON_DEPTH = 64
"""Default nesting limit of JSON files; melbo's own files nest at most ~6 levels."""

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
    """Create ``out`` (parents too) and put ``writer``'s ``marker`` file in it; returns it.

    An existing marker is kept as it is (it may hold :func:`record_output` records).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / marker).is_file():
        atomic_write_text(out / marker, json.dumps({"writer": writer, "outputs": {}}, indent=1) + "\n")
    return out


# ---------------------------------------------------------------- files that are only valid together


def file_sha256(path: PathLike) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_file_set(
    directory: PathLike,
    files: Mapping[str, Callable[[Path], object]],
    state: Mapping[str, Any],
    *,
    manifest: str = "state.json",
) -> None:
    """Write files that are only valid together (e.g. tensors and the state they belong to) as one unit.

    ``files`` maps a logical name (``"state.safetensors"``) to a writer ``write(tmp_path)``.
    Each file is written under a fresh name (``state.<token>.safetensors``); then the
    manifest — ``state`` plus ``"files": {name: {"file": actual name, "sha256": …}}`` —
    replaces ``directory/manifest`` in one :func:`os.replace`, the single commit point.
    Files of earlier sets are removed afterwards. A kill at any moment leaves the previous
    set or the new one, whole; :func:`read_file_set` reads it back and checks the hashes.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if "files" in state:
        raise ValueError("state must not have a 'files' key: write_file_set records the files there")
    token = secrets.token_hex(4)
    entries: dict[str, dict[str, str]] = {}
    for name, write in files.items():
        stem, dot, suffix = name.partition(".")
        actual = f"{stem}.{token}.{suffix}" if dot else f"{stem}.{token}"
        atomic_write(d / actual, write)
        entries[name] = {"file": actual, "sha256": file_sha256(d / actual)}
    atomic_write_text(d / manifest, json.dumps({**state, "files": entries}, indent=1, allow_nan=False))
    keep = {e["file"] for e in entries.values()}
    for name in files:
        stem, dot, suffix = name.partition(".")
        ours = re.compile(re.escape(stem) + r"\.[0-9a-f]{8}" + (re.escape(dot + suffix) if dot else ""))
        for old in d.iterdir():
            if old.name not in keep and ours.fullmatch(old.name):
                with contextlib.suppress(OSError):
                    old.unlink()
        legacy = d / name  # a set written before manifests named their files
        if legacy.is_file() and legacy.name != manifest:
            with contextlib.suppress(OSError):
                legacy.unlink()


def read_file_set(directory: PathLike, *, manifest: str = "state.json", what: str = "checkpoint",
                  legacy: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read a set written by :func:`write_file_set`: its state and each file's path (hash-checked).

    A manifest without ``"files"`` (written before sets had manifests) names the files
    ``legacy`` under their logical names; they are used as they are.

    Raises
    ------
    FileNotFoundError
        if the manifest or a file it names is missing.
    FileFormatError
        if a file's sha256 differs from the manifest's: the set is not whole.
    """
    d = Path(directory)
    state = read_json_file(d / manifest, what=f"{what} manifest")
    if not isinstance(state, dict):
        raise FileFormatError(f"{d / manifest}: a {what} manifest must be a JSON object, got {type(state).__name__}")
    entries = state.pop("files", None)
    if entries is None:
        paths = {name: d / name for name in legacy}
        for p in paths.values():
            if not p.is_file():
                raise FileNotFoundError(f"{what} file {str(p)!r} is missing")
        return state, paths
    if not isinstance(entries, dict):
        raise FileFormatError(f"{d / manifest}: 'files' must be an object, got {entries!r}")
    paths = {}
    for name, e in entries.items():
        if not (isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str)) \
                or Path(e["file"]).name != e["file"]:
            raise FileFormatError(f"{d / manifest}: bad entry for {name!r}: {e!r}")
        p = d / e["file"]
        if not p.is_file():
            raise FileNotFoundError(f"{what} file {str(p)!r}, named by {str(d / manifest)!r}, is missing")
        if file_sha256(p) != e["sha256"]:
            raise FileFormatError(f"{what} file {str(p)!r} does not match its sha256 in {str(d / manifest)!r}: "
                                  "the set is not whole; start over (--force)")
        paths[name] = p
    return state, paths


# ---------------------------------------------------------------- outputs a writer made outside its directory


def _marker_data(marker_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing, or an older plain-text marker: no records
    return data if isinstance(data, dict) else {}


def record_output(out: PathLike, *, marker: str, writer: str, path: PathLike) -> None:
    """Record in ``out``'s ``marker`` that ``writer`` wrote ``path`` (its absolute path and sha256)."""
    m = Path(out) / marker
    data = _marker_data(m)
    found = data.get("outputs")
    outputs: dict[str, str] = dict(found) if isinstance(found, dict) else {}
    outputs[str(Path(path).resolve())] = file_sha256(path)
    atomic_write_text(m, json.dumps({"writer": writer, **data, "outputs": outputs}, indent=1) + "\n")


def wrote_output(out: PathLike, *, marker: str, path: PathLike) -> bool:
    """Whether ``path`` is, byte for byte, a file recorded with :func:`record_output` in ``out``'s marker."""
    p = Path(path)
    if not p.is_file():
        return False
    outputs = _marker_data(Path(out) / marker).get("outputs")
    recorded = outputs.get(str(p.resolve())) if isinstance(outputs, dict) else None
    return recorded is not None and recorded == file_sha256(p)


# ---------------------------------------------------------------- bounded readers of user files


class FileFormatError(ValueError):
    """A file that cannot be read as what it should be; the message names the file and the fix."""


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def read_text_file(path: PathLike, *, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The text of ``path``: UTF-8 (a leading BOM is dropped), at most ``max_bytes`` bytes.

    Raises
    ------
    FileNotFoundError
        if ``path`` is not an existing file.
    FileFormatError
        if it is larger than ``max_bytes`` or not UTF-8 (naming the line and column of the
        first bad byte and how to re-save it).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    if not p.is_file():
        raise FileFormatError(f"{what} {str(p)!r} is not a file")
    with p.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileFormatError(f"{what} {str(p)!r} is larger than the limit of {_size(max_bytes)}")
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):  # before UTF-16: FF FE starts both
        raise FileFormatError(f"{what} {str(p)!r} is UTF-32; re-save it as UTF-8")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FileFormatError(f"{what} {str(p)!r} is UTF-16; re-save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start
        line = data.count(b"\n", 0, start) + 1
        col = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise FileFormatError(
            f"{what} {str(p)!r} is not UTF-8 (byte 0x{data[start]:02x} at line {line}, column {col}); "
            "re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > NEW`)"
        ) from None


def split_lines(text: str) -> list[str]:
    """The lines of ``text``, split at LF (and CRLF) only — not at the other characters
    :meth:`str.splitlines` breaks at (U+2028, U+2029, U+0085, form feed, vertical tab, U+001C–U+001E),
    which are text inside a line of a prompt or JSONL file."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: ~4x faster than an alternation
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (0 for a scalar), without parsing it.

    Brackets inside strings are not counted; in malformed text the count is an estimate.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    steps = (1 if c in "[{" else -1 for c in brackets)
    return max(itertools.accumulate(steps), default=0)


def parse_json(text: str, *, source: str, max_depth: int = MAX_JSON_DEPTH, first_line: int = 1) -> Any:
    """``json.loads(text)`` with a nesting limit checked first and errors that name
    ``source``, the line (counted from ``first_line``) and the column."""
    opening = text.count("[") + text.count("{")  # cheap bound: fewer brackets than the limit, no scan needed
    depth = json_depth(text) if opening > max_depth else opening
    if depth > max_depth:
        raise FileFormatError(f"{source}: JSON nested {depth} levels deep, more than the limit of {max_depth}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{source}:{err.lineno + first_line - 1}:{err.colno}: invalid JSON: {err.msg}") from None
    except RecursionError:  # the scan's estimate was off; never let the parser's recursion escape
        raise FileFormatError(f"{source}: JSON nested too deeply to read") from None


def read_json_file(path: PathLike, *, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES,
                   max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in ``path``, read with :func:`read_text_file`'s and :func:`parse_json`'s limits."""
    text = read_text_file(path, what=what, max_bytes=max_bytes)
    return parse_json(text, source=str(path), max_depth=max_depth)
