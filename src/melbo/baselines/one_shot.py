"""One-shot optimised steering vectors (Dunefsky & Cohan, 2025; ``method.md`` §6).

Gradient descent on a single (prompt, completion) example. With the steering vector v
added to the residual stream entering layer s at every position (prompt and completion
tokens, via :func:`melbo.steering.interventions.steer`, where DCT features are applied too), and
ℓ(c) = Σ_t log p_v(c_t | prompt, c_<t) the completion's log-probability:

* ``"promote"``  maximise ℓ(completion)
* ``"suppress"`` minimise the completion's probability: maximise Σ_t log(1 − p_v(c_t | …))
  (the paper's default; ``one_minus=False`` maximises −ℓ(completion) instead, which is
  unbounded once p is small)
* ``"mixed"``    promote ``completion`` and suppress ``suppress``; the two objectives add

Adam (lr 0.01 as in the paper) on v; after each step v is projected onto the ball
‖v‖ ≤ ``max_norm`` (when given). v starts at 0 (``init_norm=0``, deterministic) or at a
seeded random direction of norm ``init_norm`` (the paper uses 1). The fit stops after
``max_iter`` steps or once the objective changes by less than ``tol`` between steps.

The prompt is formatted as for Δ (:func:`melbo.prompts.build_prompts`: chat template and
generation prompt for conversations or ``chat=True``); the completion is tokenised on its
own (no special tokens) and appended, so no token straddles the boundary. Logits are
computed only at the positions that predict completion tokens (``logits_to_keep``), with
the model's own head (final norm, unembedding, any logit soft-capping).

Result: m = 1, ``V = v/‖v‖``, ``R = ‖v‖`` (≤ max_norm).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from melbo.baselines.random_vectors import output_directions
from melbo.errors import warn_renamed
from melbo.fit._common import RandomState, check_choice, check_positive_int, make_generator
from melbo.fit.estimator import FitEstimator
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap
from melbo.models.access import LayerAccess, get_layer_access
from melbo.prompts import PromptLike, build_prompts
from melbo.steering.interventions import steer

__all__ = [
    "MODES",
    "CompletionBatch",
    "OneShotSteering",
    "completion_log_probs",
    "encode_completions",
    "one_shot",
]

logger = logging.getLogger(__name__)

MODES = ("promote", "suppress", "mixed")
Mode = Literal["promote", "suppress", "mixed"]


@dataclass(frozen=True)
class CompletionBatch:
    """One prompt followed by B completions, right-padded.

    Attributes
    ----------
    input_ids, attention_mask : Tensor, shape (B, T)
        Row b = prompt tokens + completion b's tokens + padding.
    score_positions : Tensor, shape (L,)
        Positions whose logits predict completion tokens: P−1 … P+L−2 (P = prompt length,
        L = longest completion).
    targets : Tensor, shape (B, L)
        The completion tokens (padding where a completion is shorter).
    valid : Tensor, shape (B, L), bool
        True where ``targets`` is a real completion token.
    """

    input_ids: Tensor
    attention_mask: Tensor
    score_positions: Tensor
    targets: Tensor
    valid: Tensor

    def to(self, device: torch.device | str) -> CompletionBatch:
        return CompletionBatch(*(t.to(device) for t in (
            self.input_ids, self.attention_mask, self.score_positions, self.targets, self.valid
        )))


def encode_completions(
    tokenizer: Any,
    prompt: PromptLike,
    completions: list[str],
    *,
    chat: bool | Literal["auto"] = "auto",
    system_prompt: str | None = None,
    model_config: Any = None,
) -> CompletionBatch:
    """Tokenise ``prompt`` (as :func:`build_prompts` does) followed by each completion."""
    if not completions:
        raise ValueError("give at least one completion")
    p = build_prompts(tokenizer, [prompt], chat=chat, system_prompt=system_prompt, positions=1, model_config=model_config)
    prompt_ids = p.input_ids[0].tolist()
    comp_ids: list[list[int]] = []
    for c in completions:
        if not isinstance(c, str) or not c:
            raise ValueError(f"a completion must be a non-empty string, got {c!r}")
        ids = list(tokenizer(c, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"completion {c!r} tokenises to nothing")
        comp_ids.append(ids)
    P, L = len(prompt_ids), max(len(ids) for ids in comp_ids)
    B, T = len(comp_ids), P + L
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None) or 0
    input_ids = torch.full((B, T), int(pad), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    targets = torch.full((B, L), int(pad), dtype=torch.long)
    valid = torch.zeros((B, L), dtype=torch.bool)
    for b, ids in enumerate(comp_ids):
        seq = prompt_ids + ids
        input_ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        targets[b, : len(ids)] = torch.tensor(ids)
        valid[b, : len(ids)] = True
    return CompletionBatch(input_ids, mask, torch.arange(P - 1, P - 1 + L), targets, valid)


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic forward
        return False


def completion_log_probs(model: nn.Module, batch: CompletionBatch) -> Tensor:
    """log p(c_t | prompt, c_<t) of every completion token, differentiable (float32).

    Returns
    -------
    Tensor, shape (B, L): 0 where ``batch.valid`` is False.
    """
    pos = batch.score_positions  # (L,)
    kw: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    logits: Tensor | None = None
    if _accepts_logits_to_keep(model):
        out = model(**kw, logits_to_keep=pos).logits
        if out.shape[:2] == (batch.input_ids.shape[0], pos.shape[0]):
            logits = out  # (B, L, V)
    if logits is None:
        logits = model(**kw).logits[:, pos]  # (B, L, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, batch.targets[..., None])[..., 0]  # (B, L)
    return picked.masked_fill(~batch.valid, 0.0)


def _suppression(logp: Tensor, valid: Tensor, one_minus: bool) -> Tensor:
    """Σ_t log(1 − p_t) (one_minus) or −Σ_t log p_t over valid tokens; (L,) → scalar."""
    if one_minus:
        p = logp.exp().clamp(max=1.0 - 1e-6)
        return torch.log1p(-p).masked_fill(~valid, 0.0).sum()
    return -logp.sum()


def one_shot(
    model: nn.Module,
    tokenizer: Any,
    prompt: PromptLike,
    completion: str,
    *,
    layer: int,
    mode: Mode = "promote",
    suppress: str | None = None,
    max_norm: float | None = None,
    lr: float = 0.01,
    max_iter: int = 100,
    tol: float = 0.0,
    init_norm: float = 0.0,
    one_minus: bool = True,
    chat: bool | Literal["auto"] = "auto",
    system_prompt: str | None = None,
    random_state: RandomState = None,
    delta: CausalMap | None = None,
    access: LayerAccess | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Optimise one steering vector on one (prompt, completion) example.

    Parameters
    ----------
    model : a causal LM (its parameters are not changed and get no ``.grad``)
    tokenizer : its tokenizer
    prompt : str or chat conversation
    completion : str
        Promoted in ``"promote"`` and ``"mixed"`` mode, suppressed in ``"suppress"`` mode.
    layer : int
        0 ≤ s < n_layers: v is added to the residual stream entering this layer.
    mode : {"promote", "suppress", "mixed"}
    suppress : str, optional
        The completion suppressed in ``"mixed"`` mode (required there, refused otherwise).
    max_norm : float, optional
        Project v onto ‖v‖ ≤ max_norm after every step (no cap when None).
    lr : float
        Adam learning rate > 0.
    max_iter : int
        τ: the maximum number of steps ≥ 1.
    tol : float
        ≥ 0; stop once |objective change| < tol (0: run every step).
    init_norm : float
        ≥ 0; 0 starts from v = 0, otherwise from a seeded random direction of this norm.
    one_minus : bool
        Suppression objective Σ log(1 − p) (True) or −Σ log p (False).
    delta : CausalMap, optional
        A causal map with source layer ``layer``: α = ‖Δ_R(v)‖ (without it α = [R]).
        U is None either way: the method learns no target-layer direction.
    callback : callable, optional
        ``callback(step, objective)`` after every step (objective before the step).

    Returns
    -------
    FitResult
        method ``"one-shot"``, m = 1: U None, V (d, 1) = v/‖v‖, R = ‖v‖; ``history`` holds
        the maximised objective before every step (``n_iter`` values), ``scores`` = [the
        objective at the returned v]; ``converged`` = stopped by ``tol``.
    """
    acc = access if access is not None else get_layer_access(model)
    if acc.model is not model:
        raise ValueError("access was built for another model (access.model is not model)")
    n = acc.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer={layer!r} is out of range: this model has {n} layers, so 0 ≤ layer ≤ {n - 1}")
    mode = check_choice("mode", mode, MODES)  # type: ignore[assignment]
    if mode == "mixed" and not suppress:
        raise ValueError("mode='mixed' needs a completion to suppress (suppress=...)")
    if mode != "mixed" and suppress is not None:
        raise ValueError(f"suppress={suppress!r} is only used with mode='mixed' (mode={mode!r})")
    for name, val, lo_ok in (("lr", lr, False), ("tol", tol, True), ("init_norm", init_norm, True)):
        if isinstance(val, bool) or not isinstance(val, int | float) or not math.isfinite(val) or val < 0 or (val == 0 and not lo_ok):
            raise ValueError(f"{name} must be a finite number {'>=' if lo_ok else '>'} 0, got {val!r}")
    if max_norm is not None and (
        isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not math.isfinite(max_norm) or max_norm <= 0
    ):
        raise ValueError(f"max_norm must be a finite number > 0 or None, got {max_norm!r}")
    max_iter = check_positive_int("max_iter", max_iter)
    if delta is not None and getattr(delta, "source_layer", layer) != layer:
        raise ValueError(f"delta has source_layer={getattr(delta, 'source_layer', None)} but layer={layer}")
    if model.training:
        logger.warning("one_shot: the model is in training mode (dropout active); call model.eval() first")

    param = next(model.parameters())
    dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    texts = [completion] if mode != "mixed" else [completion, str(suppress)]
    batch = encode_completions(
        tokenizer, prompt, texts, chat=chat, system_prompt=system_prompt, model_config=getattr(model, "config", None)
    ).to(param.device)

    def objective(logp: Tensor) -> Tensor:  # (B, L) → scalar
        if mode == "promote":
            return logp[0].sum()
        if mode == "suppress":
            return _suppression(logp[0], batch.valid[0], one_minus)
        return logp[0].sum() + _suppression(logp[1], batch.valid[1], one_minus)

    d = acc.d_model
    if init_norm > 0:
        g = torch.randn(d, generator=make_generator(random_state), dtype=torch.float64)
        v0 = (init_norm * g / g.norm()).to(dtype=dtype, device=param.device)
    else:
        v0 = torch.zeros(d, dtype=dtype, device=param.device)
    v = v0.clone().requires_grad_(True)  # (d,)
    opt = torch.optim.Adam([v], lr=float(lr))
    curve: list[float] = []
    converged = False
    with steer(model, v, layer=layer, access=acc):
        for step in range(max_iter):
            with torch.enable_grad():
                obj = objective(completion_log_probs(model, batch))
                (grad,) = torch.autograd.grad(-obj, v)
            v.grad = grad
            opt.step()
            if max_norm is not None:
                with torch.no_grad():
                    norm = v.norm()
                    if norm > max_norm:
                        v.mul_(max_norm / norm)
            curve.append(float(obj.detach()))
            if callback is not None:
                callback(step, curve[-1])
            if tol > 0 and step > 0 and abs(curve[-1] - curve[-2]) < tol:
                converged = True
                break
        with torch.no_grad():
            final = float(objective(completion_log_probs(model, batch)))
    n_iter = len(curve)
    vec = v.detach()
    R = float(vec.norm())
    if not math.isfinite(R) or R == 0.0:
        raise ValueError(f"one-shot optimisation produced a vector of norm {R}; no direction (try a larger lr)")
    V = (vec / R)[:, None]  # (d, 1)
    if delta is not None:
        _, alpha = output_directions(delta, V, R)
        V = V.to(dtype=delta.dtype, device=delta.device)
    else:
        alpha = torch.tensor([R], dtype=V.dtype, device=V.device)
    logger.info(
        "one-shot (%s) at layer %d: objective %.4g → %.4g in %d steps, ‖v‖ = %.4g",
        mode, layer, curve[0], final, n_iter, R,
    )
    return FitResult(
        U=None, V=V, alpha=alpha, R=R, method="one-shot", history=curve, scores=[final], n_iter=n_iter,
        converged=converged,
    )


@dataclass(eq=False)
class OneShotSteering(FitEstimator):
    """Estimator of :func:`one_shot` (the contract of :mod:`melbo.fit.estimator`).

    ``fit(delta)`` needs a :class:`~melbo.maps.transformer.TransformerCausalMap` built from prompt
    texts: the example is its first prompt (``delta.raw_prompts[0]``, formatted with the
    map's ``tokenizer``, ``chat`` and ``system_prompt``) and v is added at its source layer.
    ``completion``, ``mode`` and ``suppress`` are the example's other half. ``R`` caps ‖v‖
    (``max_norm`` of :func:`one_shot`); None calibrates it at ``lam`` on ``n_cal``
    directions, so one-shot is steered at the same R as the other methods.

    Fitted attributes as every estimator: ``U_`` is None (one-shot learns no target
    direction), ``R_`` = ‖v‖, ``alpha_`` = [‖Δ_R(v)‖], ``history_`` the objective before every
    step, ``scores_`` = [the objective at v]. The vector v is ``R_ * V_[:, 0]`` (``vector_`` is its
    deprecated name).
    """

    completion: str = ""
    _: KW_ONLY
    mode: Mode = "promote"
    suppress: str | None = None
    lr: float = 0.01
    max_iter: int = 100
    tol: float = 0.0
    init_norm: float = 0.0
    one_minus: bool = True
    callback: Callable[[int, float], None] | None = None

    needs_model = True

    def _run(self, delta: CausalMap, R: float, generator: torch.Generator) -> FitResult:
        from melbo.maps.transformer import TransformerCausalMap

        assert isinstance(delta, TransformerCausalMap)  # checked by fit
        if not delta.raw_prompts or delta.tokenizer is None:
            raise ValueError(
                "one-shot needs the prompt text and tokenizer behind Δ: build the TransformerCausalMap "
                "from prompt texts with tokenizer=... (not from a PromptBatch)"
            )
        res = one_shot(
            delta.model, delta.tokenizer, delta.raw_prompts[0], self.completion,
            layer=delta.source_layer, mode=self.mode, suppress=self.suppress, max_norm=R, lr=self.lr,
            max_iter=self.max_iter, tol=self.tol, init_norm=self.init_norm, one_minus=self.one_minus,
            chat=delta.chat,  # type: ignore[arg-type]
            system_prompt=delta.system_prompt, random_state=generator, delta=delta, access=delta.access,
            callback=self.callback,
        )
        return res

    @property
    def vector_(self) -> torch.Tensor:
        """Deprecated name of ``R_ * V_[:, 0]`` (a :class:`DeprecationWarning`)."""
        v = self.R_ * self.V_[:, 0]  # AttributeError before the fit
        warn_renamed("OneShotSteering.vector_", "R_ * V_[:, 0]", stacklevel=3)
        return v
