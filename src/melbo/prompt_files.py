"""Read prompt files: ``.txt`` (one prompt per line), ``.json`` (a list of strings or of
chat conversations), ``.jsonl`` (one string or ``{"prompt"/column: …}`` per line) and
``.csv`` (a named column, default ``goal``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

SUFFIXES = (".txt", ".json", ".jsonl", ".csv")


def read_prompts(path: str | Path, *, column: str = "goal", limit: int | None = None) -> list[Any]:
    """Return the prompts in ``path`` (strings, or lists of chat messages for JSON)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        prompts: list[Any] = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{p}: expected a JSON list of prompts, got {type(data).__name__}")
        prompts = [_from_record(x, column, p, i) for i, x in enumerate(data)]
    elif suffix == ".jsonl":
        lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        prompts = [_from_record(json.loads(line), column, p, i) for i, line in enumerate(lines)]
    elif suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise ValueError(
                    f"{p}: no column {column!r}; the columns are {reader.fieldnames} "
                    "(choose one with --column)"
                )
            prompts = [row[column].strip() for row in reader if row[column] and row[column].strip()]
    else:
        raise ValueError(f"{p}: unsupported prompt file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    if not prompts:
        raise ValueError(f"{p} contains no prompts")
    return prompts[:limit] if limit is not None else prompts


def _from_record(x: Any, column: str, p: Path, i: int) -> Any:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and all(isinstance(m, dict) and "role" in m for m in x):
        return x  # a chat conversation
    if isinstance(x, dict):
        for key in (column, "prompt", "instruction", "goal", "text"):
            if isinstance(x.get(key), str):
                extra = x.get("input")
                return x[key] + (f"\n\n{extra}" if isinstance(extra, str) and extra else "")
    raise ValueError(f"{p}: entry {i} is not a prompt string, a chat conversation or a record with {column!r}")
