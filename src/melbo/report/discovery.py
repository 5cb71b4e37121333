"""A self-contained HTML page for a :class:`melbo.jobs.discover.Discovery`: the behaviours found,
best first, each with its features, rate, random-vector control and examples. Rendered from
the autoescaped template ``templates/discovery.html`` (see :mod:`melbo.report.templating`):
every piece of model text is escaped (completions are untrusted); no scripts, no external
resources."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from melbo.report.templating import render
from melbo.store.io import atomic_write_text

if TYPE_CHECKING:
    from melbo.evaluate.behaviours import BehaviourGroup
    from melbo.jobs.discover import Discovery

__all__ = ["discovery_html", "write_discovery_report"]


def _group_view(g: BehaviourGroup) -> dict[str, Any]:
    members = ", ".join(f"{v} ({s:g}R)" for v, s in g.members[:8]) + (" …" if len(g.members) > 8 else "")
    return {
        "rank": g.rank,
        "signature": g.signature,
        "score": f"{g.score:.2f}",
        "rate": g.best.rate,
        "consistency": g.best.consistency,
        "information": f"{g.best.information:.1f}",
        "members": members,
        "random_hits": "–" if g.random_hits is None else f"{g.random_hits}/{g.n_random}",
        "vector": g.best.vector,
        "scale": f"{g.best.scale:g}",
        "examples": list(g.examples),
        "description": str(g.description.get("text", "")),
    }


def discovery_html(result: Discovery, *, title: str = "melbo discover", top: int = 10, conclusion: str | None = None) -> str:
    """The page as one HTML string: the ``top`` behaviour groups of ``result``."""
    return render(
        "discovery.html",
        title=title,
        conclusion=conclusion,
        f=result.features,
        n_train=len(result.train_prompts),
        n_eval=len(result.eval_prompts),
        floor=max((c.consistency for c in result.controls), default=None),
        n_controls=len(result.controls),
        groups=[_group_view(g) for g in result.groups[:top]],
    )


def write_discovery_report(result: Discovery, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write :func:`discovery_html` to ``path`` atomically; returns the path."""
    p = Path(path)
    text = discovery_html(result, **kwargs)
    atomic_write_text(p, text)
    return p
