"""Where torch.compile keeps what it compiled for melbo, so a second process reuses it.

``torch.compile`` with the inductor backend persists its work on disk in two caches that
are on by default: the FX-graph cache (the generated and built kernels of each graph) and
the AOTAutograd cache (the forward/backward split, keyed on the traced graph). Both live
under one directory, ``$TORCHINDUCTOR_CACHE_DIR`` (torch's default is a per-user folder
in the system temp directory, which is often wiped). melbo points them at a directory it
owns, ``<melbo cache>/compile`` (see :func:`melbo.store.cache.cache_dir`), but only while its
own compiled layers run: :func:`torch_compile_cache` sets the variable on entry and
restores it on exit, so the user's other ``torch.compile`` calls keep torch's settings.
Nothing is set at import time. A second process with the same directory then skips the
AOTAutograd tracing and kernel generation/building; Dynamo still traces the Python code
(a few seconds per graph). Cache keys include the torch version, the graph and the
compile options, so one directory serves several torch versions; it may be deleted at
any time. Whether a call hit the caches is counted in ``torch._dynamo.utils.counters``
(``counters["inductor"]["fxgraph_cache_hit"]``, ``counters["aot_autograd"]["autograd_cache_hit"]``).

Processes sharing the directory need no lock of melbo's (:func:`melbo.store.cache.cache_lock`
guards the entries melbo writes itself): torch is this cache's only writer, and it writes
every entry under a key of its content through a temporary file and a rename, and builds
each kernel under its own file lock (``torch/_inductor/codecache.py``). Two processes
compiling the same graph at once at worst both compile it; neither sees a partial entry.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from melbo.store.cache import cache_dir

__all__ = ["TORCH_CACHE_ENV_VAR", "default_compile_cache_dir", "resolve_compile_cache", "torch_compile_cache"]

TORCH_CACHE_ENV_VAR = "TORCHINDUCTOR_CACHE_DIR"
"""The variable torch reads, on every cache access, for the root of its compile caches."""


def default_compile_cache_dir() -> Path:
    """``<melbo cache>/compile``: melbo's compile cache (not created here)."""
    return cache_dir() / "compile"


def resolve_compile_cache(compile_cache: bool | str | os.PathLike[str] | None) -> Path | None:
    """The directory meant by a ``compile_cache`` argument.

    ``True`` or ``None``: :func:`default_compile_cache_dir`; ``False``: None (leave torch's
    own setting alone); a path: that directory, made absolute.
    """
    if compile_cache is None or compile_cache is True:
        return default_compile_cache_dir()
    if compile_cache is False:
        return None
    if isinstance(compile_cache, (str, os.PathLike)):
        return Path(compile_cache).expanduser().absolute()
    raise ValueError(f"compile_cache={compile_cache!r}: must be True, False or a directory")


@contextlib.contextmanager
def torch_compile_cache(directory: Path | None) -> Iterator[None]:
    """Point torch's persistent compile caches at ``directory`` inside the block.

    ``None`` changes nothing. The previous value of ``$TORCHINDUCTOR_CACHE_DIR`` (or its
    absence) is restored on exit, also on errors. The FX-graph and AOTAutograd caches read
    the variable on every access, so switching it is enough (torch patches it the same way
    for its own ``fresh_cache``); a few small side caches, such as autotuning timings, keep
    the directory they first saw in the process.
    """
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    old = os.environ.get(TORCH_CACHE_ENV_VAR)
    os.environ[TORCH_CACHE_ENV_VAR] = str(directory)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TORCH_CACHE_ENV_VAR, None)
        else:
            os.environ[TORCH_CACHE_ENV_VAR] = old
