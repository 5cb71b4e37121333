"""What a report shows that needs a model: per-feature scores and steered vs unsteered
completions, measured once into validated dataclasses that :mod:`melbo.report` renders.

* :class:`Completions` — unsteered vs steered completions of the same prompts (and their
  jailbreak scores).
* :class:`ReportData` — everything :func:`compute_report_data` measured.
* :func:`feature_order` — the order a report lists features in (by score, else by α²).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from melbo.features import Features
    from melbo.prompts import PromptLike

__all__ = [
    "Completions",
    "ReportData",
    "compute_report_data",
    "feature_order",
    "prompt_text",
    "score_list",
]

logger = logging.getLogger(__name__)


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
    """What :func:`compute_report_data` measured (feed it to :func:`melbo.report.write_report`).

    Attributes
    ----------
    scores : list of float, optional
        One jailbreak score per feature (mean over the scoring prompts; NaN = not scored).
    unsteered_score : float, optional
        The unsteered model's mean score on the same prompts.
    completions : Completions, optional
    score_settings : dict
        How the scores were taken (tokens, space, chat, scale, …).
    """

    scores: list[float] | None = None
    unsteered_score: float | None = None
    completions: Completions | None = None
    score_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scores is not None:
            self.scores = [float(x) for x in self.scores]
        if self.unsteered_score is not None:
            self.unsteered_score = float(self.unsteered_score)
        if isinstance(self.completions, Mapping):
            self.completions = Completions.from_dict(self.completions)
        if self.completions is not None and not isinstance(self.completions, Completions):
            raise TypeError(f"completions must be Completions or its dict, got {type(self.completions).__name__}")


def score_list(scores: Sequence[float] | Tensor | None, m: int) -> list[float] | None:
    """``scores`` as a list of ``m`` floats (``None`` stays ``None``).

    Raises
    ------
    ValueError
        Not exactly one score per feature.
    """
    if scores is None:
        return None
    vals = [float(x) for x in torch.as_tensor(scores).reshape(-1).tolist()]
    if len(vals) != m:
        raise ValueError(f"need one score per feature ({m}), got {len(vals)}")
    return vals


def feature_order(features: Features, scores: Sequence[float] | None) -> list[int]:
    """Feature indices best first: by score (NaN last), else by α²; ties keep index order."""
    if scores is not None:
        key = torch.tensor([s if math.isfinite(s) else -math.inf for s in scores], dtype=torch.float64)
    else:
        key = features.alpha.detach().double() ** 2
    return [int(i) for i in torch.sort(key, descending=True, stable=True).indices.tolist()]


def prompt_text(p: Any) -> str:
    """A prompt as a report shows it: a chat conversation by its last user turn."""
    if isinstance(p, str):
        return p
    if isinstance(p, Sequence):
        users = [m.get("content", "") for m in p if isinstance(m, Mapping) and m.get("role") == "user"]
        if users:
            return str(users[-1])
    return json.dumps(p, ensure_ascii=False)


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
    scored = score_list(scores, features.n_factors)
    if scored is None and prompts is not None:
        logger.info("scoring %d features on %d prompts", features.n_factors, len(prompts))
        s = feature_scores(model, tokenizer, features, prompts, scale=scale, force=True, **kw).mean(dim=1)
        scored = [float(x) for x in s]
        data.unsteered_score = float(jailbreak_score(model, tokenizer, prompts, **kw).mean())
    data.scores = scored
    if heldout is not None:
        top = feature_order(features, scored)[:top_k]
        held = list(heldout)
        logger.info("generating %d prompts × (%d features + unsteered)", len(held), len(top))
        from melbo.generation import generate

        # generation sizes its own chunks by a memory budget; batch_size is for the scoring passes
        gen_kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "chat": chat, "system_prompt": system_prompt}
        plain = generate(model, tokenizer, held, **gen_kw)
        steered = generate_for_features(model, tokenizer, features, top, held, scale=scale, force=True, **gen_kw)
        un_scores = jailbreak_score(model, tokenizer, held, **kw)
        st_scores = feature_scores(model, tokenizer, features, held, indices=top, scale=scale, force=True, **kw)
        data.completions = Completions(
            prompts=[prompt_text(p) for p in held],
            unsteered=plain,
            steered=steered,
            unsteered_scores=[float(x) for x in un_scores],
            steered_scores={k: [float(x) for x in st_scores[j]] for j, k in enumerate(top)},
            scale=scale,
            settings={"max_new_tokens": max_new_tokens, "greedy": True},
        )
    return data
