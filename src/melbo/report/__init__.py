"""Self-contained HTML reports of fitted features (inline CSS and SVG, no network at view time).

* :func:`write_report` renders what it is given (no model): configuration, objective curve,
  cosine histograms, α, scores, the adding-vs-ablating analysis and completion tables.
* :func:`make_report` first computes scores and completions with a model
  (:func:`compute_report_data`).
* :func:`write_discovery_report` renders a :class:`melbo.discover.Discovery` (``melbo discover``).
* :mod:`melbo.report.figures` draws the features report's inline SVG figures.
"""

from melbo.report.discovery import discovery_html, write_discovery_report
from melbo.report.html import (
    Completions,
    ReportData,
    compute_report_data,
    make_report,
    render_report,
    write_report,
)

__all__ = [
    "Completions",
    "ReportData",
    "compute_report_data",
    "discovery_html",
    "make_report",
    "render_report",
    "write_discovery_report",
    "write_report",
]
