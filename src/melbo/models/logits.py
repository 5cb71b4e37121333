"""What a causal LM does to its logits after the unembedding, per model family.

Most families return ``lm_head(final_norm(h))`` as is. A few scale the logits, and which
config field does what depends on the family, not on the field's name (as their
``*ForCausalLM.forward`` in transformers does it):

* Cohere (``cohere``, ``cohere2``, ``cohere2_moe``, ``cohere_compass``) multiply by
  ``logit_scale``. MPT's config has a ``logit_scale`` too, which its transformers model
  ignores — so it is *not* applied by field name.
* Granite (``granite*``) divide by ``logits_scaling``; MiniCPM3 divides the final hidden
  states by it before its bias-free ``lm_head``, which is the same. HyperCLOVA X
  *multiplies* by ``logits_scaling``.
* MuseSpark / MuseGlimmer multiply by ``output_multiplier`` before soft-capping.
* Soft-capping (Gemma 2/3/3n/4, VaultGemma, NanoChat, …): ``cap · tanh(z / cap)`` with
  ``cap = final_logit_softcapping``, applied last, wherever the text config sets it.

The transform acts on each logit separately, so it may be applied to a few selected logits
(e.g. two unembedding rows) as well as to the full vocabulary.

:func:`token_logits` is melbo's one readout of a few logits from the last decoder layer's
output — final norm, unembedding rows plus their bias, then this transform — used by the
jailbreak score (:mod:`melbo.evaluate.scores`) and the readout ranking (:mod:`melbo.evaluate.rank`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from melbo.models.access import LayerAccess

__all__ = ["logit_postprocess", "text_config", "token_logits"]

logger = logging.getLogger(__name__)

_MUL, _DIV = "mul", "div"

# model_type → (config field, how it scales the logits), read from each family's forward.
_SCALE_RULES: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe", "cohere_compass", "cohere_compass_text"), ("logit_scale", _MUL)),
    **dict.fromkeys(
        ("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoeshared", "granitemoehybrid", "minicpm3"),
        ("logits_scaling", _DIV),
    ),
    "hyperclovax": ("logits_scaling", _MUL),
    **dict.fromkeys(("muse_spark", "muse_spark_text", "muse_glimmer", "muse_glimmer_text"), ("output_multiplier", _MUL)),
}
_SCALE_FIELDS = ("logit_scale", "logits_scaling", "output_multiplier")
_UNSCALED = frozenset({"mpt"})  # families whose config has such a field that their forward ignores


def text_config(model: nn.Module) -> Any:
    """The model's text config (``config.get_text_config()`` where it has one), else ``config``."""
    cfg = getattr(model, "config", None)
    get = getattr(cfg, "get_text_config", None)
    if callable(get):
        with contextlib.suppress(Exception):
            return get()
    return cfg


def _number(cfg: Any, name: str) -> float | None:
    v = getattr(cfg, name, None)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def logit_postprocess(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The per-logit transform ``model`` applies after its unembedding (identity if none).

    Family rule in the module doc. A model of another family whose config sets one of the
    scaling fields gets a warning (its logits are left unscaled: melbo does not know the rule).

    Returns
    -------
    callable Tensor (any shape) → Tensor of the same shape and dtype
    """
    cfg = text_config(model)
    top = getattr(model, "config", None)
    families = {str(getattr(c, "model_type", "")).lower() for c in (cfg, top) if c is not None}
    rule = next((_SCALE_RULES[f] for f in sorted(families) if f in _SCALE_RULES), None)
    scale: float | None = None
    op: str | None = None
    if rule is not None:
        scale, op = _number(cfg, rule[0]), rule[1]
    else:
        known = [name for name in _SCALE_FIELDS if _number(cfg, name) not in (None, 1.0)]
        if known and not families & _UNSCALED:
            logger.warning(
                "model_type %s sets %s, but melbo does not know how this family applies it; logits are "
                "read unscaled", sorted(families), known,
            )
    cap = _number(cfg, "final_logit_softcapping")

    def apply(z: Tensor) -> Tensor:
        if scale is not None and op == _MUL:
            z = z * scale
        elif scale is not None and op == _DIV:
            z = z / scale
        if cap is not None and cap > 0:
            z = torch.tanh(z / cap) * cap
        return z

    return apply


def token_logits(model: nn.Module, h: Tensor, token_ids: Sequence[int], access: LayerAccess) -> Tensor:
    """The model's logits of ``token_ids`` from the output ``h`` of its last decoder layer.

    As the model's own head computes them: ``access.final_norm``, then only the unembedding
    rows of ``token_ids`` (in float32) plus their bias if the unembedding has one, then
    :func:`logit_postprocess` (soft-capping, logit scaling). Gradients flow through ``h``
    (the model's weights are read detached).

    Parameters
    ----------
    h : Tensor, shape (..., d_model)
    token_ids : sequence of int, vocabulary ids

    Returns
    -------
    Tensor, shape (..., len(token_ids)), float32 — equal to ``model(...).logits[..., token_ids]``.
    """
    unembed = access.unembed
    W = getattr(unembed, "weight", None)
    if not isinstance(W, Tensor):
        raise TypeError(f"the unembedding {type(unembed).__name__} has no weight tensor")
    vocab = W.shape[0]
    ids = [int(i) for i in token_ids]
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"token ids {bad} are outside the unembedding's vocabulary of {vocab}")
    normed = access.final_norm(h).float()  # (..., d)
    idx = torch.tensor(ids, device=W.device)
    rows = W.detach().index_select(0, idx).to(device=normed.device, dtype=torch.float32)  # (k, d)
    z = normed @ rows.T  # (..., k)
    bias = getattr(unembed, "bias", None)
    if isinstance(bias, Tensor):
        z = z + bias.detach().index_select(0, idx.to(bias.device)).to(z.device, torch.float32)
    return logit_postprocess(model)(z)
