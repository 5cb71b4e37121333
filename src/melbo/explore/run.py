"""What ``melbo explore`` reads from a run directory, and the feature table it shows.

``DIR`` is either a features directory (``melbo train --out``: ``features.safetensors`` +
``config.json``) or a ``melbo discover`` run (``DIR/features/`` next to ``behaviours.json`` and
``completions.json``). Found in ``DIR`` and used when present:

* ``behaviours.json`` (discover) — each feature's behaviour score, rate and signature at every
  scale it was steered at, the behaviour group it belongs to, and the held-out prompts;
* ``completions.json`` (discover) — the completions behind those scores (seeded into the
  explorer's cache and its text search);
* ``analysis.json`` (``melbo analyze``) — each feature's mean jailbreak score.

Nothing here writes; nothing here needs a model. Model text (signatures, completions) is
untrusted and passed on as plain strings; escaping is the page's job.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melbo.features import CONFIG_FILE, TENSORS_FILE, Features

__all__ = ["Column", "ExploreRun", "features_dir_of", "load_run"]

logger = logging.getLogger(__name__)


def features_dir_of(directory: str | Path) -> Path:
    """The features directory of ``directory``: itself, or its ``features/`` (a discover run)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{str(d)!r} is not a directory: give a features directory or a melbo discover run")
    for cand in (d, d / "features"):
        if (cand / TENSORS_FILE).is_file() and (cand / CONFIG_FILE).is_file():
            return cand
    raise FileNotFoundError(
        f"{str(d)!r} holds no features: expected {TENSORS_FILE} and {CONFIG_FILE} in it (melbo train --out) "
        "or in its features/ (melbo discover --out)"
    )


@dataclass(frozen=True)
class Column:
    """One score column of the feature table: key, title, and what it means."""

    key: str
    title: str
    help: str
    kind: str = "number"  # or "text"


@dataclass(frozen=True)
class ExploreRun:
    """A run as the explorer sees it.

    Attributes
    ----------
    directory : the ``DIR`` given (notes and exports live here)
    features_dir : where the features were loaded from
    features : the features
    prompts : the held-out prompts the feature pages steer (discover's, ``--prompts``, or
        melbo's built-in held-out set)
    prompt_source : where ``prompts`` came from, in words
    columns : the score columns of :meth:`rows`, besides the index
    scores : per feature, ``{column key: value}`` (absent: not measured)
    seen : known completions ``(feature or None, scale, prompt, max_new_tokens, chat) → text``
        (discover's ``completions.json``; None: unsteered)
    chat : the chat setting completions were made with (discover's, else ``auto``)
    discover_curves : per feature, ``[(scale, behaviour score)]`` measured by discover
    """

    directory: Path
    features_dir: Path
    features: Features
    prompts: list[str]
    prompt_source: str
    columns: list[Column]
    scores: list[dict[str, Any]]
    seen: dict[tuple[int | None, float, str, int, str], str] = field(default_factory=dict)
    chat: bool | str = "auto"
    discover_curves: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able row per feature: ``index`` and every column's value (None if absent)."""
        return [{"index": k, **{c.key: s.get(c.key) for c in self.columns}} for k, s in enumerate(self.scores)]

    def summary(self) -> dict[str, Any]:
        f = self.features
        return {
            "directory": str(self.directory), "n_features": f.n_factors, "d_model": f.d_model, "R": f.R,
            "method": f.method, "source_layer": f.source_layer, "target_layer": f.target_layer,
            "has_targets": f.U is not None, "model": str(f.model.get("name", "")), "prompts": list(self.prompts),
            "prompt_source": self.prompt_source, "columns": [c.__dict__ for c in self.columns],
            "chat": str(self.chat),
        }


def _read_json(path: Path) -> Any:
    """A run's JSON file, read with :mod:`melbo.store.io`'s limits (size, nesting, UTF-8): errors name the file."""
    from melbo.store.io import MAX_TEXT_BYTES, read_json_file

    return read_json_file(path, what=path.name, max_bytes=MAX_TEXT_BYTES)


def _typed(path: Path, where: str, value: Any, types: type | tuple[type, ...], valid: str) -> Any:
    """``value`` if it is of ``types`` (never a bool for a number), else a one-line error naming the file."""
    from melbo.store.io import FileFormatError

    if isinstance(value, types) and not isinstance(value, bool):
        return value
    raise FileFormatError(f"{path}: {where} is {str(value)[:60]!r}, not {valid}; is it a melbo discover record?")


_NUMBER = (int, float, type(None))


def _check_behaviours(path: Path, beh: Any, m: int) -> None:
    """The fields of a discover ``behaviours.json`` that the explorer reads, of the types discover
    writes; a feature index outside the features' 0 … m − 1 means another run's record."""
    from melbo.store.io import FileFormatError

    if not isinstance(beh, dict) or not isinstance(beh.get("features"), list):
        raise FileFormatError(f"{path} is not a melbo discover record (no 'features' list)")
    _typed(path, "'config'", beh.get("config", {}), dict, "an object")
    prompts = _typed(path, "'eval_prompts'", beh.get("eval_prompts", []), list, "a list of strings")
    for i, p in enumerate(prompts):
        _typed(path, f"eval_prompts[{i}]", p, str, "a string")
    for i, b in enumerate(beh["features"]):
        _typed(path, f"features[{i}]", b, dict, "an object")
        k = _typed(path, f"features[{i}].vector", b.get("vector"), int, "a feature index")
        if not 0 <= k < m:
            raise FileFormatError(f"{path}: features[{i}] is feature {k}, but the features hold {m} (0 … {m - 1}): "
                                  "the record belongs to other features")
        for key in ("scale", "score", "rate"):
            _typed(path, f"features[{i}].{key}", b.get(key), _NUMBER, "a number")
        _typed(path, f"features[{i}].signature", b.get("signature", ""), (str, type(None)), "a string")
    for i, g in enumerate(_typed(path, "'groups'", beh.get("groups", []), list, "a list")):
        _typed(path, f"groups[{i}]", g, dict, "an object")
        _typed(path, f"groups[{i}].rank", g.get("rank"), (int, type(None)), "an integer")
        _typed(path, f"groups[{i}].description", g.get("description", {}), (dict, type(None)), "an object")
        for j, mem in enumerate(_typed(path, f"groups[{i}].members", g.get("members", []), list, "a list")):
            _typed(path, f"groups[{i}].members[{j}]", mem, dict, "an object")
            _typed(path, f"groups[{i}].members[{j}].vector", mem.get("vector"), int, "a feature index")


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def load_run(directory: str | Path, *, prompts: list[str] | None = None, n_prompts: int = 4) -> ExploreRun:
    """Read ``directory`` (module docstring). ``prompts`` (e.g. from ``--prompts``) replace the
    run's held-out prompts; the first ``n_prompts`` are used.

    Raises
    ------
    FileNotFoundError
        when ``directory`` holds no features.
    ValueError
        for an unreadable ``behaviours.json``/``analysis.json``, or ``n_prompts`` < 1.
    """
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts={n_prompts!r}: must be an integer ≥ 1")
    d = Path(directory)
    fdir = features_dir_of(d)
    feats = Features.load(fdir)
    m = feats.n_factors
    columns = [Column("alpha2", "α²", "the transcoder's scale α squared: how strongly the feature's output is used")]
    scores: list[dict[str, Any]] = [{"alpha2": float(a) ** 2} for a in feats.alpha.tolist()]
    if feats.scores:
        columns.append(Column("method_score", "fit score", f"the {feats.method} fit's own per-feature score"))
        for k, v in enumerate(feats.scores):
            scores[k]["method_score"] = _finite(v)

    chat: bool | str = "auto"
    run_prompts: list[str] = []
    source = ""
    seen: dict[tuple[int | None, float, str, int, str], str] = {}
    curves: dict[int, list[tuple[float, float]]] = {}
    bpath = d / "behaviours.json"
    if bpath.is_file():
        beh = _read_json(bpath)
        _check_behaviours(bpath, beh, m)
        cfg = beh.get("config", {})
        chat = cfg.get("chat", "auto") if isinstance(cfg.get("chat"), bool | str) else "auto"
        run_prompts = [str(p) for p in beh.get("eval_prompts", [])]
        source = f"held-out prompts of the discover run ({bpath.name})"
        best: dict[int, dict[str, Any]] = {}
        for b in beh["features"]:
            k, sc, score = b.get("vector"), _finite(b.get("scale")), _finite(b.get("score"))
            if not isinstance(k, int) or not 0 <= k < m or sc is None or score is None:
                continue
            curves.setdefault(k, []).append((sc, score))
            if k not in best or score > best[k]["score"]:
                best[k] = {"score": score, "rate": _finite(b.get("rate")), "signature": str(b.get("signature", "")),
                           "scale": sc}
        for g in beh.get("groups", []):
            for mem in g.get("members", []) if isinstance(g, dict) else []:
                j = mem.get("vector") if isinstance(mem, dict) else None
                if isinstance(j, int) and 0 <= j < m and "group" not in scores[j]:
                    scores[j]["group"] = g.get("rank")
                    desc = g.get("description") if isinstance(g, dict) else None
                    if isinstance(desc, dict) and isinstance(desc.get("text"), str):
                        scores[j]["changed"] = desc["text"]
        columns += [
            Column("behaviour", "behaviour", "discover's behaviour score (consistency of its signature across "
                   "held-out prompts), best over the scales it tried"),
            Column("rate", "rate", "share of held-out prompts whose steered completion says the signature"),
            Column("best_scale", "at scale", "the scale (× R) of that best score"),
            Column("group", "group", "rank of the behaviour group the feature belongs to (1 = top)"),
            Column("signature", "signature", "the phrase the feature makes the model say (model text)", "text"),
            Column("changed", "what changed", "its behaviour group's description: new words, text statistics that "
                   "moved (from the model's text)", "text"),
        ]
        for k, b in best.items():
            scores[k].update(behaviour=b["score"], rate=b["rate"], signature=b["signature"], best_scale=b["scale"])
        for k in curves:
            curves[k].sort()
        seen = _discover_completions(d / "completions.json", run_prompts, cfg, m)

    apath = d / "analysis.json"
    if not apath.is_file():
        apath = fdir / "analysis.json"
    if apath.is_file():
        data = _read_json(apath)
        fs = data.get("feature_scores") if isinstance(data, dict) else None
        if not isinstance(fs, list) or len(fs) != m:
            raise ValueError(f"{apath}: expected 'feature_scores' with one value per feature ({m})")
        conf = data.get("config", {}) if isinstance(data.get("config"), dict) else {}
        a, b = conf.get("token_a", "A"), conf.get("token_b", "B")
        columns.append(Column("analysis", "jailbreak", f"melbo analyze: mean logit({a}) − logit({b}) when the "
                              f"feature is added ({apath.name})"))
        for k, v in enumerate(fs):
            scores[k]["analysis"] = _finite(v)

    if prompts is not None:
        run_prompts, source = [str(p) for p in prompts], "--prompts"
    if not run_prompts:
        from melbo.prompts.builtin import HELDOUT_PROMPTS

        run_prompts, source = list(HELDOUT_PROMPTS), "melbo's built-in held-out prompts"
    return ExploreRun(directory=d, features_dir=fdir, features=feats, prompts=run_prompts[:n_prompts],
                      prompt_source=source, columns=columns, scores=scores, seen=seen, chat=chat,
                      discover_curves=curves)


def _discover_completions(
    path: Path, prompts: list[str], cfg: dict[str, Any], m: int
) -> dict[tuple[int | None, float, str, int, str], str]:
    """discover's cached generations as ``(feature or None, scale, prompt, max_new_tokens, chat) → text``."""
    if not path.is_file() or not prompts:
        return {}
    data = _read_json(path)
    n_tok = cfg.get("max_new_tokens")
    if not isinstance(data, dict) or not isinstance(n_tok, int):
        return {}
    chat = str(cfg.get("chat", "auto"))
    out: dict[tuple[int | None, float, str, int, str], str] = {}

    def put(k: int | None, scale: float, texts: Any) -> None:
        if isinstance(texts, list) and len(texts) == len(prompts):
            for p, t in zip(prompts, texts):
                if isinstance(t, str):
                    out[(k, scale, p, n_tok, chat)] = t

    put(None, 0.0, data.get("unsteered"))
    for key, per in data.items():
        if not key.startswith("features@") or not isinstance(per, list):
            continue
        try:
            scale = float(key.split("@", 1)[1])
        except ValueError:
            continue
        for k, texts in enumerate(per[:m]):
            put(k, scale, texts)
    return out
