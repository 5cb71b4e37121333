"""Evaluation: behavioural scores, a refusal classifier and the multiplicity / ablation analyses.

* :mod:`melbo.evaluate.scores` — the jailbreak score ``logit(A) − logit(B)`` at the first
  generated position, under any edit; many steering vectors at once; steered completions.
* :mod:`melbo.evaluate.refusal` — a documented string-match refusal classifier.
* :mod:`melbo.evaluate.behaviours` — behaviours without a target: the phrase a steering
  vector makes the model say across prompts, grouped across vectors (``melbo discover``).
* :mod:`melbo.evaluate.report_data` — what a features report shows, measured with a model
  (scores, completions); :mod:`melbo.report` only renders it.
* :mod:`melbo.evaluate.analysis` — ranking by exact score, multiplicity statistics, aggregates
  and adding-vs-ablating (the publication's Tables 3–5), behind ``melbo analyze``.

The names below are imported on first use (``refusal`` and ``behaviours`` need no torch).
"""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "ANALYSIS_FORMAT": "melbo.evaluate.analysis:ANALYSIS_FORMAT",
    "Analysis": "melbo.evaluate.analysis:Analysis",
    "analyze": "melbo.evaluate.analysis:analyze",
    "condition_number": "melbo.evaluate.analysis:condition_number",
    "cosine_stats": "melbo.evaluate.analysis:cosine_stats",
    "format_table": "melbo.evaluate.analysis:format_table",
    "mean_direction": "melbo.evaluate.analysis:mean_direction",
    "pairwise_cosines": "melbo.evaluate.analysis:pairwise_cosines",
    "select_features": "melbo.evaluate.analysis:select_features",
    "top_singular_direction": "melbo.evaluate.analysis:top_singular_direction",
    "Background": "melbo.evaluate.behaviours:Background",
    "BehaviourGroup": "melbo.evaluate.behaviours:BehaviourGroup",
    "VectorBehaviour": "melbo.evaluate.behaviours:VectorBehaviour",
    "group_behaviours": "melbo.evaluate.behaviours:group_behaviours",
    "phrase_rate": "melbo.evaluate.behaviours:phrase_rate",
    "rank_completions": "melbo.evaluate.behaviours:rank_completions",
    "vector_behaviour": "melbo.evaluate.behaviours:vector_behaviour",
    "words": "melbo.evaluate.behaviours:words",
    "REFUSAL_PHRASES": "melbo.evaluate.refusal:REFUSAL_PHRASES",
    "is_refusal": "melbo.evaluate.refusal:is_refusal",
    "normalize_text": "melbo.evaluate.refusal:normalize_text",
    "refusal_rate": "melbo.evaluate.refusal:refusal_rate",
    "Completions": "melbo.evaluate.report_data:Completions",
    "ReportData": "melbo.evaluate.report_data:ReportData",
    "compute_report_data": "melbo.evaluate.report_data:compute_report_data",
    "SPACE_RULES": "melbo.evaluate.scores:SPACE_RULES",
    "TokenSet": "melbo.evaluate.scores:TokenSet",
    "feature_scores": "melbo.evaluate.scores:feature_scores",
    "generate_for_features": "melbo.evaluate.scores:generate_for_features",
    "jailbreak_score": "melbo.evaluate.scores:jailbreak_score",
    "last_position_logits": "melbo.evaluate.scores:last_position_logits",
    "resolve_score_tokens": "melbo.evaluate.scores:resolve_score_tokens",
    "score_edit": "melbo.evaluate.scores:score_edit",
    "steered_scores": "melbo.evaluate.scores:steered_scores",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs (explicit re-exports)
    from melbo.evaluate.analysis import ANALYSIS_FORMAT as ANALYSIS_FORMAT
    from melbo.evaluate.analysis import Analysis as Analysis
    from melbo.evaluate.analysis import analyze as analyze
    from melbo.evaluate.analysis import condition_number as condition_number
    from melbo.evaluate.analysis import cosine_stats as cosine_stats
    from melbo.evaluate.analysis import format_table as format_table
    from melbo.evaluate.analysis import mean_direction as mean_direction
    from melbo.evaluate.analysis import pairwise_cosines as pairwise_cosines
    from melbo.evaluate.analysis import select_features as select_features
    from melbo.evaluate.analysis import top_singular_direction as top_singular_direction
    from melbo.evaluate.behaviours import Background as Background
    from melbo.evaluate.behaviours import BehaviourGroup as BehaviourGroup
    from melbo.evaluate.behaviours import VectorBehaviour as VectorBehaviour
    from melbo.evaluate.behaviours import group_behaviours as group_behaviours
    from melbo.evaluate.behaviours import phrase_rate as phrase_rate
    from melbo.evaluate.behaviours import rank_completions as rank_completions
    from melbo.evaluate.behaviours import vector_behaviour as vector_behaviour
    from melbo.evaluate.behaviours import words as words
    from melbo.evaluate.refusal import REFUSAL_PHRASES as REFUSAL_PHRASES
    from melbo.evaluate.refusal import is_refusal as is_refusal
    from melbo.evaluate.refusal import normalize_text as normalize_text
    from melbo.evaluate.refusal import refusal_rate as refusal_rate
    from melbo.evaluate.report_data import Completions as Completions
    from melbo.evaluate.report_data import ReportData as ReportData
    from melbo.evaluate.report_data import compute_report_data as compute_report_data
    from melbo.evaluate.scores import SPACE_RULES as SPACE_RULES
    from melbo.evaluate.scores import TokenSet as TokenSet
    from melbo.evaluate.scores import feature_scores as feature_scores
    from melbo.evaluate.scores import generate_for_features as generate_for_features
    from melbo.evaluate.scores import jailbreak_score as jailbreak_score
    from melbo.evaluate.scores import last_position_logits as last_position_logits
    from melbo.evaluate.scores import resolve_score_tokens as resolve_score_tokens
    from melbo.evaluate.scores import score_edit as score_edit
    from melbo.evaluate.scores import steered_scores as steered_scores

del TYPE_CHECKING, lazy_exports
