"""Contrastive mean difference (CAA; the "refusal direction"), ``method.md`` §6.

    μ_A = mean over prompts a ∈ A, positions p ∈ P_a of hidden_states[s]_a[p]
    μ_B = the same over B
    v   = (μ_A − μ_B) / ‖μ_A − μ_B‖

``hidden_states[s]`` is the residual stream entering decoder layer s (as in
``output_hidden_states``), where melbo adds steering vectors. P_a = the last k tokens of
prompt a (k = 1 by default); padding never counts: prompts are padded in batches and run
with ``position_ids`` counted over real tokens only, so each prompt's activations are
those of the prompt alone (up to rounding) for every position-embedding scheme.

A supervised baseline: it needs the contrast set B, which DCT does not. R defaults to
‖μ_A − μ_B‖, so ``R * v`` is the raw difference (CAA's steering vector); pass R to steer
at another norm (e.g. the calibrated R of the DCT features it is compared with).
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
from melbo.models.hooks import residual_stream
from melbo.prompts import PromptBatch, PromptLike, build_prompts

__all__ = ["MeanDifference", "layer_input_activations", "mean_activation", "mean_difference"]

logger = logging.getLogger(__name__)


def layer_input_activations(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    layer: int,
    *,
    access: LayerAccess | None = None,
) -> Tensor:
    """``hidden_states[layer]`` of a padded batch, run with padding-free position ids.

    The forward pass stops at layer ``layer`` (a pre-hook records its input and aborts),
    so later layers and the unembedding are never computed.

    Parameters
    ----------
    input_ids, attention_mask : Tensor, shape (B, T)
        Left- or right-padded tokens; mask 1 = token, 0 = padding.
    layer : int
        0 ≤ layer < n_layers.

    Returns
    -------
    Tensor, shape (B, T, d), model dtype (rows at padding are meaningless).
    """
    acc = resolve_access(model, access)
    layer = acc.check_layer(layer)
    return residual_stream(model, acc.layers, [layer], input_ids=input_ids, attention_mask=attention_mask)[layer]


def mean_activation(
    model: nn.Module,
    prompts: Sequence[PromptLike] | PromptBatch,
    layer: int,
    *,
    tokenizer: Any = None,
    positions: int = 1,
    chat: bool | Literal["auto"] = "auto",
    system_prompt: str | None = None,
    padding_side: Literal["left", "right"] = "left",
    batch_size: int = 32,
    access: LayerAccess | None = None,
) -> Tensor:
    """Mean of ``hidden_states[layer]`` over prompts and their target positions.

    Parameters
    ----------
    prompts : prompts (tokenised with ``tokenizer`` by :func:`melbo.prompts.build_prompts`,
        in batches of ``batch_size``), or a ready :class:`PromptBatch` (used as one batch,
        with its own positions).
    positions : int
        The last k ≥ 1 tokens of each prompt (ignored for a PromptBatch).

    Returns
    -------
    Tensor, shape (d,), float32 (float64 for a float64 model), on the model's device.
    """
    acc = resolve_access(model, access)
    layer = acc.check_layer(layer)
    batch_size = check_positive_int("batch_size", batch_size)
    param = next(model.parameters())
    out_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    if isinstance(prompts, PromptBatch):
        batches = [prompts]
    else:
        prompts = check_prompts(prompts)
        if tokenizer is None:
            raise ValueError("prompts given as text need a tokenizer (tokenizer=...)")
        positions = check_positive_int("positions", positions)
        batches = [
            build_prompts(
                tokenizer,
                prompts[i : i + batch_size],
                chat=chat,
                system_prompt=system_prompt,
                positions=positions,
                padding_side=padding_side,
                model_config=getattr(model, "config", None),
            )
            for i in range(0, len(prompts), batch_size)
        ]
    total = torch.zeros(acc.d_model, dtype=out_dtype, device=param.device)
    count = 0
    for b in batches:
        b = b.to(param.device)
        picked = residual_stream(model, acc.layers, [layer], input_ids=b.input_ids, attention_mask=b.attention_mask,
                                 positions=b.positions)[layer].to(out_dtype)  # (B, k, d)
        total += picked.sum(dim=(0, 1))
        count += picked.shape[0] * picked.shape[1]
    return total / count


def mean_difference(
    model: nn.Module,
    prompts_a: Sequence[PromptLike] | PromptBatch,
    prompts_b: Sequence[PromptLike] | PromptBatch,
    *,
    layer: int,
    tokenizer: Any = None,
    positions: int = 1,
    chat: bool | Literal["auto"] = "auto",
    system_prompt: str | None = None,
    padding_side: Literal["left", "right"] = "left",
    batch_size: int = 32,
    R: float | None = None,
    delta: CausalMap | None = None,
    access: LayerAccess | None = None,
) -> FitResult:
    """The normalised difference of mean layer-``layer`` inputs on A and on B.

    Parameters
    ----------
    model : a causal LM
    prompts_a, prompts_b : the two contrast sets (see :func:`mean_activation`)
    layer : int
        Source layer s, 0 ≤ s < n_layers: the residual stream entering it is averaged.
    positions : int
        Last k tokens of each prompt (1 = last token).
    padding_side : "left" or "right"
        How batches are padded (the result does not depend on it up to rounding).
    R : float, optional
        Steering norm; default ‖μ_A − μ_B‖.
    delta : CausalMap, optional
        A causal map with source layer ``layer``: α = ‖Δ_R(v)‖ (without it α = [‖μ_A − μ_B‖]).
        U is None either way: the method learns no target-layer direction.

    Returns
    -------
    FitResult
        method ``"mean-diff"``, m = 1: U None, V (d, 1) = v; empty history, ``n_iter = 0``.
    """
    acc = resolve_access(model, access)
    layer = acc.check_layer(layer)
    if delta is not None and getattr(delta, "source_layer", layer) != layer:
        raise ValueError(f"delta has source_layer={getattr(delta, 'source_layer', None)} but layer={layer}")
    kw: dict[str, Any] = {
        "tokenizer": tokenizer,
        "positions": positions,
        "chat": chat,
        "system_prompt": system_prompt,
        "padding_side": padding_side,
        "batch_size": batch_size,
        "access": acc,
    }
    diff = mean_activation(model, prompts_a, layer, **kw) - mean_activation(model, prompts_b, layer, **kw)  # (d,)
    norm = float(diff.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"the mean activations of the two prompt sets are identical (‖μ_A − μ_B‖ = {norm}); no direction")
    R_ = check_R(R) if R is not None else norm
    V = (diff / norm)[:, None]  # (d, 1)
    if delta is not None:
        _, alpha = output_directions(delta, V, R_)
        V = V.to(dtype=delta.dtype, device=delta.device)
    else:
        alpha = torch.tensor([norm], dtype=V.dtype, device=V.device)
    logger.info("mean-diff at layer %d: ‖μ_A − μ_B‖ = %.4g, R = %.4g", layer, norm, R_)
    return FitResult(U=None, V=V, alpha=alpha, R=R_, method="mean-diff")


@dataclass(eq=False)
class MeanDifference(FitEstimator):
    """Estimator of :func:`mean_difference` (the contract of :mod:`melbo.fit.estimator`).

    ``fit(delta)`` needs a :class:`~melbo.maps.transformer.TransformerCausalMap`: its prompts are
    the set A (re-tokenised with the map's ``tokenizer``, ``chat`` and ``system_prompt`` at
    the last ``positions`` tokens when it was built from texts; its :class:`PromptBatch` as
    is otherwise) and the activations are read at its source layer. ``contrast_prompts`` is
    the set B. ``R`` None is calibrated at ``lam`` on ``n_cal`` directions, so mean-diff is
    steered at the same R as the other methods (:func:`mean_difference` itself defaults to
    ‖μ_A − μ_B‖).

    Fitted attributes as every estimator: ``U_`` None (no target direction), ``alpha_`` =
    [‖Δ_R(v)‖], ``history_`` and ``scores_`` empty. The direction v is ``V_[:, 0]`` (``direction_``
    is its deprecated name).
    """

    contrast_prompts: Sequence[PromptLike] | PromptBatch = ()
    _: KW_ONLY
    positions: int = 1
    padding_side: Literal["left", "right"] = "left"
    batch_size: int = 32

    needs_model = True

    def _run(self, delta: CausalMap, R: float, generator: torch.Generator) -> FitResult:
        from melbo.maps.transformer import TransformerCausalMap

        assert isinstance(delta, TransformerCausalMap)  # checked by fit
        prompts_a: Sequence[PromptLike] | PromptBatch = (
            list(delta.raw_prompts) if delta.raw_prompts is not None else delta.prompts
        )
        res = mean_difference(
            delta.model, prompts_a, self.contrast_prompts, layer=delta.source_layer, tokenizer=delta.tokenizer,
            positions=self.positions, chat=delta.chat, system_prompt=delta.system_prompt,  # type: ignore[arg-type]
            padding_side=self.padding_side, batch_size=self.batch_size, R=R, delta=delta, access=delta.access,
        )
        return res

    @property
    def direction_(self) -> torch.Tensor:
        """Deprecated name of ``V_[:, 0]`` (a :class:`DeprecationWarning`)."""
        v = self.V_[:, 0]  # AttributeError before the fit
        warn_renamed("MeanDifference.direction_", "V_[:, 0]", stacklevel=3)
        return v
