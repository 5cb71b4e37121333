"""Where melbo keeps what it computes once and reuses: converted models, cached runs.

The cache root is ``$MELBO_CACHE`` when that is set (and not empty), else the platform's
user cache directory for ``melbo`` (``~/.cache/melbo`` on Linux,
``~/Library/Caches/melbo`` on macOS, ``%LOCALAPPDATA%\\melbo\\Cache`` on Windows).
Everything under it can be deleted at any time; melbo rebuilds what it needs.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "cache_dir"]

CACHE_ENV_VAR = "MELBO_CACHE"
"""Environment variable that overrides the cache root."""


def cache_dir() -> Path:
    """The root of melbo's cache, read from the environment on every call.

    Returns
    -------
    Path
        ``$MELBO_CACHE`` (with ``~`` expanded, made absolute) when set and not empty, else
        ``platformdirs.user_cache_dir("melbo")``. The directory is not created here:
        whoever writes under it creates what it needs.
    """
    override = os.environ.get(CACHE_ENV_VAR, "").strip()
    if override:
        return Path(override).expanduser().absolute()
    import platformdirs  # only here: with $MELBO_CACHE set melbo runs without it (e.g. on a bare GPU image)

    return Path(platformdirs.user_cache_dir("melbo", appauthor=False))
