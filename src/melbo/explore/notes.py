"""The user's labels and notes per feature, kept in one file in the run directory.

``DIR/explore-notes.json``::

    {"format": "melbo-explore-notes/1",
     "features": {"3": {"label": "pirate talk", "note": "strongest at 2 R"}, ...}}

Every change rewrites the file atomically (:func:`melbo.store.io.atomic_write_text`), so a crash
never leaves half a file; the features themselves are never touched. A file that exists but
cannot be read is an error at start-up, never silently replaced.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from melbo.store.io import atomic_write_text

__all__ = ["MAX_LABEL", "MAX_NOTE", "NOTES_FILE", "NOTES_FORMAT", "Notes"]

NOTES_FILE = "explore-notes.json"
NOTES_FORMAT = "melbo-explore-notes/1"
MAX_LABEL = 200
MAX_NOTE = 20_000


def _check_text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name} has {len(value)} characters; at most {limit} are kept")
    return value


class Notes:
    """Labels and notes of ``n_features`` features, stored in ``directory / NOTES_FILE``."""

    def __init__(self, directory: str | Path, n_features: int) -> None:
        self.path = Path(directory) / NOTES_FILE
        self.n_features = n_features
        self._lock = threading.Lock()
        self._data: dict[int, dict[str, str]] = self._read()

    def _read(self) -> dict[int, dict[str, str]]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.path} cannot be read ({err}); fix or move it — it is never overwritten") from err
        if not isinstance(raw, dict) or raw.get("format") != NOTES_FORMAT or not isinstance(raw.get("features"), dict):
            raise ValueError(f"{self.path} is not a melbo explore notes file (format {NOTES_FORMAT!r}); "
                             "move it away — it is never overwritten")
        out: dict[int, dict[str, str]] = {}
        for key, val in raw["features"].items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(val, dict)):
                raise ValueError(f"{self.path}: bad entry {key!r}: expected a feature index and an object")
            out[int(key)] = {"label": str(val.get("label", "")), "note": str(val.get("note", ""))}
        return out

    def get(self, k: int) -> dict[str, str]:
        with self._lock:
            return dict(self._data.get(k, {"label": "", "note": ""}))

    def all(self) -> dict[int, dict[str, str]]:
        with self._lock:
            return {k: dict(v) for k, v in self._data.items()}

    def set(self, k: int, *, label: object, note: object) -> dict[str, str]:
        """Store feature ``k``'s label and note (empty both: forget it) and write the file."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.n_features:
            raise ValueError(f"feature {k!r} is out of range: 0 ≤ feature < {self.n_features}")
        entry = {"label": _check_text("label", label, MAX_LABEL).strip(), "note": _check_text("note", note, MAX_NOTE)}
        with self._lock:
            if entry["label"] or entry["note"].strip():
                self._data[k] = entry
            else:
                self._data.pop(k, None)
            doc: dict[str, Any] = {"format": NOTES_FORMAT,
                                   "features": {str(i): self._data[i] for i in sorted(self._data)}}
            atomic_write_text(self.path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        return dict(entry)
