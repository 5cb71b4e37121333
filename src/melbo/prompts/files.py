"""Read prompt files: ``.txt`` (one prompt per line), ``.json`` (a list of strings or of
chat conversations), ``.jsonl`` (one string or ``{"prompt"/column: …}`` per line) and
``.csv`` (a named column, default ``goal``). Lines end at LF or CRLF only, never inside a
line at U+2028, a form feed or another character :meth:`str.splitlines` breaks at.

Files are read with :mod:`melbo.store.io`'s limits (size, JSON nesting; UTF-8 with or without a
BOM); every error is a ``ValueError`` (:class:`melbo.store.io.FileFormatError`) naming the file,
the line (and column) and what is valid. CSV is parsed strictly: a quoted field that is
never closed is an error at the line it starts on, never one prompt swallowing the rest
of the file; a field may be as large as the file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from melbo.errors import UserError, check_conversation, check_prompts
from melbo.store.io import (
    MAX_JSON_DEPTH,
    MAX_TEXT_BYTES,
    FileFormatError,
    parse_json,
    read_text_file,
    split_lines,
)

SUFFIXES = (".txt", ".json", ".jsonl", ".csv")


def read_prompts(path: str | Path, *, column: str = "goal", limit: int | None = None,
                 max_bytes: int = MAX_TEXT_BYTES, max_depth: int = MAX_JSON_DEPTH) -> list[Any]:
    """Return the prompts in ``path`` (strings, or lists of chat messages for JSON).

    Raises
    ------
    FileNotFoundError
        if ``path`` does not exist.
    ValueError
        (:class:`melbo.store.io.FileFormatError`) for an unsupported suffix, a file over
        ``max_bytes`` or nested deeper than ``max_depth``, text that is not UTF-8,
        malformed JSON/JSONL/CSV (with the line), a missing column, or no prompts.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise FileFormatError(f"{p}: unsupported prompt file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    text = read_text_file(p, what="prompt file", max_bytes=max_bytes)
    if suffix == ".txt":
        prompts: list[Any] = [line.strip() for line in split_lines(text) if line.strip()]
    elif suffix == ".json":
        data = parse_json(text, source=str(p), max_depth=max_depth)
        if not isinstance(data, list):
            raise FileFormatError(f"{p}: expected a JSON list of prompts, got {type(data).__name__}")
        prompts = [_from_record(x, column, p, f"entry {i}") for i, x in enumerate(data)]
    elif suffix == ".jsonl":
        prompts = [
            _from_record(parse_json(line, source=str(p), max_depth=max_depth, first_line=n), column, p, f"line {n}")
            for n, line in enumerate(split_lines(text), start=1) if line.strip()
        ]
    else:
        prompts = _read_csv(text, p, column)
    try:
        check_prompts(prompts, str(p))  # the one prompt-list rule, as every entry that takes prompts checks it
    except UserError as err:
        raise FileFormatError(str(err)) from None
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            _check_text(prompt, p, i)
    return prompts[:limit] if limit is not None else prompts


def _check_text(prompt: str, p: Path, i: int) -> None:
    """Refuse a prompt no tokenizer can take: not encodable as UTF-8 (a lone surrogate from a
    JSON ``\\ud800`` escape) or nothing but control characters (e.g. NUL bytes)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        raise FileFormatError(f"{p}: prompt {i} holds {prompt[err.start:err.end]!r}, which is not valid Unicode text "
                              "(a lone surrogate escape?); fix or remove it") from None
    if prompt and all(ord(c) < 32 and c not in "\t\n\r" for c in prompt):
        raise FileFormatError(f"{p}: prompt {i} holds only control characters ({prompt[:8]!r}); "
                              "is this a binary file? Give text prompts")


def _read_csv(text: str, p: Path, column: str) -> list[str]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, len(text) + 1))  # a field may be as large as the file
    rows: list[list[str]] = []
    start = 1  # the line the current record starts on
    try:
        for row in reader:
            rows.append(row)
            start = reader.line_num + 1
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise FileFormatError(
                f"{p}:{start}: a quoted field starts here and is never closed (a missing '\"'); "
                "close it, or double a quote inside a quoted field as \"\""
            ) from None
        raise FileFormatError(f"{p}:{start}: malformed CSV: {err}") from None
    finally:
        csv.field_size_limit(old_limit)
    if not rows:
        raise FileFormatError(f"{p} contains no prompts (the file is empty)")
    header = rows[0]
    names = header if column in header else [h.strip() for h in header]
    if column not in names:
        raise FileFormatError(f"{p}: no column {column!r}; the columns are {header} (choose one with --column)")
    j = names.index(column)
    return [row[j].strip() for row in rows[1:] if j < len(row) and row[j].strip()]


def _from_record(x: Any, column: str, p: Path, where: str) -> Any:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and all(isinstance(m, dict) and "role" in m for m in x):
        try:  # a chat conversation: each message a role and its text
            return check_conversation(x, f"{p}: {where}")
        except UserError as err:
            raise FileFormatError(str(err)) from None
    if isinstance(x, dict):
        for key in (column, "prompt", "instruction", "goal", "text"):
            if isinstance(x.get(key), str):
                extra = x.get("input")
                return x[key] + (f"\n\n{extra}" if isinstance(extra, str) and extra else "")
    raise FileFormatError(f"{p}: {where} is not a prompt string, a chat conversation or a record with {column!r}")
