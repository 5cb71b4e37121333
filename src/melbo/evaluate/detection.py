"""Detector metrics: AUROC, thresholds at a false-positive rate, detection rates.

Convention: a higher score means "more anomalous"; a prompt is flagged when its score is
*strictly greater* than the threshold.

* :func:`auroc` — P(score of a positive > score of a negative), ties counted ½ (the
  Mann–Whitney U statistic divided by n_pos·n_neg), exact, O((n_pos + n_neg) log(...)).
* :func:`threshold_at_fpr` — the threshold that flags ⌊fpr·n⌋ of n clean scores: the
  (⌊fpr·n⌋ + 1)-th largest. Its false-positive rate on those scores is ⌊fpr·n⌋/n ≤ fpr
  (exactly, when no score ties with the threshold); on fresh clean scores from the same
  distribution it is ≈ fpr once n ≫ 1/fpr.
* :func:`flag_rate` — the share of scores above a threshold (detection rate on positives,
  false-positive rate on negatives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["auroc", "flag_rate", "threshold_at_fpr"]


def _scores(name: str, x: Tensor | Sequence[float]) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).detach().cpu().reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: give at least one score")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite values")
    return t


def auroc(positives: Tensor | Sequence[float], negatives: Tensor | Sequence[float]) -> float:
    """Area under the ROC curve of scores that should be high on ``positives``.

    Equal to P(p > n) + ½ P(p = n) over independent draws p ∈ positives, n ∈ negatives
    (1: perfect separation, 0.5: chance, 0: perfectly inverted).
    """
    pos, neg = _scores("positives", positives), _scores("negatives", negatives)
    allv = torch.cat([pos, neg])
    # midranks (1-based) of every value among all: ties share the mean of their ranks
    uniq, inv, counts = torch.unique(allv, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mid = ends - (counts.double() - 1) / 2  # mean rank of each unique value
    ranks = mid[inv]
    n_p, n_n = pos.numel(), neg.numel()
    u = float(ranks[:n_p].sum()) - n_p * (n_p + 1) / 2
    return u / (n_p * n_n)


def threshold_at_fpr(clean_scores: Tensor | Sequence[float], fpr: float) -> float:
    """The threshold flagging ⌊fpr·n⌋ of the n clean scores (module doc).

    Parameters
    ----------
    clean_scores : shape (n,)
    fpr : the false-positive rate, 0 ≤ fpr < 1

    Returns
    -------
    float — the (⌊fpr·n⌋ + 1)-th largest clean score.
    """
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not math.isfinite(fpr) or not 0 <= fpr < 1:
        raise ValueError(f"fpr={fpr!r}: must be a number with 0 ≤ fpr < 1")
    s = torch.sort(_scores("clean_scores", clean_scores), descending=True).values
    k = math.floor(fpr * s.numel() + 1e-9)
    return float(s[k])


def flag_rate(scores: Tensor | Sequence[float], threshold: float) -> float:
    """The share of ``scores`` strictly above ``threshold``."""
    s = _scores("scores", scores)
    return float((s > threshold).double().mean())
