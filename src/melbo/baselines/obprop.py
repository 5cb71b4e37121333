"""Observable propagation (ObProp; Dunefsky & Cohan): the feature vector of a linear observable.

A *linear observable* is a linear function of the logits at the first generated position;
here the jailbreak score ``n(x) = logit(A) − logit(B)`` (A, B resolved as in
:mod:`melbo.evaluate.scores`, logit post-processing such as Gemma's soft-capping included).
Its *feature vector* at layer s is the observable pulled back through the network: the
gradient of n with respect to the residual stream entering layer s, averaged over prompts,

    y = (1/n) Σ_i ∂ n(prompt_i ; h_s + v) / ∂v |_{v = 0}

where v is added to the residual stream entering layer s **at every position** of prompt i —
exactly where and how melbo steers (:func:`melbo.steering.interventions.steer`). So y is the sum over
positions of ∂n/∂h_s[p], and ⟨y, R·v⟩ is the first-order (Taylor) prediction of how steering
by R·v changes the mean score: the exact score of :func:`melbo.evaluate.scores.feature_scores`
linearised at v = 0, for the cost of one forward and backward pass per prompt instead of one
forward per (feature, prompt). (ObProp as published reads the gradient at the observable's
own token position; melbo's steering adds at every position, so the sum is the derivative
that matches it.)

As a steering direction, ``V = y/‖y‖`` (the ``"obprop"`` method of :mod:`melbo.methods`):
adding +R·V raises logit(A) − logit(B) fastest to first order; ablating it is the
observable-based counterpart of ablating the mean difference.

The *coupling coefficient* between feature vectors (ObProp §3), C(y₁, y₂) = ⟨y₁, y₂⟩ / ‖y₁‖²:
for inputs x spread uniformly over the sphere ‖x‖ = r constrained to ⟨x, y₁⟩ = k, the expected
⟨x, y₂⟩ is k·C(y₁, y₂) — how much of observable 2 comes with a unit of observable 1. It is not
symmetric; the symmetric, scale-free comparison is the cosine similarity, with
C(y₁, y₂)·C(y₂, y₁) = cos²(y₁, y₂).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from melbo.baselines.random_vectors import output_directions
from melbo.errors import check_prompts, check_R, warn_renamed
from melbo.fit._common import check_positive_int
from melbo.fit.estimator import FitEstimator
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap
from melbo.models.access import LayerAccess, resolve_access
from melbo.prompts import PromptLike, build_prompts

__all__ = [
    "ObservablePropagation",
    "coupling_coefficient",
    "cosine_similarity",
    "linear_readout",
    "observable_direction",
    "observable_gradients",
]

logger = logging.getLogger(__name__)


def observable_gradients(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    *,
    layer: int,
    token_a: str = "Sure",
    token_b: str = "Sorry",
    space: Literal["exact", "auto", "both"] = "exact",
    chat: bool | Literal["auto"] = True,
    system_prompt: str | None = None,
    batch_size: int = 16,
    access: LayerAccess | None = None,
) -> Tensor:
    """Per prompt, the gradient of ``logit(A) − logit(B)`` at the first generated position with
    respect to a vector added to the residual stream entering ``layer`` at every position.

    Prompts are left-padded with padding-free position ids (padding rows get the vector too,
    but no real token attends to them, so they do not change the gradient; a prompt whose
    gradient comes out non-finite in a padded batch is redone alone). The model's parameters
    get no ``.grad``.

    Returns
    -------
    Tensor, shape (n_prompts, d_model), float32 (float64 for a float64 model), CPU
    """
    from melbo.evaluate.scores import last_position_logits, resolve_score_tokens
    from melbo.steering.interventions import row_steering

    acc = resolve_access(model, access)
    layer = acc.check_layer(layer)
    batch_size = check_positive_int("batch_size", batch_size)
    prompts = check_prompts(prompts)
    a = resolve_score_tokens(tokenizer, token_a, space)
    b = resolve_score_tokens(tokenizer, token_b, space)
    param = next(model.parameters())
    dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = build_prompts(tokenizer, prompts[start : start + batch_size], chat=chat, system_prompt=system_prompt,
                              positions=1, padding_side="left", model_config=getattr(model, "config", None)).to(param.device)
        rows = torch.zeros(batch.n, acc.d_model, dtype=dtype, device=param.device, requires_grad=True)  # (B, d)
        with row_steering(model, layer, rows, access=acc):
            z = last_position_logits(model, batch.input_ids, batch.attention_mask, a.ids + b.ids, access=acc, grad=True)
        na = len(a.ids)
        obs = torch.logsumexp(z[:, :na], dim=1) - torch.logsumexp(z[:, na:], dim=1)  # (B,)
        (g,) = torch.autograd.grad(obs.sum(), rows)  # row b depends only on prompt b
        g = g.detach().to(dtype).cpu()
        for i in (~torch.isfinite(g).all(dim=1)).nonzero().flatten().tolist():
            # Some kernels give NaN at fully masked padding rows (e.g. eager Gemma 3 in float64);
            # 0·NaN in the backward pass then poisons the row: redo that prompt unpadded.
            if batch.n == 1:
                raise ValueError(f"the observable's gradient for prompt {start + i} is not finite")
            g[i] = observable_gradients(model, tokenizer, [prompts[start + i]], layer=layer, token_a=token_a,
                                        token_b=token_b, space=space, chat=chat, system_prompt=system_prompt,
                                        batch_size=1, access=acc)[0]
        out.append(g)
    return torch.cat(out)


def observable_direction(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    *,
    layer: int,
    R: float = 1.0,
    delta: CausalMap | None = None,
    **kwargs: Any,
) -> FitResult:
    """The observable's feature vector y (mean of :func:`observable_gradients`) as a steering
    direction.

    Parameters
    ----------
    R : float
        The norm it is steered at (the estimator calibrates it as for every method).
    delta : CausalMap, optional
        A causal map with source layer ``layer``: α = ‖Δ_R(v)‖ (without it α = [‖y‖]).
    **kwargs
        Passed to :func:`observable_gradients` (token_a, token_b, space, chat, …).

    Returns
    -------
    FitResult
        method ``"obprop"``, m = 1: U None, V (d, 1) = y/‖y‖; ``scores`` = [‖y‖] (the score
        change per unit of steering along V, to first order); empty history.
    """
    check_R(R)
    if delta is not None and getattr(delta, "source_layer", layer) != layer:
        raise ValueError(f"delta has source_layer={getattr(delta, 'source_layer', None)} but layer={layer}")
    y = observable_gradients(model, tokenizer, prompts, layer=layer, **kwargs).mean(0)  # (d,)
    norm = float(y.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"the observable's gradient at layer {layer} is {norm}; no direction")
    V = (y / norm)[:, None]  # (d, 1)
    if delta is not None:
        _, alpha = output_directions(delta, V.to(dtype=delta.dtype, device=delta.device), float(R))
        V = V.to(dtype=delta.dtype, device=delta.device)
    else:
        alpha = torch.tensor([norm], dtype=V.dtype)
    logger.info("obprop at layer %d: ‖y‖ = %.4g (score change per unit steering), R = %.4g", layer, norm, R)
    return FitResult(U=None, V=V, alpha=alpha, R=float(R), method="obprop", scores=[norm])


def linear_readout(V: Tensor, y: Tensor, R: float = 1.0) -> Tensor:
    """First-order score change of steering by each column of ``R·V``: R·⟨y, v_ℓ⟩.

    V : (d, m); y : (d,) an observable's feature vector → (m,) float64.
    """
    if V.ndim != 2 or y.ndim != 1 or V.shape[0] != y.shape[0]:
        raise ValueError(f"V must be (d, m) and y (d,) with the same d, got {tuple(V.shape)} and {tuple(y.shape)}")
    return float(R) * (V.double().T @ y.double().to(V.device))


def _vec(name: str, y: Tensor) -> Tensor:
    y = torch.as_tensor(y).double().reshape(-1)
    if not bool(torch.isfinite(y).all()) or float(y.norm()) == 0.0:
        raise ValueError(f"{name} must be a finite, non-zero vector")
    return y


def coupling_coefficient(y_from: Tensor, y_to: Tensor) -> float:
    """C(y₁, y₂) = ⟨y₁, y₂⟩ / ‖y₁‖² (module doc): the expected ⟨x, y₂⟩ per unit of ⟨x, y₁⟩."""
    a, b = _vec("y_from", y_from), _vec("y_to", y_to)
    if a.shape != b.shape:
        raise ValueError(f"feature vectors of different sizes: {tuple(a.shape)} and {tuple(b.shape)}")
    return float(a @ b) / float(a @ a)


def cosine_similarity(y1: Tensor, y2: Tensor) -> float:
    """⟨y₁, y₂⟩ / (‖y₁‖‖y₂‖), in [−1, 1]."""
    a, b = _vec("y1", y1), _vec("y2", y2)
    if a.shape != b.shape:
        raise ValueError(f"feature vectors of different sizes: {tuple(a.shape)} and {tuple(b.shape)}")
    return max(-1.0, min(1.0, float(a @ b) / float(a.norm() * b.norm())))


@dataclass(eq=False)
class ObservablePropagation(FitEstimator):
    """Estimator of :func:`observable_direction` (the contract of :mod:`melbo.fit.estimator`).

    ``fit(delta)`` needs a :class:`~melbo.maps.transformer.TransformerCausalMap` built from prompt
    texts: the gradient is averaged over its prompts (formatted with its ``tokenizer``,
    ``chat`` and ``system_prompt``) at its source layer. ``R`` None is calibrated at ``lam`` on
    ``n_cal`` directions, so obprop is steered at the same R as the other methods.

    Fitted attributes as every estimator: ``U_`` None, ``alpha_`` = [‖Δ_R(v)‖], ``scores_`` =
    [‖y‖], ``history_`` empty. The gradient y (unnormalised) is ``V_[:, 0] * scores_[0]``
    (``feature_vector_`` is its deprecated name).
    """

    token_a: str = "Sure"
    token_b: str = "Sorry"
    _: KW_ONLY
    space: Literal["exact", "auto", "both"] = "exact"
    batch_size: int = 16

    needs_model = True

    def _run(self, delta: CausalMap, R: float, generator: torch.Generator) -> FitResult:
        from melbo.maps.transformer import TransformerCausalMap

        assert isinstance(delta, TransformerCausalMap)  # checked by fit
        if not delta.raw_prompts or delta.tokenizer is None:
            raise ValueError(
                "obprop needs the prompt texts and tokenizer behind Δ: build the TransformerCausalMap "
                "from prompt texts with tokenizer=... (not from a PromptBatch)"
            )
        res = observable_direction(
            delta.model, delta.tokenizer, list(delta.raw_prompts), layer=delta.source_layer, R=R, delta=delta,
            token_a=self.token_a, token_b=self.token_b, space=self.space, chat=delta.chat,  # type: ignore[arg-type]
            system_prompt=delta.system_prompt, batch_size=self.batch_size, access=delta.access,
        )
        return res

    @property
    def feature_vector_(self) -> torch.Tensor:
        """Deprecated name of ``V_[:, 0] * scores_[0]``, on the CPU (a :class:`DeprecationWarning`)."""
        y = self.V_[:, 0].detach().cpu() * self.scores_[0]  # AttributeError before the fit
        warn_renamed("ObservablePropagation.feature_vector_", "V_[:, 0] * scores_[0]", stacklevel=3)
        return y
