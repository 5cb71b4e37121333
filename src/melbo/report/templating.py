"""The one template machinery of every melbo HTML page: jinja2 templates shipped in
``melbo/report/templates/``, autoescaped, with the number filters the pages share.

Every ``{{ value }}`` is HTML-escaped unless it is :class:`markupsafe.Markup` (only the
inline SVG figures are); text from features, prompts and completions is never trusted.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jinja2
from markupsafe import Markup

__all__ = ["CSP", "Markup", "num", "render"]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""The pages' Content-Security-Policy: inline styles and data: images, nothing else."""


def num(x: Any, digits: int = 2) -> str:
    """A number as a report prints it: fixed ``digits``, a real minus sign, ``–`` for
    missing or NaN, ``∞``; anything that is not a number as its text."""
    if x is None:
        return "–"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(xf):
        return "–"
    if math.isinf(xf):
        return "∞" if xf > 0 else "−∞"
    return f"{xf:.{digits}f}".replace("-", "−")


def _finite(x: Any) -> bool:
    return math.isfinite(float(x))


def _percent(x: float) -> str:
    return f"{x:.0%}"


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The shared environment (built once): package templates, autoescaping for ``.html``."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("melbo.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(num=num, finite=_finite, percent=_percent)
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context`` plus the page's CSP and melbo version."""
    from melbo.features import melbo_version

    return environment().get_template(template).render(csp=CSP, version=melbo_version(), **context)
