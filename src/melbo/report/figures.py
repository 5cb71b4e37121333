"""Figures of the report as inline SVG strings (matplotlib's object API + the SVG backend).

No pyplot and no global backend switch: each figure is a :class:`matplotlib.figure.Figure`
rendered to SVG text, which is then made safe to inline several times in one page: the XML
prologue, DOCTYPE, RDF metadata and comments are dropped, every ``id`` (and every reference to it) gets
a per-figure prefix so ids never collide, and the fixed size becomes a responsive
``viewBox``. Text is drawn as paths (``svg.fonttype = "path"``), so the page needs no fonts.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "PALETTE",
    "alpha_figure",
    "cosine_figure",
    "figure_to_svg",
    "objective_figure",
    "score_figure",
]

PALETTE = {
    "accent": "#3451b2",
    "accent2": "#c2410c",
    "muted": "#656d76",
    "grid": "#e5e7eb",
    "pos": "#1a7f37",
    "neg": "#cf222e",
}

_RC: Any = {  # matplotlib types rc keys as Literals
    "svg.fonttype": "path",
    "font.size": 10,
    "axes.edgecolor": "#9aa1a9",
    "axes.labelcolor": "#1f2328",
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": PALETTE["grid"],
    "grid.linewidth": 0.8,
    "xtick.color": "#57606a",
    "ytick.color": "#57606a",
    "legend.frameon": False,
}

_ID = re.compile(r'\bid="([^"]+)"')


@contextlib.contextmanager
def _new_figure(width: float, height: float) -> Iterator[Any]:
    """A new figure, drawn inside the report's matplotlib style."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        yield Figure(figsize=(width, height), layout="constrained")


def figure_to_svg(fig: Any, key: str, *, label: str = "") -> str:
    """Render ``fig`` to an inline-able ``<svg>…</svg>`` string; ``key`` prefixes its ids."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"melbo-{key}", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)  # matplotlib echoes each text as a comment
    ids = set(_ID.findall(svg))
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", key) + "-"

    def ref(m: re.Match[str]) -> str:
        name = m.group(2)
        return f"{m.group(1)}{prefix}{name}" if name in ids else m.group(0)

    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'((?:xlink:)?href="#)([^"]+)', ref, svg)
    svg = re.sub(r"(url\(#)([^)]+)", ref, svg)
    head_end = svg.index(">")
    head = svg[:head_end]
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    aria = f' role="img" aria-label="{_attr(label)}"' if label else ""
    return head + f' class="fig"{aria}' + svg[head_end:]


def _attr(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def objective_figure(objective: Sequence[float]) -> Any:
    """The causal objective per iteration."""
    with _new_figure(9.6, 3.0) as fig:
        ax = fig.add_subplot()
        x = list(range(1, len(objective) + 1))
        ax.plot(x, list(objective), color=PALETTE["accent"], lw=2, marker="o", ms=4)
        ax.set_xlabel("iteration")
        ax.set_ylabel(r"$\sum_\ell\,\langle u_\ell, \Delta(R\,v_\ell)\rangle$")
        ax.set_title("Training objective")
        if len(x) <= 20:
            ax.set_xticks(x)
    return fig


def cosine_figure(cos_v: Sequence[float], cos_u: Sequence[float]) -> Any:
    """Histograms of the pairwise cosines of V (left) and U (right)."""
    with _new_figure(9.6, 3.2) as fig:
        axes = fig.subplots(1, 2, sharey=False)
        for ax, vals, name, color in (
            (axes[0], cos_v, "V (source)", PALETTE["accent"]),
            (axes[1], cos_u, "U (target)", PALETTE["accent2"]),
        ):
            vals = list(vals)
            if vals:
                bins = max(10, min(60, int(math.sqrt(len(vals))) + 5))
                ax.hist(vals, bins=bins, range=(-1, 1), color=color, alpha=0.85, edgecolor="white", lw=0.4)
                mean_abs = sum(abs(v) for v in vals) / len(vals)
                ax.text(0.02, 0.95, f"mean |cos| = {mean_abs:.3f}", transform=ax.transAxes, va="top",
                        fontsize=8.5, color=PALETTE["muted"])
            else:
                ax.text(0.5, 0.5, "one feature: no pairs", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlim(-1, 1)
            ax.set_title(f"Pairwise cosines of {name}")
            ax.set_xlabel("cos")
        axes[0].set_ylabel("pairs")
    return fig


def alpha_figure(alpha: Sequence[float]) -> Any:
    """α_ℓ sorted by size."""
    with _new_figure(9.6, 2.8) as fig:
        ax = fig.add_subplot()
        vals = sorted((float(a) for a in alpha), reverse=True)
        ax.plot(range(len(vals)), vals, color=PALETTE["accent"], lw=1.8)
        ax.fill_between(range(len(vals)), vals, color=PALETTE["accent"], alpha=0.12)
        ax.set_xlabel("feature rank by α")
        ax.set_ylabel("α")
        ax.set_title("Feature scales α (sorted)")
    return fig


def score_figure(scores: Sequence[float], *, threshold: float | None = None, unsteered: float | None = None) -> Any:
    """Histogram of per-feature scores, with the threshold and the unsteered score marked."""
    with _new_figure(9.6, 3.2) as fig:
        ax = fig.add_subplot()
        vals = [float(s) for s in scores if math.isfinite(float(s))]
        bins = max(10, min(50, int(math.sqrt(max(1, len(vals)))) + 5))
        ax.hist(vals, bins=bins, color=PALETTE["accent"], alpha=0.85, edgecolor="white", lw=0.4)
        if threshold is not None and math.isfinite(threshold):
            ax.axvline(threshold, color=PALETTE["pos"], ls="--", lw=1.4, label=f"threshold {threshold:g}")
        if unsteered is not None and math.isfinite(unsteered):
            ax.axvline(unsteered, color=PALETTE["neg"], ls=":", lw=1.6, label=f"unsteered {unsteered:.2f}")
        if threshold is not None or unsteered is not None:
            ax.legend(loc="best", fontsize=8.5)
        ax.set_xlabel("jailbreak score of adding the feature (mean over prompts)")
        ax.set_ylabel("features")
        ax.set_title("Score distribution")
    return fig
