"""Evaluation: behavioural scores, a refusal classifier and the multiplicity / ablation analyses.

* :mod:`melbo.evaluate.scores` — the jailbreak score ``logit(A) − logit(B)`` at the first
  generated position, under any edit; many steering vectors at once; steered completions.
* :mod:`melbo.evaluate.refusal` — a documented string-match refusal classifier.
* :mod:`melbo.evaluate.analysis` — ranking by exact score, multiplicity statistics, aggregates
  and adding-vs-ablating (the publication's Tables 3–5), behind ``melbo analyze``.
"""

from melbo.evaluate.analysis import (
    Analysis,
    analyze,
    condition_number,
    cosine_stats,
    format_table,
    mean_direction,
    pairwise_cosines,
    select_features,
    top_singular_direction,
)
from melbo.evaluate.refusal import REFUSAL_PHRASES, is_refusal, refusal_rate
from melbo.evaluate.scores import (
    feature_scores,
    generate_for_features,
    jailbreak_score,
    last_position_logits,
    resolve_score_tokens,
    score_edit,
    steered_scores,
)

__all__ = [
    "REFUSAL_PHRASES",
    "Analysis",
    "analyze",
    "condition_number",
    "cosine_stats",
    "feature_scores",
    "format_table",
    "generate_for_features",
    "is_refusal",
    "jailbreak_score",
    "last_position_logits",
    "mean_direction",
    "pairwise_cosines",
    "refusal_rate",
    "resolve_score_tokens",
    "score_edit",
    "select_features",
    "steered_scores",
    "top_singular_direction",
]
