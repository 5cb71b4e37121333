"""Where melbo keeps what it computes once and reuses: converted models, cached runs.

The cache root is ``$MELBO_CACHE`` when that is set (and not empty), else the platform's
user cache directory for ``melbo`` (``~/.cache/melbo`` on Linux,
``~/Library/Caches/melbo`` on macOS, ``%LOCALAPPDATA%\\melbo\\Cache`` on Windows).
Everything under it can be deleted at any time; melbo rebuilds what it needs.

Several processes may share one cache (jobs of a lab on one file system). Every writer of
an entry holds :func:`cache_lock` on it while it checks whether the entry is done and, if
not, makes it: a second process that wants the same entry waits (saying so) and then finds
it finished and reuses it, instead of writing it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV_VAR", "cache_dir", "cache_lock", "lock_path"]

logger = logging.getLogger(__name__)

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


def lock_path(entry: str | os.PathLike[str]) -> Path:
    """The lock file of the cache entry ``entry``: ``.<name>.lock`` beside it.

    The lock file is kept after use (deleting it could let two processes lock two
    different files of the same name); it is empty and a few bytes on disk.
    """
    entry = Path(entry)
    return entry.with_name(f".{entry.name}.lock")


_LOCKS: dict[str, Any] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def cache_lock(entry: str | os.PathLike[str], *, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on the cache entry ``entry`` (a file or directory) inside the block.

    The one lock of melbo's cache writers: whoever checks whether ``entry`` is done and makes
    it when it is not does both inside this block, so that only one process at a time
    writes it and a second one, after waiting, finds it finished. ``what`` names the work
    in the waiting message (e.g. ``"converting the packaged model 'gemma-3-270m'"``).
    Yields the lock file's path (:func:`lock_path`; its parent directory is created).

    The lock is an OS file lock (``flock`` on POSIX, ``LockFileEx`` on Windows, through the
    ``filelock`` package): the OS releases it when its holder exits, also when it is
    killed, so a killed writer never leaves the entry locked. Held again by the same thread inside
    the block (the demo's build of its organism, which locks the organism too) it re-enters;
    another thread of this process waits like another process. On a file system without
    ``flock`` (some network mounts) newer ``filelock`` versions fall back to a lock file
    that exists while held; where it cannot lock at all the block runs unlocked, with a
    warning: the writers' atomic renames still keep every entry whole.
    """
    from filelock import FileLock, Timeout

    path = lock_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCKS_GUARD:  # one FileLock per lock file in this process: a nested hold in the same thread re-enters
        lock = _LOCKS.setdefault(str(path.absolute()), FileLock(str(path)))
    locked = True
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.warning("waiting for another process to finish %s in %s (it holds the lock file %s)",
                           what, entry, path)
            start = time.monotonic()
            lock.acquire()
            logger.warning("lock file %s acquired after %.0f s of waiting", path, time.monotonic() - start)
    except NotImplementedError as err:  # filelock: this file system has no flock
        logger.warning("cannot lock %s (%s); %s without a lock", path, err, what)
        locked = False
    try:
        yield path
    finally:
        if locked:
            lock.release()
