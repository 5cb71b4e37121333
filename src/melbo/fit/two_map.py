"""Two-map DCTs: features whose causal effect exists in one map and not in another.

Two causal maps at the same layers, steered at the same norm R (calibrated on Δ_A):

* **contrastive** — one model, two prompt sets: Δ_A on the prompts where an effect is wanted,
  Δ_B on the prompts where it is not ("truth serum" rather than "forced confession"
  directions);
* **model-diff** — one prompt set, two models with the same architecture and tokenizer:
  Δ_A = Δ_fine (the fine-tune, which is steered) and Δ_B = Δ_base ("what did the fine-tune
  add?").

The objective (``docs/two_map.md`` derives it) is Σ_ℓ f_ℓ over unit factors with
V orthogonalised as in OGI, and one of two penalties:

``penalty="norm"`` (the default of contrastive)::

    f_ℓ = ½ ( ⟨u_ℓ, Δ_A(R v_ℓ)⟩² − μ² ‖Δ_B(R v_ℓ)‖² )

  With u optimal (u = ±normalise(Δ_A(R v))), f_ℓ = ½(‖Δ_A(R v_ℓ)‖² − μ²‖Δ_B(R v_ℓ)‖²), positive
  exactly when ‖Δ_A(R v_ℓ)‖ > μ‖Δ_B(R v_ℓ)‖: μ is dimensionless (both are norms at layer t)
  and μ = 1 asks for more effect on A than on B. The B-effect is penalised whatever its
  direction: the same mechanism can move A-prompts and B-prompts differently, so only its
  size on B is comparable. (The unsquared ⟨u, Δ_A⟩ − μ‖Δ_B‖ has a kink where Δ_B(R v) = 0 —
  exactly where an A-only feature lives — and its normalised gradient there points anywhere;
  on planted pairs it lost A-only factors that the squared form keeps.) One iteration, from
  (U, V):

  1. V ← orthonormalise(V)
  2. G_A, H_A ← Δ_A(R V), J_A(R V)ᵀ U              (one ``value_and_vjp`` on map A)
  3. G_B ← Δ_B(R V);  H_B ← J_B(R V)ᵀ G_B          (``value`` then ``vjp`` on map B)
  4. c_ℓ ← ⟨u_ℓ, G_A[:, ℓ]⟩;  U ← normalise(G_A);  V ← normalise(R (H_A c − μ² H_B))
     (β-damped, and the damping annealed, as in OGI: the step of :mod:`melbo.fit.step`)

  Step 4's V is the gradient of f at the current (u, v): u lags one iteration, as in the
  published OGI (with μ = 0 this *is* the OGI step on Δ_A). Where Δ_B(R v_ℓ) = 0 the
  penalty's gradient vanishes, so a planted A-only factor is a fixed point, as in OGI.

``penalty="difference"`` (the default of model-diff)::

    f_ℓ = ⟨u_ℓ, Δ_A(R v_ℓ) − μ Δ_B(R v_ℓ)⟩

  i.e. the plain exponential DCT (OGI, :func:`melbo.fit.exponential.exponential_dct`) of the
  difference map D = Δ_A − μΔ_B (:class:`DifferenceMap`), itself a causal map (D(0) = 0, every
  primitive is linear in the map). If both maps are exponential transcoders sharing a set
  of factors exactly, D is an exponential transcoder with only the factors of A that B lacks
  (and minus those B has alone, which the signed fit ignores): OGI on D recovers exactly
  the A-only factors. It compares outputs direction by direction, so it needs Δ_A and Δ_B
  in the same coordinates at the same prompts — true for a fine-tune and its base.

Both evaluate the two maps **one at a time**: a primitive call runs on map A, returns
(d, m) matrices, then runs on map B. Between iterations only U, V and the (d, m) results are
kept — nothing of one map is needed while the other runs (see ``docs/two_map.md`` for models
too large to hold together).

The result's ``scores`` are, for both penalties, the per-factor contrast at the final factors
s_ℓ = ‖Δ_A(R v_ℓ)‖ − μ‖Δ_B(R v_ℓ)‖: positive where the effect is A's, negative where it is
B's, ~0 where it is shared. Rank features by them (the difference fit also finds what B has
and A lacks — a fine-tune's *removed* features, D's factors with u = −u_B — which this
score puts last). α solves the exponential normal equations on Δ_A (norm: the
transcoder of the A-effect) or on D (difference).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from melbo.errors import check_anneal, check_anneal_after
from melbo.fit._common import (
    ORTHO,
    RandomState,
    check_delta,
    check_positive_int,
    check_R,
    check_tol,
    check_unit_interval,
    column_movement,
    make_generator,
    normalize_columns,
    orthonormalize,
)
from melbo.fit.alphas import exponential_alphas
from melbo.fit.estimator import FitEstimator
from melbo.fit.exceptions import ConvergenceWarning
from melbo.fit.exponential import Callback, exponential_dct
from melbo.fit.init import Init, initial_factors
from melbo.fit.loop import iterate
from melbo.fit.result import FitResult
from melbo.fit.step import DEFAULT_STEP, damping, resolve_anneal_after
from melbo.maps.protocol import CausalMap

if TYPE_CHECKING:
    from torch import nn

    from melbo.prompts import PromptBatch, PromptLike

__all__ = [
    "PENALTIES",
    "ContrastiveDCT",
    "DifferenceMap",
    "ModelDiffDCT",
    "contrast_scores",
    "contrastive_step",
    "two_map_dct",
]

logger = logging.getLogger(__name__)

PENALTIES = ("norm", "difference")


def _check_mu(mu: object) -> float:
    from melbo.errors import check_mu

    return check_mu("mu", mu)  # type: ignore[arg-type]


def _check_pair(delta_a: object, delta_b: object) -> tuple[CausalMap, CausalMap]:
    a, b = check_delta(delta_a), check_delta(delta_b)
    if a.d_model != b.d_model:
        raise ValueError(f"the two maps must share d_model, got {a.d_model} (A) and {b.d_model} (B)")
    for name in ("source_layer", "target_layer"):
        la, lb = getattr(a, name, None), getattr(b, name, None)
        if la is not None and lb is not None and la != lb:
            raise ValueError(f"the two maps must be at the same layers, got {name} {la} (A) and {lb} (B)")
    return a, b


def _check_maps_differ(a: CausalMap, b: CausalMap, R: float, n_probe: int = 2) -> None:
    """Refuse two maps that are equal (on ``n_probe`` fixed random directions at norm R): the
    contrast between them is zero, and so would be every feature (contrastive with the same
    prompts on both sides, model-diff with the model as its own base). Its own generator: the
    fit's random state is not consumed."""
    from melbo.errors import UserError

    g = torch.Generator().manual_seed(0)
    V = normalize_columns(torch.randn(a.d_model, n_probe, generator=g, dtype=torch.float64)).to(a.dtype).to(a.device)
    ga = a.value(R * V)
    gb = b.value(R * V).to(ga)
    if float((ga - gb).double().norm()) <= 1e-6 * float(ga.double().norm()):
        raise UserError(
            "the two maps are equal (Δ_A(R v) = Δ_B(R v) on random directions v), so their contrast and every "
            "feature would be zero: the contrast prompts are the prompts themselves, or the base model is the "
            "model itself; give a different --contrast-prompts / --base-model")


class DifferenceMap:
    """D = Δ_A − μ Δ_B, a :class:`~melbo.maps.protocol.CausalMap` (every primitive is linear in Δ).

    Each primitive runs on A, then on B (never both at once), and returns in A's dtype and
    device. ``source_layer``/``target_layer`` are A's (if it has them).
    """

    def __init__(self, a: CausalMap, b: CausalMap, mu: float = 1.0) -> None:
        self.a, self.b = _check_pair(a, b)
        self.mu = _check_mu(mu)
        self.source_layer = getattr(a, "source_layer", None)
        self.target_layer = getattr(a, "target_layer", None)

    @property
    def d_model(self) -> int:
        return self.a.d_model

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    @property
    def device(self) -> torch.device:
        return self.a.device

    def _b(self, X: Tensor) -> Tensor:
        return X.to(dtype=self.a.dtype, device=self.a.device)

    def value(self, theta: Tensor) -> Tensor:
        ga = self.a.value(theta)
        return ga - self.mu * self._b(self.b.value(theta))

    def vjp(self, theta: Tensor, U: Tensor) -> Tensor:
        ha = self.a.vjp(theta, U)
        return ha - self.mu * self._b(self.b.vjp(theta, U))

    def value_and_vjp(self, theta: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        ga, ha = self.a.value_and_vjp(theta, U)
        gb, hb = self.b.value_and_vjp(theta, U)
        return ga - self.mu * self._b(gb), ha - self.mu * self._b(hb)

    def jvp0(self, V: Tensor) -> Tensor:
        return self.a.jvp0(V) - self.mu * self._b(self.b.jvp0(V))

    def hvv0(self, V: Tensor) -> Tensor:
        return self.a.hvv0(V) - self.mu * self._b(self.b.hvv0(V))

    def uhv0(self, U: Tensor, V: Tensor) -> Tensor:
        return self.a.uhv0(U, V) - self.mu * self._b(self.b.uhv0(U, V))


@dataclass(frozen=True)
class ContrastiveStep:
    """Result of one :func:`contrastive_step`.

    U, V : Tensor, shape (d, m) — updated unit factors.
    objective : float — ½ Σ_ℓ (⟨u_ℓ, Δ_A(R v_ℓ)⟩² − μ² ‖Δ_B(R v_ℓ)‖²) at the input factors.
    """

    U: Tensor
    V: Tensor
    objective: float


def contrastive_step(
    delta_a: CausalMap, delta_b: CausalMap, U: Tensor, V: Tensor, R: float, mu: float = 1.0, beta: float = 1.0
) -> ContrastiveStep:
    """Steps 2–4 of the norm-penalty iteration (module docstring) from (U, V) as given.

    U, V : Tensor, shape (d, m) — current unit factors (orthogonalise V before if wanted).
    """
    G_A, H_A = delta_a.value_and_vjp(R * V, U)  # (d, m), (d, m): map A only
    G_B = delta_b.value(R * V).to(G_A)  # (d, m): map B from here on
    H_B = delta_b.vjp(R * V, G_B).to(H_A) if mu else torch.zeros_like(H_A)
    c = (U * G_A).sum(dim=0)  # (m,)
    objective = float(0.5 * (c.square().sum() - mu**2 * G_B.square().sum()))
    U_new = normalize_columns(G_A)
    V_new = normalize_columns(R * (H_A * c - mu**2 * H_B))
    if beta != 1.0:
        U_new = normalize_columns(beta * U_new + (1.0 - beta) * U)
        V_new = normalize_columns(beta * V_new + (1.0 - beta) * V)
    return ContrastiveStep(U_new, V_new, objective)


def contrast_scores(delta_a: CausalMap, delta_b: CausalMap, V: Tensor, R: float, mu: float = 1.0) -> Tensor:
    """Per-factor contrast s_ℓ = ‖Δ_A(R v_ℓ)‖ − μ‖Δ_B(R v_ℓ)‖ at unit inputs V (d, m), shape (m,).
    One ``value`` per map."""
    G_A = delta_a.value(R * V)
    G_B = delta_b.value(R * V).to(G_A)
    return G_A.norm(dim=0) - mu * G_B.norm(dim=0)


def two_map_dct(
    delta_a: CausalMap,
    delta_b: CausalMap,
    n_factors: int = 512,
    *,
    R: float,
    mu: float = 1.0,
    penalty: str = "norm",
    method: str = "contrastive",
    max_iter: int = DEFAULT_STEP.max_iter,
    beta: float = DEFAULT_STEP.beta,
    tol: float = 1e-4,
    init: Init = "projected",
    random_state: RandomState = None,
    d_proj: int = 32,
    callback: Callback | None = None,
    rcond: float = 1e-6,
    ortho: str = DEFAULT_STEP.ortho,
    anneal: float | None = DEFAULT_STEP.anneal,
    anneal_after: int | None = None,
) -> FitResult:
    """Fit features with an effect on Δ_A and none on Δ_B (module docstring).

    Parameters
    ----------
    delta_a, delta_b : CausalMap
        The rewarded and the penalised map, same d_model (and layers, where they say).
    n_factors : int
        m ≥ 1, m ≤ d (V is orthogonalised every iteration).
    R : float
        Steering norm (calibrate it on Δ_A: A's features are the ones steered).
    mu : float
        Penalty weight μ ≥ 0 (0: the exponential DCT of Δ_A).
    penalty : {"norm", "difference"}
        See the module docstring.
    method : str
        The registry name recorded in the result.
    max_iter, beta, tol, init, random_state, d_proj, callback, rcond, ortho, anneal, anneal_after
        As in :func:`melbo.fit.exponential.exponential_dct` (defaults: the annealed step of
        :mod:`melbo.fit.step`). The initial factors come from
        the difference map D = Δ_A − μΔ_B (its projected Jacobian for ``"projected"``), so
        they start where the linear responses differ.

    Returns
    -------
    FitResult
        ``method``; U, V (d, m); α (m,) ≥ 0; ``history`` the objective per iteration;
        ``scores`` the per-factor contrast ‖Δ_A(R v_ℓ)‖ − μ‖Δ_B(R v_ℓ)‖.
    """
    a, b = _check_pair(delta_a, delta_b)
    m = check_positive_int("n_factors", n_factors)
    R = check_R(R)
    mu = _check_mu(mu)
    if penalty not in PENALTIES:
        raise ValueError(f"penalty={penalty!r}: choose one of {', '.join(PENALTIES)}")
    max_iter = check_positive_int("max_iter", max_iter)
    beta = check_unit_interval("beta", beta)
    tol = check_tol(tol)
    if ortho not in ORTHO:
        raise ValueError(f"ortho={ortho!r}: choose one of {', '.join(ORTHO)}")
    anneal = check_anneal(anneal)
    anneal_after = check_anneal_after(resolve_anneal_after(anneal, anneal_after), anneal)
    if m > a.d_model:
        raise ValueError(f"n_factors must be <= d_model = {a.d_model} to orthogonalise, got {m}")
    _check_maps_differ(a, b, R)
    diff = DifferenceMap(a, b, mu)
    if penalty == "difference":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            res = exponential_dct(diff, m, R=R, max_iter=max_iter, beta=beta, tol=tol, init=init,
                                  random_state=random_state, d_proj=d_proj, callback=callback, rcond=rcond, ortho=ortho,
                                  anneal=anneal, anneal_after=anneal_after)
        for w in caught:  # re-issued here so that it points at the caller of this function
            warnings.warn(str(w.message), w.category, stacklevel=2)
        scores = contrast_scores(a, b, res.V, R, mu)
        return dataclasses.replace(res, method=method, scores=scores.tolist())

    generator = make_generator(random_state)
    U, V = initial_factors(diff, m, init, R=R, generator=generator, d_proj=d_proj)
    if not isinstance(init, tuple):
        U = normalize_columns(a.value(R * V))  # u starts on A's effect, as OGI's does
    def one(it: int, U: Tensor, V: Tensor) -> tuple[Tensor, Tensor, float, float]:
        step = contrastive_step(a, b, U, orthonormalize(V, ortho), R, mu, damping(beta, it, anneal, anneal_after))
        return step.U, step.V, step.objective, max(column_movement(step.U, U), column_movement(step.V, V))

    loop = iterate(one, U, V, max_iter=max_iter, tol=tol, callback=callback, name="contrastive DCT")
    alpha = exponential_alphas(a, loop.U, loop.V, R, rcond=rcond)
    scores = contrast_scores(a, b, loop.V, R, mu)
    logger.info("%s DCT: %d iterations, objective %.6g, converged=%s", method, loop.n_iter, loop.objective[-1],
                loop.converged)
    return loop.result(alpha=alpha, R=R, method=method, scores=scores.tolist())


# ---------------------------------------------------------------- estimators
@dataclass(eq=False)
class _TwoMapDCT(FitEstimator):
    n_factors: int = 512
    _: KW_ONLY
    mu: float = 1.0
    penalty: str | None = None
    max_iter: int = DEFAULT_STEP.max_iter
    beta: float = DEFAULT_STEP.beta
    tol: float = 1e-4
    init: Init = "projected"
    d_proj: int = 32
    callback: Callback | None = None
    rcond: float = 1e-6
    ortho: str = DEFAULT_STEP.ortho
    anneal: float | None = DEFAULT_STEP.anneal
    anneal_after: int | None = None

    _method: ClassVar[str] = ""
    _default_penalty: ClassVar[str] = "norm"

    def _other_map(self, delta: CausalMap) -> CausalMap:  # pragma: no cover - overridden
        raise NotImplementedError

    def _run(self, delta: CausalMap, R: float, generator: torch.Generator) -> FitResult:
        other = self._other_map(delta)
        self.contrast_map_ = other
        return two_map_dct(
            delta, other, self.n_factors, R=R, mu=self.mu, penalty=self.penalty or self._default_penalty, method=self._method,
            max_iter=self.max_iter, beta=self.beta, tol=self.tol, init=self.init, random_state=generator,
            d_proj=self.d_proj, callback=self.callback, rcond=self.rcond, ortho=self.ortho, anneal=self.anneal,
            anneal_after=self.anneal_after,
        )


def _last_k(delta: Any) -> int:
    return int(delta.positions.shape[1])


def _need_transformer(delta: CausalMap, what: str) -> Any:
    from melbo.maps.transformer import TransformerCausalMap

    if not isinstance(delta, TransformerCausalMap):
        raise TypeError(f"{what} needs the model and prompts behind Δ, so delta must be a "
                        f"melbo.maps.transformer.TransformerCausalMap, got {type(delta).__name__}")
    return delta


@dataclass(eq=False)
class ContrastiveDCT(_TwoMapDCT):
    """Contrastive DCT: features that act on the fitted map's prompts (A) and not on
    ``contrast_prompts`` (B) — :func:`two_map_dct` with ``penalty="norm"`` by default.

    ``contrast_prompts`` is the set B: prompts (built into a
    :class:`~melbo.maps.transformer.TransformerCausalMap` of the same model, layers, last-k
    positions, chat frame and system prompt as Δ_A, which must then be one) or a ready
    :class:`~melbo.maps.protocol.CausalMap` Δ_B. R (calibrated on Δ_A unless given) is shared.
    Fitted attributes as every estimator (``scores_`` the per-factor contrast) and
    ``contrast_map_`` = Δ_B.
    """

    contrast_prompts: Sequence[PromptLike] | PromptBatch | CausalMap = ()
    _method = "contrastive"

    def _other_map(self, delta: CausalMap) -> CausalMap:
        if isinstance(self.contrast_prompts, CausalMap):
            return self.contrast_prompts
        from melbo.prompts import PromptBatch

        cp = self.contrast_prompts
        if isinstance(cp, str | bytes) or (not isinstance(cp, PromptBatch) and not len(cp)):
            raise ValueError("method 'contrastive' needs a contrast prompt set B (contrast_prompts=[...], "
                             "--contrast-prompts FILE): a list of prompts or a CausalMap")
        from melbo.maps.transformer import TransformerCausalMap

        d = _need_transformer(delta, "ContrastiveDCT with contrast prompts")
        return TransformerCausalMap(
            d.model, self.contrast_prompts, d.source_layer, d.target_layer, tokenizer=d.tokenizer,
            positions=_last_k(d), chat=d.chat, system_prompt=d.system_prompt, access=d.access,
            memory_budget=d.memory_budget, chunk_size=d.chunk_size, compute_dtype=d.compute_dtype,
        )


@dataclass(eq=False)
class ModelDiffDCT(_TwoMapDCT):
    """Model-diff DCT: features of the fitted model (the fine-tune, Δ_A) that ``base_model``
    (Δ_B) lacks — :func:`two_map_dct` with ``penalty="difference"`` by default.

    ``base_model`` is a causal LM with the fine-tune's architecture and tokenizer (Δ_B is
    then built on the very tokens, layers and positions of Δ_A) or a ready
    :class:`~melbo.maps.protocol.CausalMap`. R (calibrated on the fine-tune's Δ unless given) is
    shared. Fitted attributes as every estimator and ``contrast_map_`` = Δ_base.
    """

    base_model: nn.Module | CausalMap | None = None
    _method = "model-diff"
    _default_penalty = "difference"

    def _other_map(self, delta: CausalMap) -> CausalMap:
        if self.base_model is None:
            raise ValueError("method 'model-diff' needs the base model (base_model=..., --base-model M)")
        if isinstance(self.base_model, CausalMap):
            return self.base_model
        from melbo.maps.transformer import TransformerCausalMap
        from melbo.models.access import get_layer_access

        d = _need_transformer(delta, "ModelDiffDCT with a base model")
        base: Any = self.base_model
        access = get_layer_access(base)
        if access.d_model != d.d_model or access.n_layers != d.access.n_layers:
            raise ValueError(
                f"the base model must have the fine-tune's architecture: d_model {access.d_model} vs "
                f"{d.d_model}, {access.n_layers} vs {d.access.n_layers} layers")
        n_vocab = {m.get_input_embeddings().weight.shape[0] for m in (d.model, base)}
        if len(n_vocab) != 1:
            raise ValueError(f"the base model and the fine-tune must share the tokenizer; their vocabularies "
                             f"have {sorted(n_vocab)} rows")
        return TransformerCausalMap(
            base, d.prompts, d.source_layer, d.target_layer, access=access,
            memory_budget=d.memory_budget, chunk_size=d.chunk_size, compute_dtype=d.compute_dtype,
        )
