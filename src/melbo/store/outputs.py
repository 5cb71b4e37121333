"""melbo's own outputs, recognised by what melbo writes in them: what ``--force`` may replace.

:func:`melbo.store.io.check_output` lets a command replace an existing path only when it is melbo's
own earlier output of the same kind; each function here says whether ``path`` is one, from its
content alone (no torch, no model, a bounded read), and never raises: an unreadable or foreign
file is simply not melbo's. A user's file that happens to look exactly like melbo's output
would be taken for one; nothing else is.

* a features directory (``melbo train``): ``config.json`` with melbo's features keys, or an
  interrupted fit's ``checkpoint/state.json``;
* an organism directory (``melbo organism build``): ``recipe.json`` or ``organism.json``
  recording its ``kind``;
* an HTML report (``melbo report``, ``melbo demo``): the ``<meta name="generator"
  content="melbo …">`` tag of melbo's page template;
* a llama.cpp control vector (``melbo export --format gguf``): a GGUF of architecture
  ``controlvector`` with melbo's ``melbo.*`` provenance keys;
* an lm-eval steering file (``melbo export --format lm-eval``): a torch zip whose pickle holds
  the ``steering_vector`` entries and melbo's ``melbo`` provenance;
* an analysis (``melbo analyze``): JSON with ``"format": "melbo-analysis/…"``;
* a ranking (``melbo rank --out``): a JSON list of ``{"rank", "feature", "score"}`` rows;
* monitor scores (``melbo monitor --out``): JSON lines ``{"index", "prompt", "score", "flagged"}``;
* a saved monitor (``melbo monitor --save``): safetensors whose metadata has ``melbo_monitor``.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

__all__ = [
    "analysis_file",
    "control_vector_file",
    "features_dir",
    "lm_eval_file",
    "monitor_file",
    "monitor_scores_file",
    "organism_dir",
    "rank_file",
    "report_file",
]

_HEAD = 1 << 16  # bytes read to recognise a file by its head
_JSON_LIMIT = 64 << 20  # a JSON output melbo writes is far smaller

FEATURES_KEYS = ("R", "method", "source_layer", "target_layer", "format_version")
"""Keys of every features ``config.json`` (= melbo.features._REQUIRED_CONFIG_KEYS; a test checks)."""
ANALYSIS_PREFIX = "melbo-analysis/"
"""The ``format`` of an analysis file, without its version (melbo.evaluate.analysis.ANALYSIS_FORMAT)."""


def _head(path: Path, n: int = _HEAD) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _json(path: Path) -> Any:
    try:
        if not path.is_file() or path.stat().st_size > _JSON_LIMIT:
            return None
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return None


def features_dir(path: Path) -> bool:
    """A features directory (``config.json`` with melbo's features keys), or one holding an
    interrupted fit's checkpoint (``checkpoint/state.json`` with its ``iteration``)."""
    cfg = _json(path / "config.json")
    if isinstance(cfg, dict) and all(k in cfg for k in FEATURES_KEYS):
        return True
    state = _json(path / "checkpoint" / "state.json")
    return isinstance(state, dict) and "iteration" in state and "config" in state


def organism_dir(path: Path) -> bool:
    """An organism build's directory: its ``recipe.json`` (written first) or ``organism.json``
    records the organism's ``kind``."""
    for name in ("recipe.json", "organism.json"):
        rec = _json(path / name)
        if isinstance(rec, dict) and isinstance(rec.get("kind"), str):
            return True
    return False


def report_file(path: Path) -> bool:
    """An HTML page of melbo's report template (its generator tag)."""
    head = _head(path, 1 << 14)
    return head.lstrip().lower().startswith(b"<!doctype html") and b'<meta name="generator" content="melbo' in head


def control_vector_file(path: Path) -> bool:
    """A control-vector GGUF melbo exported (architecture ``controlvector``, ``melbo.*`` keys)."""
    head = _head(path)
    return head.startswith(b"GGUF") and b"controlvector.layer_count" in head and b"melbo.version" in head


def lm_eval_file(path: Path) -> bool:
    """An lm-eval steering file melbo exported: a torch zip whose pickle names ``steering_vector``
    and melbo's ``melbo`` provenance."""
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith("data.pkl") and i.file_size < _JSON_LIMIT]
            if len(pickles) != 1:
                return False
            data = zf.read(pickles[0])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return b"steering_vector" in data and b"melbo" in data and b"convention" in data


def analysis_file(path: Path) -> bool:
    """A ``melbo analyze`` result (``"format": "melbo-analysis/…"``)."""
    data = _json(path)
    return isinstance(data, dict) and str(data.get("format", "")).startswith(ANALYSIS_PREFIX)


def rank_file(path: Path) -> bool:
    """A ``melbo rank --out`` ranking: a JSON list of ``{"rank", "feature", "score"}`` rows."""
    data = _json(path)
    return isinstance(data, list) and all(isinstance(r, dict) and set(r) == {"rank", "feature", "score"} for r in data)


_SCORE_KEYS = {"index", "prompt", "score", "flagged"}


def monitor_scores_file(path: Path) -> bool:
    """``melbo monitor --out`` scores: JSON lines ``{"index", "prompt", "score", "flagged"}``
    (an empty file too: no prompts scored)."""
    try:
        if path.stat().st_size > 16 * _JSON_LIMIT:
            return False
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return all(isinstance(row := json.loads(ln), dict) and set(row) == _SCORE_KEYS for ln in lines)
    except (OSError, ValueError, RecursionError):
        return False


def monitor_file(path: Path) -> bool:
    """A monitor ``melbo monitor --save`` wrote: safetensors whose metadata has ``melbo_monitor``."""
    head = _head(path, 8)
    if len(head) < 8:
        return False
    (n,) = struct.unpack("<Q", head)
    if n > _JSON_LIMIT:
        return False
    raw = _head(path, 8 + n)[8:]
    try:
        header = json.loads(raw)
    except ValueError:
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and "melbo_monitor" in meta
