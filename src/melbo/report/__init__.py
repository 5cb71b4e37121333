"""Self-contained HTML reports of fitted features (inline CSS and SVG, no network at view time).

The package only renders, through the autoescaped jinja2 templates of
:mod:`melbo.report.templating`:

* :func:`write_report` / :func:`render_report` render what they are given (no model):
  configuration, objective curve, cosine histograms, α, scores, the adding-vs-ablating
  analysis and completion tables.
* :func:`write_discovery_report` / :func:`discovery_html` render a
  :class:`melbo.jobs.discover.Discovery` (``melbo discover``).
* :func:`make_report` first measures scores and completions with a model
  (:func:`melbo.evaluate.report_data.compute_report_data`), then renders.
* :mod:`melbo.report.figures` draws the features report's inline SVG figures.
"""

from melbo.evaluate.report_data import Completions, ReportData, compute_report_data
from melbo.report.discovery import discovery_html, write_discovery_report
from melbo.report.html import render_report, write_report
from melbo.report.make import make_report

__all__ = [
    "discovery_html",
    "make_report",
    "render_report",
    "write_discovery_report",
    "write_report",
    # measured by melbo.evaluate.report_data; offered here too, where they always were
    "Completions",
    "ReportData",
    "compute_report_data",
]
