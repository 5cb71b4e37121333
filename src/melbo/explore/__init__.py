"""``melbo explore``: a local web app to browse, steer and compare a run's features.

* :mod:`melbo.explore.run` — what a run directory holds: features, scores, held-out prompts;
* :mod:`melbo.explore.notes` — the user's labels and notes, one atomically written file;
* :mod:`melbo.explore.export` — a chosen subset saved as a new features directory;
* :mod:`melbo.explore.engine` — the one generation worker: queue, cache, streamed tokens;
* :mod:`melbo.explore.explorer` — all of the above behind one object, no HTTP;
* :mod:`melbo.explore.app` — the Starlette app (token gate, JSON API, Server-Sent Events);
* :mod:`melbo.explore.server` — serving it on 127.0.0.1 with uvicorn.

The web modules need the ``explore`` extra (``pip install 'melbo[explore]'``: Starlette and
uvicorn); the others need only melbo.
"""

from __future__ import annotations

from melbo._lazy import lazy_exports

_EXPORTS = {
    "ExploreRun": "melbo.explore.run:ExploreRun",
    "load_run": "melbo.explore.run:load_run",
    "Notes": "melbo.explore.notes:Notes",
    "export_subset": "melbo.explore.export:export_subset",
    "Engine": "melbo.explore.engine:Engine",
    "GenRequest": "melbo.explore.engine:GenRequest",
    "Explorer": "melbo.explore.explorer:Explorer",
    "create_app": "melbo.explore.app:create_app",
    "serve": "melbo.explore.server:serve",
    "BackgroundServer": "melbo.explore.server:BackgroundServer",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
