"""Measure, then render: :func:`make_report` joins
:func:`melbo.evaluate.report_data.compute_report_data` (runs the model) and
:func:`melbo.report.html.write_report` (renders, no model)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from melbo.evaluate.analysis import Analysis
from melbo.evaluate.report_data import compute_report_data
from melbo.report.html import write_report

if TYPE_CHECKING:
    from melbo.features import Features
    from melbo.prompts import PromptLike

__all__ = ["make_report"]


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
    """:func:`~melbo.evaluate.report_data.compute_report_data` then
    :func:`~melbo.report.html.write_report`; ``kwargs`` go to the former."""
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
