"""What a ``melbo discover`` run keeps in its ``--out``: the marker that makes the directory
melbo's (what ``--force`` may replace), the completions cache a resumed run reuses, read and
checked in one place, and the checks that run before a model loads."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from melbo.errors import UserError
from melbo.features import Features
from melbo.jobs.discover_config import DiscoverConfig
from melbo.store.io import MAX_TEXT_BYTES, check_output, read_json_file

logger = logging.getLogger(__name__)

__all__ = ["DISCOVER_MARKER", "check_out_dir", "check_resumable", "read_completions_cache"]

DISCOVER_MARKER = ".melbo-discover"


def _cached_completions(path: Path, key: str, n_vectors: dict[str, int], scales: Sequence[float],
                        n_prompts: int) -> dict[str, Any]:
    """What ``completions.json`` holds for a resumed run with ``key``: the unsteered completions
    and every ``"<kind>@<scale>"`` entry with one list of ``n_prompts`` strings per vector;
    anything else (another run's key, an unreadable file, an entry cut short or of the wrong
    shape) is left out, to be generated again, with a warning."""
    try:
        old = read_completions_cache(path)  # the file's format, checked in one place
    except (OSError, ValueError) as err:
        logger.warning("not reusing %s: %s", path, err)
        return {}
    if old.get("key") != key:
        return {}

    def texts(v: Any) -> bool:
        return isinstance(v, list) and len(v) == n_prompts and all(isinstance(t, str) for t in v)

    kept: dict[str, Any] = {}
    if texts(old.get("unsteered")):
        kept["unsteered"] = old["unsteered"]
    for kind, n in n_vectors.items():
        for scale in scales:
            name = f"{kind}@{scale:g}"
            entry = old.get(name)
            if isinstance(entry, list) and len(entry) == n and all(texts(v) for v in entry):
                kept[name] = entry
    dropped = sorted(set(old) - set(kept) - {"key"})
    if dropped:
        logger.warning("%s: generating %s again (missing or not %d completions per vector)", path, dropped, n_prompts)
    return kept


def check_out_dir(out: Path, *, force: bool, resume: bool,
                  inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
    """Refuse a non-empty ``out`` that no discover run wrote (even with ``force``), an earlier
    run's ``out`` without ``force``/``resume``, and an ``out`` that is, is inside or holds one of
    ``inputs`` (:func:`melbo.store.io.check_output`)."""
    check_output(out, flag="--out", writer="melbo discover", ours=DISCOVER_MARKER, directory=True, force=force,
                 resume=resume, resumable=True, inputs=inputs)


def read_completions_cache(path: Path) -> dict[str, Any]:
    """``OUT/completions.json`` as discover wrote it — ``{"key": str, "unsteered": [str, …],
    "features@S"/"random@S": [[str, …], …]}`` — or a :class:`~melbo.errors.UserError` naming the
    file and what is wrong (a resumed run would otherwise fail half-way or rank junk)."""
    data = read_json_file(path, what="completions cache", max_bytes=MAX_TEXT_BYTES)

    def bad(what: str) -> UserError:
        return UserError(f"{path}: {what}, so it is not a completions cache written by melbo discover; "
                         "remove it or start over (--force)")

    if not isinstance(data, dict):
        raise bad(f"holds a JSON {type(data).__name__}, not an object")
    if not isinstance(data.get("key"), str):
        raise bad(f"its 'key' is {data.get('key')!r}, not a string")
    for k, v in data.items():
        if k == "key":
            continue
        if k == "unsteered":
            if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
                raise bad(f"'unsteered' is {str(v)[:40]!r}, not a list of strings")
        elif k.partition("@")[0] in ("features", "random"):
            if not isinstance(v, list) or not all(isinstance(ts, list) and all(isinstance(t, str) for t in ts) for ts in v):
                raise bad(f"{k!r} is {str(v)[:40]!r}, not a list of lists of strings")
        else:
            raise bad(f"it has an unknown entry {k!r}")
    return data


def check_resumable(out: Path, cfg: DiscoverConfig) -> None:
    """Before a model loads: what ``discover(resume=True)`` would reuse in ``out`` can be read —
    its features directory (whole: its tensors match their recorded sha256) and its completions
    cache (:func:`read_completions_cache`). Missing stages are simply redone."""
    feat_dir = out / "features"
    if (feat_dir / "config.json").is_file():
        Features.load(feat_dir)
    if (out / "completions.json").is_file():
        read_completions_cache(out / "completions.json")
