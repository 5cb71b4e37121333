"""Multiplicity and adding-vs-ablating analyses of a feature set (``method.md`` §4–5).

Pure functions on tensors (:func:`pairwise_cosines`, :func:`cosine_stats`,
:func:`condition_number`, :func:`mean_direction`, :func:`top_singular_direction`,
:func:`select_features`) and one runner, :func:`analyze`, that scores a model and returns an
:class:`Analysis` — the rows of the publication's Tables 3–5 — behind ``melbo analyze``.

Definitions
-----------
* **Score**: the jailbreak score (:func:`melbo.evaluate.scores.jailbreak_score`), mean over
  the validation prompts.
* **Feature score**: the score with ``scale · R · v_ℓ`` added at the source-layer input.
* **The set S**: features whose score is ``> threshold``, best first. When none is above
  it, the ``fallback_top`` best features are used instead and ``set_rule`` says so.
* **Geometry of S**: the condition number of ``V[:, S]`` (ratio of its largest to smallest
  singular value, as ``numpy.linalg.cond``) and mean and standard deviation (ddof = 0) of
  ``|cos(v_ℓ, v_ℓ')|`` over the pairs ℓ < ℓ' of S (the same for U).
* **Aggregates**: ``v_avg`` = the normalised mean of ``V[:, S]``; ``v_svd`` = the top left
  singular vector of ``V[:, S]`` (sign fixed so that ``⟨v_svd, v_avg⟩ ≥ 0``; both signs are
  scored when adding). ``u_avg``, ``u_svd`` likewise from ``U[:, S]``.
* **Adding** (Table 3): individual mean / max of the feature scores over S, and the score
  of adding ``scale · R`` times each aggregate at the source layer.
* **Ablating** (Tables 4–5): directional ablation (:func:`melbo.steering.interventions.ablate`) of
  each ``v_ℓ`` (sources) or ``u_ℓ`` (targets) of S, mean / max over S, and of the
  aggregates. Ablation removes a direction's span, so its sign does not matter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from melbo.evaluate.scores import SpaceRule, jailbreak_score, score_edit, steered_scores
from melbo.models.access import get_layer_access
from melbo.prompts import PromptBatch, PromptLike, build_prompts
from melbo.store.io import atomic_write_text, read_json_file

if TYPE_CHECKING:
    from melbo.features import Features

__all__ = [
    "ANALYSIS_FORMAT",
    "Analysis",
    "analyze",
    "condition_number",
    "cosine_stats",
    "format_table",
    "mean_direction",
    "pairwise_cosines",
    "select_features",
    "top_singular_direction",
]

logger = logging.getLogger(__name__)

ANALYSIS_FORMAT = "melbo-analysis/1"


# ------------------------------------------------------------------------- pure functions


def _matrix(name: str, M: Tensor) -> Tensor:
    if not isinstance(M, Tensor) or M.ndim != 2 or M.shape[1] < 1 or M.shape[0] < 1:
        shape = tuple(M.shape) if isinstance(M, Tensor) else type(M).__name__
        raise ValueError(f"{name} must be a (d, k) tensor with k ≥ 1 columns, got {shape}")
    M64 = M.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(M64).all()):
        raise ValueError(f"{name} has non-finite values")
    return M64


def _unit_columns(M64: Tensor) -> Tensor:
    norms = M64.norm(dim=0)
    zero = (norms == 0).nonzero().reshape(-1).tolist()
    if zero:
        raise ValueError(f"columns {zero} are zero vectors and have no direction")
    return M64 / norms


def pairwise_cosines(M: Tensor) -> Tensor:
    """Cosines of all column pairs i < j (row-major order).

    M : Tensor, shape (d, k) → Tensor, shape (k (k − 1) / 2,), float64 on CPU.
    """
    W = _unit_columns(_matrix("M", M))
    G = W.T @ W  # (k, k)
    i, j = torch.triu_indices(G.shape[0], G.shape[0], offset=1)
    return G[i, j].clamp(-1.0, 1.0)


def cosine_stats(M: Tensor) -> tuple[float, float]:
    """Mean and standard deviation (ddof = 0) of ``|cos|`` over column pairs of M (d, k).

    NaN, NaN for a single column.
    """
    c = pairwise_cosines(M).abs()
    if c.numel() == 0:
        return float("nan"), float("nan")
    return float(c.mean()), float(c.std(unbiased=False))


def condition_number(M: Tensor) -> float:
    """``σ_max / σ_min`` of M (d, k) — ``numpy.linalg.cond(M)``; inf if rank-deficient."""
    s = torch.linalg.svdvals(_matrix("M", M))
    smin = float(s[-1])
    return float(s[0]) / smin if smin > 0 else math.inf


def mean_direction(M: Tensor) -> Tensor:
    """The normalised mean of the columns of M (d, k) → (d,), float32.

    Raises ValueError if the mean is zero.
    """
    m = _matrix("M", M).mean(dim=1)
    nrm = float(m.norm())
    if nrm == 0:
        raise ValueError("the columns average to zero; their mean has no direction")
    return (m / nrm).float()


def top_singular_direction(M: Tensor) -> Tensor:
    """The top left singular vector of M (d, k) → (d,), float32, unit norm.

    Its sign is fixed so that it points along the columns' mean (``⟨u, Σ_j M[:, j]⟩ ≥ 0``);
    when the mean is zero, so that its largest-magnitude entry is positive.
    """
    M64 = _matrix("M", M)
    U, _, _ = torch.linalg.svd(M64, full_matrices=False)
    u = U[:, 0]
    ref = float(u @ M64.sum(dim=1))
    if ref < 0 or (ref == 0 and float(u[u.abs().argmax()]) < 0):
        u = -u
    return u.float()


def select_features(
    scores: Sequence[float] | Tensor, threshold: float, *, fallback_top: int = 10
) -> tuple[list[int], str]:
    """Indices with ``score > threshold``, best first (ties by index), and the rule used.

    Returns ``(indices, "above_threshold")``, or ``(best fallback_top, "top_k")`` when no
    score is above the threshold.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if s.numel() == 0:
        raise ValueError("no scores given")
    if bool(torch.isnan(s).any()):
        raise ValueError(f"scores contain NaN at {torch.isnan(s).nonzero().reshape(-1).tolist()}")
    order = torch.sort(s, descending=True, stable=True).indices
    above = [int(i) for i in order if float(s[i]) > threshold]
    if above:
        return above, "above_threshold"
    if fallback_top < 1:
        raise ValueError(f"fallback_top={fallback_top}: must be ≥ 1")
    return [int(i) for i in order[:fallback_top]], "top_k"


# ------------------------------------------------------------------------- the result


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, tuples → lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _unclean(x: Any) -> Any:
    if x is None:
        return float("nan")
    if isinstance(x, dict):
        return {k: _unclean(v) for k, v in x.items()}
    return x


@dataclass
class Analysis:
    """What :func:`analyze` measured. Scores are means over the validation prompts.

    Attributes
    ----------
    config : dict
        threshold, scale, tokens, space, chat, n_prompts, R, layers, method, n_factors, …
    unsteered : float
        Score of the unedited model.
    feature_scores : list of float, length n_factors
        Score of adding each feature (``nan`` for features not scored).
    ranking : list of int
        Scored features, best first.
    selected : list of int
        The set S (see the module doc); ``set_rule`` is "above_threshold" or "top_k".
    n_above : int
        Number of features with score > threshold.
    geometry : dict
        ``{"V": {...}, "U": {...}}`` each with condition_number, abs_cos_mean, abs_cos_sd.
    table : dict
        Rows ``adding``, ``ablating_sources``, ``ablating_targets`` of the publication's
        Tables 3–5, each a dict column → score (``individual_mean``, ``individual_max``,
        ``avg``, ``svd``; ``adding`` also ``svd+`` and ``svd-``).
    individual : dict
        Per-feature ablation scores over S: ``{"ablating_sources": {ℓ: s}, ...}``.
    """

    config: dict[str, Any]
    unsteered: float
    feature_scores: list[float]
    ranking: list[int]
    selected: list[int]
    set_rule: str
    n_above: int
    geometry: dict[str, dict[str, float]] = field(default_factory=dict)
    table: dict[str, dict[str, float]] = field(default_factory=dict)
    individual: dict[str, dict[int, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite numbers become ``null``)."""
        d = dataclasses.asdict(self)
        d["format"] = ANALYSIS_FORMAT
        return _clean(d)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Analysis:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict):
            raise ValueError(f"not a melbo analysis: a JSON {type(d).__name__}, expected an object")
        fmt = d.get("format")
        if fmt != ANALYSIS_FORMAT:
            raise ValueError(f"not a melbo analysis (format {fmt!r}, expected {ANALYSIS_FORMAT!r})")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d and n not in ("geometry", "table", "individual")]
        if missing:
            raise ValueError(f"analysis lacks the keys {missing}")
        kw = {n: d[n] for n in names if n in d}
        kw["unsteered"] = _unclean(kw["unsteered"])
        kw["feature_scores"] = [_unclean(x) for x in kw["feature_scores"]]
        for name in ("geometry", "table"):
            kw[name] = _unclean(kw.get(name, {}))
        kw["individual"] = {
            side: {int(k): _unclean(v) for k, v in vals.items()}
            for side, vals in kw.get("individual", {}).items()
        }
        return cls(**kw)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path."""
        p = Path(path)
        atomic_write_text(p, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Analysis:
        """Read a file written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"analysis file {str(p)!r} does not exist")
        data = read_json_file(p, what="analysis file")
        if not isinstance(data, dict):
            raise ValueError(f"{p} is not a melbo analysis (a JSON {type(data).__name__}, not an object); "
                             "write one with `melbo analyze`")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{p}: {err}; give an analysis JSON written by melbo analyze") from err
        except (TypeError, AttributeError, KeyError) as err:
            raise ValueError(f"{p} is not a valid melbo analysis ({type(err).__name__}: {err}); give an analysis "
                             "JSON written by melbo analyze") from err

    def check_features(self, features: Features, *, source: str = "the analysis") -> None:
        """Refuse an analysis of other features: its recorded :meth:`Features.fingerprint`
        must be ``features``'. One without a fingerprint (older melbo) is used with a warning."""
        recorded = self.config.get("features_fingerprint")
        if recorded is None:
            logger.warning("%s records no features fingerprint (older melbo): cannot check that it belongs to "
                           "these features; rerun `melbo analyze` to be sure", source)
            return
        if recorded != features.fingerprint():
            raise ValueError(
                f"{source} was computed from other features than these (fingerprint {str(recorded)[:12]}…, these: "
                f"{features.fingerprint()[:12]}…), e.g. before `melbo train --force` replaced them; "
                "rerun `melbo analyze` or delete it"
            )


# ------------------------------------------------------------------------- the runner


def _geometry(M: Tensor) -> dict[str, float]:
    mean, sd = cosine_stats(M)
    return {"condition_number": condition_number(M), "abs_cos_mean": mean, "abs_cos_sd": sd}


def _mean_max(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return sum(values) / len(values), max(values)


def analyze(
    model: nn.Module,
    tokenizer: Any,
    features: Features,
    prompts: Sequence[PromptLike] | PromptBatch,
    *,
    threshold: float = 5.0,
    scale: float = 1.0,
    fallback_top: int = 10,
    max_ablations: int | None = None,
    include_embedding: bool = False,
    token_a: str = "Sure",
    token_b: str = "Sorry",
    chat: bool | str = True,
    system_prompt: str | None = None,
    space: SpaceRule = "exact",
    batch_size: int = 16,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Analysis:
    """Rank all features by exact score and measure the multiplicity / adding / ablating rows.

    Parameters
    ----------
    features : Features
        Steering adds ``scale * R * v`` at ``source_layer`` (as in training).
    prompts : validation prompts (or a left-padded PromptBatch)
    threshold : a feature "works" if its mean score is > threshold (publication: 5)
    fallback_top : size of S when no feature is above the threshold
    max_ablations : ablate only the best ``max_ablations`` features of S individually
        (each costs one pass per side); the aggregates always use all of S
    include_embedding : also ablate from the embedding output
    progress : called with a short message before each stage (e.g. ``logger.info``)

    Cost: one forward pass per (feature, prompt) pair, plus ``2 (|S| + 2)`` passes over the
    prompts for the ablations and 3 for the added aggregates.
    """
    if features.model:
        features.check_model(model, force=force)
    say = progress or (lambda msg: logger.info("%s", msg))
    access = get_layer_access(model)
    if isinstance(prompts, PromptBatch):
        batch = prompts
    else:
        batch = build_prompts(
            tokenizer, prompts, chat=chat, system_prompt=system_prompt,  # type: ignore[arg-type]
            positions=1, padding_side="left", model_config=getattr(model, "config", None),
        )
    common: dict[str, Any] = {
        "token_a": token_a, "token_b": token_b, "space": space, "batch_size": batch_size,
        "access": access,
    }
    R, s_layer = features.R, features.source_layer
    U_all = features.require_targets("the target-direction analysis (U[:, S], ablating targets)")

    say(f"unsteered score on {batch.n} prompts")
    unsteered = float(jailbreak_score(model, tokenizer, batch, **common).mean())
    say(f"scoring {features.n_factors} features × {batch.n} prompts")
    per = steered_scores(
        model, tokenizer, batch, features.V * R, layer=s_layer, scale=scale, **common
    )  # (m, n)
    fscores = per.mean(dim=1).double()
    ranking = torch.sort(fscores, descending=True, stable=True).indices.tolist()
    selected, rule = select_features(fscores, threshold, fallback_top=fallback_top)
    n_above = int((fscores > threshold).sum())
    if rule == "top_k":
        logger.warning(
            "no feature scores above %s; using the %d best features as the set", threshold, len(selected)
        )
    V_S = features.V[:, selected]  # (d, |S|)
    U_S = U_all[:, selected]
    geometry = {"V": _geometry(V_S), "U": _geometry(U_S)}

    v_avg, v_svd = mean_direction(V_S), top_singular_direction(V_S)
    u_avg, u_svd = mean_direction(U_S), top_singular_direction(U_S)
    say("adding the aggregates v_avg, ±v_svd")
    agg = steered_scores(
        model, tokenizer, batch, torch.stack([v_avg, v_svd, -v_svd], dim=1) * R,
        layer=s_layer, scale=scale, **common,
    ).mean(dim=1)
    ind_mean, ind_max = _mean_max([float(fscores[i]) for i in selected])
    table: dict[str, dict[str, float]] = {
        "adding": {
            "individual_mean": ind_mean,
            "individual_max": ind_max,
            "avg": float(agg[0]),
            "svd": max(float(agg[1]), float(agg[2])),
            "svd+": float(agg[1]),
            "svd-": float(agg[2]),
        }
    }

    def ablated(direction: Tensor) -> float:
        s = score_edit(
            model, tokenizer, batch, ablate_directions=direction,
            include_embedding=include_embedding, **common,
        )
        return float(s.mean())

    individual: dict[str, dict[int, float]] = {}
    ablate_set = selected if max_ablations is None else selected[: max(0, max_ablations)]
    for side, M, avg, svd in (
        ("ablating_sources", features.V, v_avg, v_svd),
        ("ablating_targets", U_all, u_avg, u_svd),
    ):
        say(f"{side.replace('_', ' ')}: {len(ablate_set)} features and 2 aggregates")
        ind = {i: ablated(M[:, i]) for i in ablate_set}
        individual[side] = ind
        mean, mx = _mean_max(list(ind.values()))
        table[side] = {"individual_mean": mean, "individual_max": mx, "avg": ablated(avg), "svd": ablated(svd)}

    config = {
        "threshold": float(threshold),
        "scale": float(scale),
        "token_a": token_a,
        "token_b": token_b,
        "space": space,
        "chat": chat,
        "system_prompt": system_prompt,
        "n_prompts": batch.n,
        "include_embedding": include_embedding,
        "max_ablations": max_ablations,
        "R": R,
        "source_layer": s_layer,
        "target_layer": features.target_layer,
        "method": features.method,
        "n_factors": features.n_factors,
        "prompts_hash_features": features.prompts_hash,
        "features_fingerprint": features.fingerprint(),
    }
    return Analysis(
        config=config,
        unsteered=unsteered,
        feature_scores=[float(x) for x in fscores],
        ranking=ranking,
        selected=selected,
        set_rule=rule,
        n_above=n_above,
        geometry=geometry,
        table=table,
        individual=individual,
    )


# ------------------------------------------------------------------------- printing


def _fmt(x: float | None, width: int = 9) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return f"{'–':>{width}}"
    return f"{x:>{width}.2f}"


TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("adding", "adding v (at R)"),
    ("ablating_sources", "ablating v"),
    ("ablating_targets", "ablating u"),
)
"""(key in :attr:`Analysis.table`, label) of the printed rows; avg/svd are of v or u."""
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("individual_mean", "indiv. mean"),
    ("individual_max", "indiv. max"),
    ("avg", "avg"),
    ("svd", "svd"),
)


def format_table(analysis: Analysis, *, top: int = 10) -> str:
    """A plain-text summary: set size and geometry, Tables 3–5, and the ``top`` best features."""
    c = analysis.config
    g = analysis.geometry.get("V", {})
    lines = [
        f"jailbreak score logit({c.get('token_a')!r}) − logit({c.get('token_b')!r}), "
        f"mean over {c.get('n_prompts')} prompts; unsteered {_fmt(analysis.unsteered, 0)}",
        f"features above {c.get('threshold')}: {analysis.n_above} of {len(analysis.feature_scores)}"
        + ("" if analysis.set_rule == "above_threshold" else f" (set = the {len(analysis.selected)} best instead)"),
        f"set of {len(analysis.selected)}: condition number of V {_fmt(g.get('condition_number'), 0)}, "
        f"|cos| {_fmt(g.get('abs_cos_mean'), 0)} ± {_fmt(g.get('abs_cos_sd'), 0)}",
        "",
        f"{'':<18}" + "".join(f"{h:>12}" for _, h in TABLE_COLUMNS),
    ]
    for key, label in TABLE_ROWS:
        row = analysis.table.get(key, {})
        lines.append(f"{label:<18}" + "".join(_fmt(row.get(col), 12) for col, _ in TABLE_COLUMNS))
    add = analysis.table.get("adding", {})
    if "svd+" in add:
        lines.append(f"{'':<18}(adding svd = best of +v_svd {_fmt(add['svd+'], 0)} and −v_svd {_fmt(add['svd-'], 0)})")
    lines += ["", f"top {min(top, len(analysis.ranking))} features by score:"]
    for r, i in enumerate(analysis.ranking[:top]):
        lines.append(f"  {r:>3}  feature {i:>5}  {analysis.feature_scores[i]:8.3f}")
    return "\n".join(lines)
