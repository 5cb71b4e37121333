"""Steering and directional ablation as context managers around removable hooks.

Nothing here edits a weight: every intervention registers hooks on entry and removes them
on exit — also when the body raises — so the model is bit-for-bit what it was before.
Interventions nest and compose freely.

Where things happen (``hidden_states[i]`` = the residual stream entering decoder layer i,
as in ``output_hidden_states``):

* :func:`steer` / :func:`steering` add ``scale * vector`` to ``hidden_states[layer]`` at every
  position, through a forward *pre*-hook on ``layers[layer]``. The hook runs on every
  forward, so under KV-cache generation each new token is steered too.
  :func:`steer_features` adds ``R * V[:, k]`` at ``source_layer`` — exactly where Δ was
  trained (``method.md`` §1). (The publication's code adds the vector as a bias one
  sub-layer later; melbo adds it at the layer input.)
* :func:`ablate` projects unit directions out of every write into the residual stream:
  the outputs of ``attn_out(i)`` and ``mlp_out(i)`` of every layer (post-norm families:
  the post-norms), equivalent to the weight edit ``W ← W − w wᵀ W`` (bias included). In a
  mixture-of-experts layer the MLP write is the sparse-MoE block's output, the
  router-weighted sum of the chosen experts' outputs (plus a gated shared expert's), so the
  projection equals that edit of every expert's and the shared expert's ``down_proj``.
  ``include_embedding=True`` also projects them out of the stream entering layer 0
  (token and, where the model has them, learned position embeddings). That pre-hook is
  placed before any other pre-hook on layer 0, so a steering vector added at layer 0 is
  never ablated, whichever context was entered first.

Caveat: ``output_hidden_states`` records ``hidden_states[i]`` (i ≥ 1) as the *output* of
layer i−1, before a steering pre-hook on layer i runs, so the recorded stream does not
include the steering vector (``hidden_states[0]`` does).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from melbo.errors import check_scale
from melbo.models.access import LayerAccess, resolve_access
from melbo.models.hooks import adding_to_inputs, map_layer_input, removing, residual_stream

if TYPE_CHECKING:
    from melbo.features import Features

__all__ = [
    "STEER_REFUSE_RATIO",
    "STEER_WARN_RATIO",
    "ablate",
    "check_steering_norm",
    "check_vectors",
    "orthonormal_basis",
    "residual_norm",
    "row_steering",
    "steer",
    "steer_features",
    "steering",
]

logger = logging.getLogger(__name__)


def _check_vector(name: str, v: object, d: int) -> Tensor:
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({d},), got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
    if tuple(v.shape) != (d,):
        raise ValueError(f"{name} must have shape (d_model,) = ({d},), got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} has non-finite values")
    return v


def check_vectors(vectors: object, d_model: int) -> Tensor:
    """``vectors`` if it is a finite tensor of k steering vectors as columns, shape (d_model, k);
    else ValueError naming the shape wanted (the one check of ``generate_steered`` and the
    score functions that steer with a matrix of vectors)."""
    if not isinstance(vectors, Tensor) or vectors.ndim != 2 or vectors.shape[0] != d_model:
        shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ValueError(f"vectors must have shape (d_model, k) = ({d_model}, k), got {shape}")
    if not bool(torch.isfinite(vectors).all()):
        raise ValueError("vectors has non-finite values")
    return vectors


@contextmanager
def steering(
    model: nn.Module,
    additions: Sequence[tuple[int, Tensor]],
    *,
    scale: float = 1.0,
    access: LayerAccess | None = None,
) -> Iterator[None]:
    """Add ``scale * vector`` to the residual stream entering ``layers[layer]`` for every
    ``(layer, vector)`` pair, at every position, while the context is open.

    Parameters
    ----------
    model : nn.Module
        A decoder-only model that :func:`~melbo.models.access.get_layer_access` understands
        (or pass ``access``).
    additions : sequence of (int, Tensor of shape (d_model,))
        Layer index 0 ≤ layer < n_layers and the vector to add there. Several pairs may name
        the same layer (their vectors add up). The vector is cast to the hidden states'
        dtype and device on every forward; gradients flow to it.
    scale : float
        Multiplies every vector.
    access : LayerAccess, optional
        Layer map of ``model``; found by name when omitted.
    """
    acc = resolve_access(model, access)
    d = acc.d_model
    check_scale("scale", scale, zero=True, bound=None)  # any finite multiple; the commands bound it
    checked: list[tuple[int, Tensor]] = []
    for j, pair in enumerate(additions):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"additions[{j}] must be a (layer, vector) pair, got {pair!r}")
        layer, vec = pair
        try:
            acc.check_layer(layer)
        except (TypeError, ValueError) as err:
            raise type(err)(f"additions[{j}]: {err}") from None
        checked.append((layer, _check_vector(f"additions[{j}] vector", vec, d)))

    logger.debug("steering at layers %s (scale=%s)", [la for la, _ in checked], scale)
    with adding_to_inputs([(f"layers[{la}]", acc.layers[la], vec) for la, vec in checked], scale=scale):
        yield


@contextmanager
def row_steering(model: nn.Module, layer: int, rows: Tensor, *, access: LayerAccess | None = None) -> Iterator[None]:
    """Add ``rows[b]`` to row ``b`` of the residual stream entering ``layers[layer]``, at every
    position, while the context is open: a different steering vector for every row of a
    batch (features × prompts folded into one batch). Under KV-cache generation every new
    token of row ``b`` gets ``rows[b]`` too.

    Parameters
    ----------
    rows : Tensor, shape (B, d_model)
        One vector per batch row; a forward with another batch size raises.
    """
    acc = resolve_access(model, access)
    acc.check_layer(layer)
    if not isinstance(rows, Tensor) or rows.ndim != 2 or rows.shape[1] != acc.d_model:
        shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
        raise ValueError(f"rows must have shape (batch, d_model) = (B, {acc.d_model}), got {shape}")
    if not bool(torch.isfinite(rows).all()):
        raise ValueError("rows has non-finite values")

    with adding_to_inputs([(f"layers[{layer}]", acc.layers[layer], rows)]):
        yield


@contextmanager
def steer(
    model: nn.Module,
    vector: Tensor,
    *,
    layer: int,
    scale: float = 1.0,
    access: LayerAccess | None = None,
) -> Iterator[None]:
    """Add ``scale * vector`` (shape (d_model,)) to the residual stream entering
    ``layers[layer]``, at every position, prompt and generated tokens alike.

    Example
    -------
    >>> with steer(model, v, layer=4, scale=8.0):
    ...     out = model.generate(ids, max_new_tokens=20)
    """
    with steering(model, [(layer, vector)], scale=scale, access=access):
        yield


@contextmanager
def steer_features(
    model: nn.Module,
    features: Features,
    k: int,
    scale: float = 1.0,
    *,
    force: bool = False,
    access: LayerAccess | None = None,
) -> Iterator[None]:
    """Steer with feature ``k``: add ``scale * R * V[:, k]`` to the residual stream entering
    layer ``features.source_layer``, where Δ was trained.

    When the features carry a model fingerprint it is checked first
    (:meth:`~melbo.features.Features.check_model`; ``force=True`` only logs a mismatch).
    """
    if features.model:
        features.check_model(model, force=force)
    with steering(
        model, [(features.source_layer, features.steering_vector(k))], scale=scale, access=access
    ):
        yield


STEER_WARN_RATIO = 100.0
"""A steering vector this many times the residual stream's typical norm is warned about: the
layer then sees mostly the vector, little of the prompt."""
STEER_REFUSE_RATIO = 1e4
"""…and this many times is refused: the prompt is lost below the vector's last float digits, and
at ~1e19 the norm's square overflows float32 — the completion is then empty or garbage."""


@torch.no_grad()
def residual_norm(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Any],
    layer: int,
    *,
    chat: bool | str = "auto",
    system_prompt: str | None = None,
    access: LayerAccess | None = None,
) -> float:
    """Median norm of the residual stream entering ``layers[layer]`` over the prompts' tokens
    (padding excluded): one unsteered forward pass, stopped there (:func:`melbo.models.hooks.residual_stream`,
    so a left-padded prompt sees the positions it sees alone)."""
    from melbo.prompts import build_prompts

    acc = resolve_access(model, access)
    acc.check_layer(layer)
    device = next(model.parameters()).device
    batch = build_prompts(tokenizer, list(prompts), chat=chat, system_prompt=system_prompt,  # type: ignore[arg-type]
                          positions=1, padding_side="left", model_config=getattr(model, "config", None)).to(device)
    h = residual_stream(model, acc.layers, [layer], input_ids=batch.input_ids,
                        attention_mask=batch.attention_mask)[layer].float()  # (n, T, d)
    norms = h.norm(dim=-1)[batch.attention_mask.to(h.device).bool()]  # (n_tokens,)
    return float(norms.median())


def check_steering_norm(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Any],
    layer: int,
    norm: float,
    *,
    chat: bool | str = "auto",
    system_prompt: str | None = None,
    what: str = "the steering vector",
    fix: str = "use a smaller --scale, or check the features file's R and V",
) -> float:
    """Compare a steering vector's norm with the residual stream it is added to, before steering.

    Returns the ratio ``norm / residual_norm(...)``; logs a warning above
    :data:`STEER_WARN_RATIO` and raises :class:`melbo.errors.UserError` above
    :data:`STEER_REFUSE_RATIO` (or for a non-finite norm), naming both norms.
    """
    from melbo.errors import UserError

    if not math.isfinite(norm):
        raise UserError(f"{what}: the steered norm is {norm} (not finite)")
    ref = residual_norm(model, tokenizer, prompts, layer, chat=chat, system_prompt=system_prompt)
    ratio = norm / ref if ref > 0 else math.inf
    msg = (f"{what}: steered norm {norm:.4g} is {ratio:.3g}× the residual stream's median norm {ref:.4g} "
           f"at layer {layer}")
    if ratio > STEER_REFUSE_RATIO:
        raise UserError(msg + f" (more than {STEER_REFUSE_RATIO:g}×: the prompt would be lost and the completion "
                        f"garbage); {fix}")
    if ratio > STEER_WARN_RATIO:
        logger.warning("%s: the model sees mostly the vector", msg)
    return ratio


def orthonormal_basis(directions: Tensor, d: int) -> Tensor:
    """Orthonormal columns spanning ``directions``.

    Parameters
    ----------
    directions : Tensor, shape (d,) or (d, r)
        One or r directions (any norm, linearly independent).
    d : int
        Expected dimension.

    Returns
    -------
    Tensor, shape (d, r), float32
        Q of the QR decomposition (computed in float64).
    """
    if not isinstance(directions, Tensor):
        raise TypeError(f"directions must be a torch.Tensor, got {type(directions).__name__}")
    if not directions.is_floating_point():
        raise TypeError(f"directions must be floating point, got dtype {directions.dtype}")
    w = directions.detach()
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim != 2 or w.shape[0] != d:
        raise ValueError(
            f"directions must have shape (d_model,) or (d_model, r) with d_model = {d}, "
            f"got {tuple(directions.shape)}"
        )
    if w.shape[1] == 0:
        raise ValueError("directions has no columns")
    if w.shape[1] > d:
        raise ValueError(f"cannot ablate {w.shape[1]} > d_model = {d} directions")
    w64 = w.to(torch.float64)
    if not bool(torch.isfinite(w64).all()):
        raise ValueError("directions has non-finite values")
    norms = w64.norm(dim=0)
    zero = (norms == 0).nonzero().reshape(-1).tolist()
    if zero:
        raise ValueError(f"directions has zero columns {zero}; a zero vector has no direction")
    q, r = torch.linalg.qr(w64 / norms)
    diag = r.diagonal().abs()
    dependent = (diag < 1e-6).nonzero().reshape(-1).tolist()
    if dependent:
        raise ValueError(
            f"directions are linearly dependent: columns {dependent} lie (numerically) in the "
            "span of the earlier ones"
        )
    return q.to(torch.float32)


def _project_out(x: Tensor, q: Tensor) -> Tensor:
    """``x − (x Q) Qᵀ`` in float32, cast back to x's dtype. x: (..., d), Q: (d, r)."""
    qq = q.to(device=x.device)
    xf = x.to(torch.float32)
    return (xf - (xf @ qq) @ qq.T).to(x.dtype)


@contextmanager
def ablate(
    model: nn.Module,
    directions: Tensor,
    *,
    include_embedding: bool = False,
    access: LayerAccess | None = None,
) -> Iterator[Tensor]:
    """Project ``directions`` out of every write into the residual stream while open.

    Forward hooks on ``attn_out(i)`` and ``mlp_out(i)`` of every layer replace their output
    (the first element when it is a tuple) with ``out − (out Q) Qᵀ``, Q the orthonormalised
    directions; for an nn.Linear write this equals the weight edit ``W ← W − Q Qᵀ W``,
    ``b ← b − Q Qᵀ b``.

    Parameters
    ----------
    model : nn.Module
        A decoder-only model (or pass ``access``).
    directions : Tensor, shape (d_model,) or (d_model, r)
        Directions to remove (need not be unit norm or orthogonal; must be independent).
    include_embedding : bool
        Also project them out of the residual stream entering layer 0.
    access : LayerAccess, optional
        Layer map of ``model``; found by name when omitted.

    Yields
    ------
    Tensor, shape (d_model, r), float32
        The orthonormal basis that is projected out.
    """
    acc = resolve_access(model, access)
    q = orthonormal_basis(directions, acc.d_model)

    def out_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, Tensor):
            return _project_out(output, q)
        if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
            return (_project_out(output[0], q), *output[1:])
        raise TypeError(
            f"cannot ablate the output of {type(module).__name__}: expected a Tensor or a tuple "
            f"starting with one, got {type(output).__name__}"
        )

    def embed_hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return map_layer_input(args, kwargs, lambda h: _project_out(h, q))

    with removing() as handles:
        if include_embedding:
            handles.append(
                acc.layers[0].register_forward_pre_hook(embed_hook, with_kwargs=True, prepend=True)
            )
        for i in range(acc.n_layers):
            handles.append(acc.attn_out(i).register_forward_hook(out_hook))
            handles.append(acc.mlp_out(i).register_forward_hook(out_hook))
        logger.debug(
            "ablating %d direction(s) from %d writes%s",
            q.shape[1],
            2 * acc.n_layers,
            " and the embedding" if include_embedding else "",
        )
        yield q
