"""The explorer behind the web app: a run, its notes and one generation worker, no HTTP.

Everything the pages ask for is a method here (the HTTP layer, :mod:`melbo.explore.app`, only
parses, checks and encodes), so the behaviour is testable without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from melbo.explore.engine import CACHE_SIZE, MAX_QUEUE, Engine
from melbo.explore.export import export_subset
from melbo.explore.notes import Notes
from melbo.explore.run import ExploreRun

__all__ = ["MAX_QUERY", "Explorer"]

MAX_QUERY = 200


class Explorer:
    """``run`` explored with ``model``/``tokenizer``: the feature table, notes, search,
    generation (:class:`~melbo.explore.engine.Engine`), score curves and exports."""

    def __init__(self, run: ExploreRun, model: nn.Module, tokenizer: Any, *, max_new_tokens: int = 32,
                 max_queue: int = MAX_QUEUE, cache_size: int = CACHE_SIZE) -> None:
        self.run = run
        self.notes = Notes(run.directory, run.features.n_factors)
        self.engine = Engine(model, tokenizer, run.features, chat=run.chat, seen=run.seen, max_queue=max_queue,
                             cache_size=cache_size)
        self.max_new_tokens = max_new_tokens

    def close(self) -> None:
        self.engine.close()

    def summary(self) -> dict[str, Any]:
        return {**self.run.summary(), "max_new_tokens": self.max_new_tokens, "status": self.engine.status()}

    def rows(self) -> list[dict[str, Any]]:
        """The feature table: scores and the user's label and note, one row per feature."""
        notes = self.notes.all()
        return [{**r, **notes.get(r["index"], {"label": "", "note": ""})} for r in self.run.rows()]

    def search(self, query: str, *, per_feature: int = 3) -> list[dict[str, Any]]:
        """Features whose completions seen so far contain ``query`` (case-insensitive), with
        up to ``per_feature`` examples each; most matches first."""
        q = query.strip().casefold()
        if not 1 <= len(q) <= MAX_QUERY:
            raise ValueError(f"a search needs 1..{MAX_QUERY} characters, got {len(q)}")
        hits: dict[int, list[dict[str, Any]]] = {}
        for (k, scale, av, au, prompt, _n, _c), text in self.engine.completions():
            if k is not None and q in text.casefold():
                hits.setdefault(k, []).append({"scale": scale, "ablate_v": av, "ablate_u": au, "prompt": prompt,
                                               "text": text})
        out = [{"feature": k, "count": len(ex), "examples": sorted(ex, key=lambda e: e["scale"])[:per_feature]}
               for k, ex in hits.items()]
        return sorted(out, key=lambda h: (-h["count"], h["feature"]))

    def curve(self, feature: int, *, max_new_tokens: int, ablate_v: bool = False, ablate_u: bool = False) -> dict[str, Any]:
        """Behaviour score against scale: measured here on the run's prompts, and by discover."""
        m = self.run.features.n_factors
        if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < m:
            raise ValueError(f"feature {feature!r} is out of range: 0 ≤ feature < {m}")
        return {"session": self.engine.curve(feature, self.run.prompts, max_new_tokens, ablate_v, ablate_u),
                "discover": [{"scale": s, "score": v} for s, v in self.run.discover_curves.get(feature, [])]}

    def export(self, indices: Sequence[int]) -> Path:
        """The chosen features as a new features directory under the run directory."""
        labels = {k: v["label"] for k, v in self.notes.all().items()}
        return export_subset(self.run.features, indices, self.run.directory, labels=labels,
                             source=str(self.run.features_dir))
