"""A self-contained HTML report of a feature set: one file, no network at view time.

Everything is inline: the CSS in a ``<style>`` element, the figures as inline SVG (see
:mod:`melbo.report.figures`); there is no script. A Content-Security-Policy ``<meta>``
(``default-src 'none'``) makes the browser refuse any request the page might still try. All
text from features, prompts and completions is escaped with :func:`html.escape`.

Two layers:

* :func:`write_report` / :func:`render_report` only render what they are given — no model.
* :func:`compute_report_data` runs a model to get per-feature scores and steered vs
  unsteered completions of the top features; :func:`make_report` does both.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from melbo.evaluate.analysis import TABLE_COLUMNS, TABLE_ROWS, Analysis, pairwise_cosines
from melbo.evaluate.refusal import is_refusal
from melbo.report import figures

if TYPE_CHECKING:
    from melbo.features import Features
    from melbo.prompts import PromptLike

__all__ = [
    "Completions",
    "ReportData",
    "compute_report_data",
    "make_report",
    "render_report",
    "write_report",
]

logger = logging.getLogger(__name__)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""The page's Content-Security-Policy: inline styles and data: images, nothing else."""


@dataclass
class Completions:
    """Unsteered vs steered completions of the same prompts.

    Attributes
    ----------
    prompts : list of str
        Prompt texts as shown (a chat conversation is shown by its last user turn).
    unsteered : list of str
        One completion per prompt.
    steered : dict feature index → list of str
        Completions with that feature added, one per prompt.
    unsteered_scores, steered_scores : optional
        Jailbreak score of each prompt (unsteered / per feature), same shapes.
    scale : float
        Steering was at ``scale · R``.
    """

    prompts: list[str]
    unsteered: list[str]
    steered: dict[int, list[str]]
    unsteered_scores: list[float] | None = None
    steered_scores: dict[int, list[float]] | None = None
    scale: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if len(self.unsteered) != n:
            raise ValueError(f"{len(self.unsteered)} unsteered completions for {n} prompts")
        self.steered = {int(k): list(v) for k, v in self.steered.items()}
        for k, texts in self.steered.items():
            if len(texts) != n:
                raise ValueError(f"feature {k}: {len(texts)} steered completions for {n} prompts")
        if self.unsteered_scores is not None and len(self.unsteered_scores) != n:
            raise ValueError(f"{len(self.unsteered_scores)} unsteered scores for {n} prompts")
        if self.steered_scores is not None:
            self.steered_scores = {int(k): [float(x) for x in v] for k, v in self.steered_scores.items()}
            for k, sc in self.steered_scores.items():
                if len(sc) != n:
                    raise ValueError(f"feature {k}: {len(sc)} steered scores for {n} prompts")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (feature keys become strings)."""
        d = asdict(self)
        d["steered"] = {str(k): v for k, v in self.steered.items()}
        if self.steered_scores is not None:
            d["steered_scores"] = {str(k): v for k, v in self.steered_scores.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Completions:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(d))


@dataclass
class ReportData:
    """What :func:`compute_report_data` measured (feed it to :func:`write_report`)."""

    scores: list[float] | None = None
    unsteered_score: float | None = None
    completions: Completions | None = None
    score_settings: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- helpers


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if math.isnan(xf):
        return "–"
    if math.isinf(xf):
        return "∞" if xf > 0 else "−∞"
    return f"{xf:.{digits}f}".replace("-", "−")


def _chip(x: float | None, threshold: float | None = None) -> str:
    if x is None or not math.isfinite(float(x)):
        return ""
    cls = "pos" if (float(x) > (threshold if threshold is not None else 0.0)) else "neg"
    return f'<span class="chip {cls}" title="jailbreak score">{_num(x)}</span>'


def _prompt_text(p: Any) -> str:
    if isinstance(p, str):
        return p
    if isinstance(p, Sequence):
        users = [m.get("content", "") for m in p if isinstance(m, Mapping) and m.get("role") == "user"]
        if users:
            return str(users[-1])
    return json.dumps(p, ensure_ascii=False)


def _kv_table(rows: Sequence[tuple[str, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def _json_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return f"<code>{_e(json.dumps(v, ensure_ascii=False, default=str))}</code>"
    if isinstance(v, float):
        return _e(f"{v:.6g}")
    return _e(v)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _scores_list(scores: Sequence[float] | Tensor | None, m: int) -> list[float] | None:
    if scores is None:
        return None
    vals = [float(x) for x in torch.as_tensor(scores).reshape(-1).tolist()]
    if len(vals) != m:
        raise ValueError(f"need one score per feature ({m}), got {len(vals)}")
    return vals


# ------------------------------------------------------------------------- rendering

_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--border:#d1d9e0;--soft:#f6f8fa;--bg:#fbfbfc;
--accent:#3451b2;--pos-bg:#dafbe1;--pos:#116329;--neg-bg:#ffebe9;--neg:#a40e26}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:2.5rem 1.5rem 4rem}
header{border-bottom:3px solid var(--accent);padding-bottom:1rem;margin-bottom:1.5rem}
h1{font-size:1.85rem;line-height:1.2;margin:0 0 .3rem;letter-spacing:-.015em}
.sub{color:var(--muted);font-size:.9rem}
h2{font-size:1.25rem;margin:2.6rem 0 .8rem;padding-bottom:.35rem;border-bottom:1px solid var(--border)}
h3{font-size:1.05rem;margin:1.8rem 0 .6rem}
p.note{color:var(--muted);font-size:.88rem;margin:.4rem 0 .8rem}
nav{font-size:.88rem;margin:.6rem 0 0}
nav a{color:var(--accent);text-decoration:none;margin-right:1rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.7rem;margin:1rem 0}
.card{background:#fff;border:1px solid var(--border);border-radius:8px;padding:.65rem .9rem}
.card .k{font-size:.72rem;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.card .v{font-size:1.2rem;font-weight:600;font-variant-numeric:tabular-nums;margin-top:.1rem}
table{border-collapse:separate;border-spacing:0;width:100%;background:#fff;border:1px solid var(--border);
border-radius:8px;overflow:hidden;font-size:.9rem;margin:.6rem 0}
th,td{padding:.5rem .75rem;text-align:left;vertical-align:top;border-bottom:1px solid #eaeef2}
tr:last-child>th,tr:last-child>td{border-bottom:none}
thead th{background:var(--soft);font-weight:600;font-size:.82rem;color:#424a53;border-bottom:1px solid var(--border)}
table.kv th{width:13rem;background:var(--soft);font-weight:600;color:#424a53}
table.kv code{font-size:.8rem;word-break:break-all}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even)>*{background:#fcfcfd}
table.kv tbody tr>th{background:var(--soft)}
table.top{width:auto;min-width:55%}
table.completions td{width:37%}
table.completions td.prompt{width:26%;color:#24292f;font-weight:500}
.text{white-space:pre-wrap;word-break:break-word;font:.84rem/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
margin-top:.3rem}
.chip{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.76rem;font-weight:600;
font-variant-numeric:tabular-nums}
.chip.pos{background:var(--pos-bg);color:var(--pos)}.chip.neg{background:var(--neg-bg);color:var(--neg)}
.tag{display:inline-block;margin-left:.35rem;padding:.05rem .45rem;border-radius:4px;font-size:.72rem;
background:#fff8c5;color:#7d4e00;border:1px solid #eac54f}
figure{margin:1rem 0;background:#fff;border:1px solid var(--border);border-radius:8px;padding:.8rem}
svg.fig{width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:.84rem;margin-top:.4rem}
footer{margin-top:3rem;color:var(--muted);font-size:.8rem;border-top:1px solid var(--border);padding-top:.8rem}
"""


def _section_config(features: Features) -> str:
    cfg = features.to_config()
    rows: list[tuple[str, Any]] = [
        ("method", _e(features.method)),
        ("features m", _e(features.n_factors)),
        ("d_model", _e(features.d_model)),
        ("R (steering norm)", _e(f"{features.R:.6g}")),
        ("source → target layer", _e(f"{features.source_layer} → {features.target_layer}")),
        ("steering applied at", _e(f"input of layer {features.source_layer}, all positions, R·v")),
        ("target positions", _json_value(features.positions)),
        ("iterations", _e(len(features.objective))),
        ("prompts hash", f'<code title="{_e(features.prompts_hash)}">{_e(features.prompts_hash[:16] or "–")}</code>'),
        ("melbo version", _e(cfg["melbo_version"])),
    ]
    for k, v in sorted(features.model.items()):
        rows.append((f"model · {k}", _json_value(v)))
    for k, v in sorted(features.extra.items()):
        rows.append((f"extra · {k}", _json_value(v)))
    return '<h2 id="config">Run configuration</h2>' + _kv_table(rows)


def _section_analysis(analysis: Analysis) -> str:
    c = analysis.config
    g = analysis.geometry
    head = "".join(f'<th class="num">{_e(h)}</th>' for _, h in TABLE_COLUMNS)
    body = []
    for key, label in TABLE_ROWS:
        row = analysis.table.get(key, {})
        cells = "".join(f'<td class="num">{_num(row.get(col))}</td>' for col, _ in TABLE_COLUMNS)
        body.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    add = analysis.table.get("adding", {})
    geo_rows = []
    for name in ("V", "U"):
        gg = g.get(name, {})
        geo_rows.append(
            f"<tr><th>{name}[:, S]</th><td class=\"num\">{_num(gg.get('condition_number'))}</td>"
            f"<td class=\"num\">{_num(gg.get('abs_cos_mean'), 3)}</td><td class=\"num\">{_num(gg.get('abs_cos_sd'), 3)}</td></tr>"
        )
    rule = (
        f"the {len(analysis.selected)} features scoring above {_e(c.get('threshold'))}"
        if analysis.set_rule == "above_threshold"
        else f"no feature scored above {_e(c.get('threshold'))}, so S is the {len(analysis.selected)} best"
    )
    return (
        '<h2 id="analysis">Adding vs ablating</h2>'
        f'<p class="note">Jailbreak score logit({_e(repr(c.get("token_a")))}) − logit({_e(repr(c.get("token_b")))}), '
        f"mean over {_e(c.get('n_prompts'))} prompts. Unsteered: {_num(analysis.unsteered)}. "
        f"S = {rule} ({analysis.n_above} of {len(analysis.feature_scores)} above the threshold). "
        "avg = normalised mean, svd = top singular vector of the set; adding svd is the best of ±"
        f" (+ {_num(add.get('svd+'))}, − {_num(add.get('svd-'))}).</p>"
        f'<table class="analysis"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        '<table class="geometry"><thead><tr><th>set S</th><th class="num">condition number</th>'
        '<th class="num">mean |cos|</th><th class="num">sd |cos|</th></tr></thead>'
        f"<tbody>{''.join(geo_rows)}</tbody></table>"
    )


def _section_top(features: Features, order: list[int], scores: list[float] | None, k: int, threshold: float | None) -> str:
    rows = []
    for r, i in enumerate(order[:k]):
        s = scores[i] if scores is not None else None
        rows.append(
            f'<tr><td class="num">{r + 1}</td><td class="num">{i}</td>'
            f'<td class="num">{_chip(s, threshold) if s is not None else "–"}</td>'
            f'<td class="num">{_num(float(features.alpha[i]), 4)}</td></tr>'
        )
    by = "score" if scores is not None else "α²"
    return (
        f'<h3>Top {min(k, len(order))} features by {by}</h3>'
        '<table class="top"><thead><tr><th class="num">rank</th><th class="num">feature</th>'
        '<th class="num">score</th><th class="num">α</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _completion_cell(text: str, score: float | None, threshold: float | None) -> str:
    tag = '<span class="tag">refusal</span>' if is_refusal(text) else ""
    return f'<td>{_chip(score, threshold)}{tag}<div class="text">{_e(text)}</div></td>'


def _section_completions(comp: Completions, order: list[int], scores: list[float] | None, threshold: float | None) -> str:
    feats = [i for i in order if i in comp.steered] + [i for i in comp.steered if i not in order]
    parts = [
        '<h2 id="completions">Steered completions of the top features</h2>',
        f'<p class="note">Each feature is added as {_e(f"{comp.scale:g}")}·R·v at the source layer '
        "while generating; chips show each prompt's jailbreak score (green: above the threshold, "
        "or above 0 without one); “refusal” marks the string-match refusal classifier.</p>",
    ]
    us = comp.unsteered_scores
    for i in feats:
        ss = (comp.steered_scores or {}).get(i)
        head = f"Feature {i}"
        if scores is not None and 0 <= i < len(scores):
            head += f" — score {_num(scores[i])}"
        rows = []
        for j, p in enumerate(comp.prompts):
            rows.append(
                f'<tr><td class="prompt">{_e(p)}</td>'
                + _completion_cell(comp.unsteered[j], us[j] if us else None, threshold)
                + _completion_cell(comp.steered[i][j], ss[j] if ss else None, threshold)
                + "</tr>"
            )
        parts.append(
            f"<h3>{_e(head)}</h3>"
            '<table class="completions"><thead><tr><th>prompt</th><th>unsteered</th>'
            f"<th>steered (feature {i})</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    return "".join(parts)


def render_report(
    features: Features,
    *,
    scores: Sequence[float] | Tensor | None = None,
    completions: Completions | Mapping[str, Any] | None = None,
    analysis: Analysis | Mapping[str, Any] | None = None,
    title: str = "melbo report",
    top_k: int = 10,
    threshold: float | None = None,
    unsteered_score: float | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report as one HTML string (see :func:`write_report` for the parameters)."""
    from melbo.features import melbo_version

    if isinstance(analysis, Mapping):
        analysis = Analysis.from_dict(dict(analysis))
    if isinstance(completions, Mapping):
        completions = Completions.from_dict(completions)
    m = features.n_factors
    score_list = _scores_list(scores, m)
    if score_list is None and analysis is not None and len(analysis.feature_scores) == m:
        score_list = list(analysis.feature_scores)
    if threshold is None and analysis is not None:
        threshold = analysis.config.get("threshold")
    if unsteered_score is None and analysis is not None:
        unsteered_score = analysis.unsteered
    if score_list is not None:
        key = torch.tensor([s if math.isfinite(s) else -math.inf for s in score_list], dtype=torch.float64)
    else:
        key = features.alpha.detach().double() ** 2
    order = torch.sort(key, descending=True, stable=True).indices.tolist()

    cards = [
        ("method", features.method),
        ("features", f"{m}"),
        ("layers", f"{features.source_layer} → {features.target_layer}"),
        ("R", f"{features.R:.4g}"),
        ("final objective", _num(features.objective[-1], 4) if features.objective else "–"),
    ]
    if score_list is not None:
        finite = [s for s in score_list if math.isfinite(s)]
        if finite:
            cards.append(("best score", _num(max(finite))))
        if threshold is not None:
            cards.append((f"score > {threshold:g}", f"{sum(s > threshold for s in finite)}"))
    if unsteered_score is not None and math.isfinite(unsteered_score):
        cards.append(("unsteered score", _num(unsteered_score)))

    body: list[str] = []
    sections = [("config", "Configuration"), ("training", "Training"), ("geometry", "Geometry")]
    if score_list is not None:
        sections.append(("scores", "Scores"))
    if analysis is not None:
        sections.append(("analysis", "Adding vs ablating"))
    if completions is not None:
        sections.append(("completions", "Completions"))
    nav = "".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in sections)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body.append(
        f"<header><h1>{_e(title)}</h1>"
        f'<div class="sub">{_e(features.method)} features · melbo {_e(melbo_version())} · generated {_e(now)}</div>'
        f"<nav>{nav}</nav></header>"
    )
    body.append('<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in cards
    ) + "</div>")
    for note in notes:
        body.append(f'<p class="note">{_e(note)}</p>')
    body.append(_section_config(features))

    body.append('<h2 id="training">Training</h2>')
    if features.objective:
        svg = figures.figure_to_svg(figures.objective_figure(features.objective), "objective",
                                    label="training objective per iteration")
        body.append(_figure(svg, f"Causal objective Σℓ ⟨uℓ, Δ(R vℓ)⟩ per iteration ({len(features.objective)} iterations)."))
    else:
        body.append('<p class="note">No training curve was recorded for these features.</p>')

    body.append('<h2 id="geometry">Geometry</h2>')
    cos_v = pairwise_cosines(features.V).tolist() if m > 1 else []
    cos_u = pairwise_cosines(features.U).tolist() if m > 1 and features.U is not None else []
    svg = figures.figure_to_svg(figures.cosine_figure(cos_v, cos_u), "cosines",
                                label="histograms of pairwise cosines of V and U")
    body.append(_figure(svg, f"Pairwise cosines of the {m} source directions v and target directions u "
                             f"({len(cos_v)} pairs each)."))
    svg = figures.figure_to_svg(figures.alpha_figure(features.alpha.tolist()), "alpha", label="sorted alpha")
    body.append(_figure(svg, "Scales α_ℓ of the transcoder, largest first."))

    if score_list is not None:
        body.append('<h2 id="scores">Scores</h2>')
        svg = figures.figure_to_svg(
            figures.score_figure(score_list, threshold=threshold, unsteered=unsteered_score), "scores",
            label="histogram of feature scores",
        )
        n_scored = sum(math.isfinite(s) for s in score_list)
        body.append(_figure(svg, f"Jailbreak score of adding each feature ({n_scored} features scored)."))
    body.append(_section_top(features, order, score_list, top_k, threshold))
    if analysis is not None:
        body.append(_section_analysis(analysis))
    if completions is not None:
        body.append(_section_completions(completions, order, score_list, threshold))
    body.append(
        "<footer>Self-contained report: inline CSS and SVG, no scripts, no external resources. "
        f"Generated by melbo {_e(melbo_version())}.</footer>"
    )
    return page(title, body)


def page(title: str, body: list[str]) -> str:
    """A self-contained HTML page (inline CSS, a CSP that forbids scripts and remote
    resources, the melbo generator tag) around already-escaped ``body`` parts."""
    from melbo.features import melbo_version

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="melbo {_e(melbo_version())}">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(
    features: Features,
    path: str | os.PathLike[str],
    *,
    scores: Sequence[float] | Tensor | None = None,
    completions: Completions | Mapping[str, Any] | None = None,
    analysis: Analysis | Mapping[str, Any] | None = None,
    title: str = "melbo report",
    top_k: int = 10,
    threshold: float | None = None,
    unsteered_score: float | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Render a report to ``path`` (one self-contained HTML file); no model needed.

    Parameters
    ----------
    features : Features
        Their configuration, objective curve, U and V (cosine histograms) and α are shown.
    scores : sequence of float or Tensor, shape (n_factors,), optional
        Per-feature scores (NaN = not scored); default ``analysis.feature_scores``. They
        order the top-features table (else α² does) and give the score histogram.
    completions : Completions (or its dict), optional
        Unsteered vs steered completions, shown for the features in ``completions.steered``.
    analysis : Analysis (or its dict), optional
        Adds the adding-vs-ablating tables and the set geometry.
    threshold, unsteered_score : optional
        Marked on the score histogram; default from ``analysis``.
    notes : extra lines shown under the summary cards

    Returns
    -------
    Path of the written file.
    """
    text = render_report(
        features, scores=scores, completions=completions, analysis=analysis, title=title,
        top_k=top_k, threshold=threshold, unsteered_score=unsteered_score, notes=notes,
    )
    p = Path(path)
    if p.parent and not p.parent.exists():
        raise FileNotFoundError(f"the directory of {str(p)!r} does not exist")
    p.write_text(text, encoding="utf-8")
    return p


# ------------------------------------------------------------------------- with a model


def compute_report_data(
    model: nn.Module,
    tokenizer: Any,
    features: Features,
    *,
    prompts: Sequence[PromptLike] | None = None,
    heldout: Sequence[PromptLike] | None = None,
    scores: Sequence[float] | Tensor | None = None,
    top_k: int = 5,
    scale: float = 1.0,
    max_new_tokens: int = 48,
    token_a: str = "Sure",
    token_b: str = "Sorry",
    space: str = "exact",
    chat: bool | str = True,
    system_prompt: str | None = None,
    batch_size: int = 16,
    force: bool = False,
) -> ReportData:
    """Score features and generate completions for a report.

    Parameters
    ----------
    prompts : optional
        Scoring prompts: every feature's jailbreak score (mean over them) is computed —
        one forward pass per (feature, prompt) — unless ``scores`` is given.
    heldout : optional
        Prompts for the completions table; the ``top_k`` features (by score, else α²) are
        generated greedily with and without steering, and each prompt's score is recorded.
    """
    from melbo.evaluate.scores import feature_scores, generate_for_features, jailbreak_score

    if features.model:
        features.check_model(model, force=force)
    kw: dict[str, Any] = {"token_a": token_a, "token_b": token_b, "space": space, "chat": chat,
                          "system_prompt": system_prompt, "batch_size": batch_size}
    data = ReportData(score_settings={**kw, "scale": scale})
    score_list = _scores_list(scores, features.n_factors)
    if score_list is None and prompts is not None:
        logger.info("scoring %d features on %d prompts", features.n_factors, len(prompts))
        s = feature_scores(model, tokenizer, features, prompts, scale=scale, force=True, **kw).mean(dim=1)
        score_list = [float(x) for x in s]
        data.unsteered_score = float(jailbreak_score(model, tokenizer, prompts, **kw).mean())
    data.scores = score_list
    if heldout is not None:
        if score_list is not None:
            key = torch.tensor([x if math.isfinite(x) else -math.inf for x in score_list], dtype=torch.float64)
        else:
            key = features.alpha.detach().double() ** 2
        top = torch.sort(key, descending=True, stable=True).indices[:top_k].tolist()
        held = list(heldout)
        logger.info("generating %d prompts × (%d features + unsteered)", len(held), len(top))
        from melbo.generation import generate

        gen_kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "chat": chat, "system_prompt": system_prompt,
                                  "batch_size": batch_size}
        plain = generate(model, tokenizer, held, **gen_kw)
        steered = generate_for_features(model, tokenizer, features, top, held, scale=scale, force=True, **gen_kw)
        un_scores = jailbreak_score(model, tokenizer, held, **kw)
        st_scores = feature_scores(model, tokenizer, features, held, indices=top, scale=scale, force=True, **kw)
        data.completions = Completions(
            prompts=[_prompt_text(p) for p in held],
            unsteered=plain,
            steered=steered,
            unsteered_scores=[float(x) for x in un_scores],
            steered_scores={k: [float(x) for x in st_scores[j]] for j, k in enumerate(top)},
            scale=scale,
            settings={"max_new_tokens": max_new_tokens, "greedy": True},
        )
    return data


def make_report(
    model: nn.Module,
    tokenizer: Any,
    features: Features,
    path: str | os.PathLike[str],
    *,
    prompts: Sequence[PromptLike] | None = None,
    heldout: Sequence[PromptLike] | None = None,
    analysis: Analysis | Mapping[str, Any] | None = None,
    title: str = "melbo report",
    top_k: int = 5,
    threshold: float | None = None,
    **kwargs: Any,
) -> Path:
    """:func:`compute_report_data` then :func:`write_report`; ``kwargs`` go to the former."""
    if isinstance(analysis, Mapping):
        analysis = Analysis.from_dict(dict(analysis))
    if (
        prompts is None and kwargs.get("scores") is None and analysis is not None
        and len(analysis.feature_scores) == features.n_factors
    ):
        kwargs["scores"] = analysis.feature_scores
    data = compute_report_data(model, tokenizer, features, prompts=prompts, heldout=heldout, top_k=top_k, **kwargs)
    return write_report(
        features, path, scores=data.scores, completions=data.completions, analysis=analysis, title=title,
        top_k=max(top_k, 10), threshold=threshold, unsteered_score=data.unsteered_score,
    )
