"""What a steering vector changes, beyond a shared phrase: descriptors of steered completions.

A hidden behaviour need not be a phrase. A change of style, script or language, a theme worded
differently each time, a tone, refusing: each moves every prompt's completion *the same way*
while the words differ. So, for each (vector, scale) and each prompt, the steered completion is
compared with the same prompt's unsteered one, naming no token or behaviour:

* **text statistics** (:func:`text_stats`): length, upper-case share, share of letters outside
  the Latin script, punctuation, digits, repetition, line breaks, exclamation and question
  marks, words addressing the reader, word length and refusal-likeness
  (:func:`melbo.evaluate.refusal.is_refusal`);
* **new vocabulary**: words of the steered completion that the unsteered completion of the
  same prompt (and the prompt) does not have, counted over prompts;
* **a semantic shift** (:func:`shift_summary`): the difference of the two completions'
  embeddings (by default the subject model's own mean hidden state, :mod:`melbo.evaluate.embed`),
  per dimension in units of the run's spread.

A vector's **shift consistency** is the mean cosine between its per-prompt shifts (0: each
prompt moved its own way, as under a random push; 1: every prompt moved in one direction). It
is read against random vectors of the same norm at the same scale (the *floor*): the
**shift strength** is the share of the way from the floor to 1. Vectors whose mean shift
directions agree are one behaviour (:func:`same_direction`). :func:`describe` puts what moved
into words a person reads: the distinctive vocabulary, the statistics that moved and by how
much.

Everything here is a pure function of strings and tensors.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "STATS",
    "Shift",
    "describe",
    "moved_stats",
    "new_vocabulary",
    "same_direction",
    "shift_consistency",
    "shift_summary",
    "text_stats",
]

STATS: dict[str, str] = {
    "words": "length (words)",
    "upper": "upper-case letters",
    "non_latin": "letters outside the Latin script",
    "punct": "punctuation per character",
    "digits": "digits per character",
    "repetition": "repeated words",
    "newlines": "line breaks per word",
    "exclaim": "exclamation marks per word",
    "question": "question marks per word",
    "you": "words addressing the reader",
    "word_len": "mean word length",
    "refusal": "refusal-like completions",
}
"""The text statistics and how a description names them."""

_SHARES = {"upper", "non_latin", "repetition", "refusal", "you"}  # shown as percentages
_YOU = {"you", "your", "yours", "yourself", "you're", "u"}


def _is_latin(ch: str) -> bool:
    if ch.isascii():
        return True
    try:
        return "LATIN" in unicodedata.name(ch)
    except ValueError:
        return False


def text_stats(text: str) -> dict[str, float]:
    """The :data:`STATS` of one completion (shares in [0, 1]; 0 where a share has no base)."""
    from melbo.evaluate.phrases import words
    from melbo.evaluate.refusal import is_refusal

    ws = words(text)
    n_w = len(ws)
    letters = [c for c in text if c.isalpha()]
    cased = [c for c in letters if c.isupper() or c.islower()]
    n_c = max(1, len(text))
    return {
        "words": float(n_w),
        "upper": sum(c.isupper() for c in cased) / len(cased) if cased else 0.0,
        "non_latin": sum(not _is_latin(c) for c in letters) / len(letters) if letters else 0.0,
        "punct": sum(unicodedata.category(c).startswith("P") for c in text) / n_c,
        "digits": sum(c.isdigit() for c in text) / n_c,
        "repetition": 1.0 - len(set(ws)) / n_w if n_w else 0.0,
        "newlines": text.count("\n") / max(1, n_w),
        "exclaim": text.count("!") / max(1, n_w),
        "question": text.count("?") / max(1, n_w),
        "you": sum(w in _YOU for w in ws) / n_w if n_w else 0.0,
        "word_len": sum(map(len, ws)) / n_w if n_w else 0.0,
        "refusal": float(is_refusal(text)) if text.strip() else 0.0,
    }


def moved_stats(steered: Sequence[str], unsteered: Sequence[str], *, min_effect: float = 1.0,
                top: int = 3) -> list[dict[str, Any]]:
    """The statistics that moved: mean before (unsteered) and after (steered) over the prompts,
    and the effect, (after − before) / the unsteered completions' spread (with a floor, so that a
    statistic the unsteered text never varies does not divide by zero). Those with |effect| ≥
    ``min_effect`` and a change that is not negligible, largest first, at most ``top``."""
    if len(steered) != len(unsteered) or not steered:
        raise ValueError(f"need one unsteered completion per steered one: got {len(steered)} and {len(unsteered)}")
    after = [text_stats(t) for t in steered]
    before = [text_stats(t) for t in unsteered]
    out: list[dict[str, Any]] = []
    for name in STATS:
        b = [s[name] for s in before]
        a = [s[name] for s in after]
        mb, ma = sum(b) / len(b), sum(a) / len(a)
        sd = math.sqrt(sum((x - mb) ** 2 for x in b) / max(1, len(b) - 1))
        floor = 0.05 if name in _SHARES else 0.1 * max(abs(mb), 1e-3)
        eff = (ma - mb) / max(sd, floor)
        rel = abs(ma - mb) >= (0.15 if name in _SHARES else 0.25 * max(abs(mb), 1e-3))
        if abs(eff) >= min_effect and rel:
            out.append({"stat": name, "before": mb, "after": ma, "effect": eff})
    out.sort(key=lambda d: (-abs(float(d["effect"])), str(d["stat"])))
    return out[:top]


def new_vocabulary(steered: Sequence[str], unsteered: Sequence[str], prompts: Sequence[str] = (), *,
                   min_prompts: int = 2, top: int = 8) -> list[tuple[str, int]]:
    """Words the steered completions say that the same prompt's unsteered completion and the
    prompt do not, with the number of prompts each is new on (≥ ``min_prompts``), most
    widespread first (ties: longer, then alphabetical), at most ``top``; words the unsteered
    completions of at least half the prompts say are left out (they are the model's usual words)."""
    from melbo.evaluate.phrases import words

    n = len(steered)
    if len(unsteered) != n or (prompts and len(prompts) != n):
        raise ValueError(f"need one unsteered completion (and prompt) per steered one: got {n}, {len(unsteered)}, "
                         f"{len(prompts)}")
    common: dict[str, int] = {}
    for u in unsteered:
        for w in set(words(u)):
            common[w] = common.get(w, 0) + 1
    count: dict[str, int] = {}
    for i, text in enumerate(steered):
        seen = set(words(unsteered[i])) | (set(words(str(prompts[i]))) if prompts else set())
        for w in set(words(text)) - seen:
            if common.get(w, 0) * 2 < n:
                count[w] = count.get(w, 0) + 1
    ranked = sorted((kv for kv in count.items() if kv[1] >= min_prompts), key=lambda kv: (-kv[1], -len(kv[0]), kv[0]))
    return ranked[:top]


def shift_consistency(shifts: Tensor) -> float:
    """Mean cosine over distinct pairs of rows of ``shifts`` (n, D): how much the prompts moved
    in one direction (1) rather than each its own way (≈ 0). Rows of zero norm count as 0."""
    if shifts.ndim != 2 or shifts.shape[0] < 2:
        raise ValueError(f"shifts of shape {tuple(shifts.shape)}: need (n ≥ 2, D)")
    x = shifts.to(torch.float64)
    norms = x.norm(dim=1, keepdim=True)
    u = torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))
    s = u.sum(0)
    n = x.shape[0]
    return min(1.0, max(-1.0, float((s @ s - (u * u).sum()) / (n * (n - 1)))))  # rounding kept inside [-1, 1]


@dataclass(frozen=True)
class Shift:
    """What one (vector, scale) did to the prompts' completions in embedding space.

    ``consistency``: :func:`shift_consistency` of the per-prompt shifts; ``magnitude``: their
    mean norm (in units of the run's spread per dimension); ``direction``: the unit mean shift."""

    vector: int
    scale: float
    consistency: float
    magnitude: float
    direction: Tensor = field(repr=False)


def shift_summary(steered: Tensor, unsteered: Tensor, *, vector: int = 0, scale: float = 1.0) -> Shift:
    """The :class:`Shift` of steered embeddings ``(n, D)`` against the same prompts' unsteered ones."""
    if steered.shape != unsteered.shape or steered.ndim != 2:
        raise ValueError(f"steered {tuple(steered.shape)} and unsteered {tuple(unsteered.shape)} embeddings: "
                         "need the same (n, D)")
    d = (steered - unsteered).to(torch.float32)
    mean = d.mean(0)
    direction = mean / mean.norm().clamp_min(1e-12)
    return Shift(vector, float(scale), shift_consistency(d), float(d.norm(dim=1).mean()), direction)


def same_direction(a: Shift, b: Shift, *, min_cos: float = 0.75) -> bool:
    """Whether two vectors moved the completions the same way: their mean shift directions have
    cosine ≥ ``min_cos``."""
    return float(a.direction @ b.direction) >= min_cos


def _fmt(name: str, v: float) -> str:
    return f"{v:.0%}" if name in _SHARES else f"{v:.3g}"


def describe(steered: Sequence[str], unsteered: Sequence[str], prompts: Sequence[str] = (), *,
             signature: str = "", phrase_rate: float = 0.0) -> dict[str, Any]:
    """A description of what a vector does, in words a person reads, and its parts: ``text``
    (one line), ``vocabulary`` (its new words and on how many prompts), ``moved`` (the
    statistics that moved, :func:`moved_stats`) and the shared ``signature`` phrase if any."""
    vocab = new_vocabulary(steered, unsteered, prompts)
    moved = moved_stats(steered, unsteered)
    n = len(steered)
    parts = []
    if signature and phrase_rate > 0:
        parts.append(f"says {signature!r} on {phrase_rate:.0%} of prompts")
    if vocab:
        parts.append("new words: " + ", ".join(f"{w} ({k}/{n})" for w, k in vocab[:6]))
    for m in moved:
        parts.append(f"{STATS[m['stat']]} {_fmt(m['stat'], m['before'])} → {_fmt(m['stat'], m['after'])}")
    text = "; ".join(parts) if parts else "no consistent change in words or text statistics"
    return {"text": text, "vocabulary": [{"word": w, "prompts": k} for w, k in vocab], "moved": moved,
            "signature": signature}


def whiten(embeddings: Mapping[Any, Tensor]) -> dict[Any, Tensor]:
    """Every (n, D) block of ``embeddings`` centred and scaled per dimension by the mean and
    spread over all their rows: so that no single dimension (a massive activation) decides the
    cosines."""
    if not embeddings:
        return {}
    allrows = torch.cat([e.to(torch.float32) for e in embeddings.values()], dim=0)
    mu = allrows.mean(0)
    sd = allrows.std(0).clamp_min(1e-6)
    return {k: (e.to(torch.float32) - mu) / sd for k, e in embeddings.items()}
