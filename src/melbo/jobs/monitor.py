"""A deployment monitor: does a prompt move the model the way a learned perturbation does?

The fourth goal of the original MELBO work: "before deployment, train a large set of
unsupervised perturbations; during deployment, check whether the model's activations look
similar to those of one of the learned perturbations". A features directory holds such
perturbations — steering directions V at the input of layer s, and (for the DCT methods)
the directions U along which they move the input of layer t. The monitor scores a prompt by
how far its activations lie along them, in units of what clean prompts do.

Activations
-----------
a_s, a_t (d,): the residual stream entering layer s and layer t (the output of the last
layer when t = n_layers), averaged over the prompt's last ``positions`` tokens (default: the
positions the features were fitted at), with the chat framing of the features' prompts.

The feature detector (``detector="features"``)
----------------------------------------------
Fitted on clean prompts: the means μ_s, μ_t and, per feature ℓ, the standard deviations of
the projections, σ^V_ℓ = sd(⟨v_ℓ, a_s − μ_s⟩) and σ^U_ℓ = sd(⟨u_ℓ, a_t − μ_t⟩). A prompt's
z-scores are

    z^V_ℓ = ⟨v_ℓ, a_s − μ_s⟩ / σ^V_ℓ      (it *is* shifted along a learned input direction)
    z^U_ℓ = ⟨u_ℓ, a_t − μ_t⟩ / σ^U_ℓ      (it *arrives* where a learned perturbation sends the
                                          model; this is what DCT features predict: adding
                                          R·v_ℓ at s moves layer t by ≈ α_ℓ·u_ℓ)

``view`` picks "source" (z^V), "target" (z^U, needs U) or "both" (z^V and z^U side by side,
2m values). ``reduce`` turns them into one score: "max" = max_ℓ |z_ℓ| (one learned
perturbation is strongly present, the default) or "rms" = sqrt(mean_ℓ z_ℓ²) (energy in the
learned subspace). |z| rather than z: a perturbation may appear with either sign.

The baseline (``detector="mahalanobis"``)
-----------------------------------------
Needs no features: the Mahalanobis distance of a_t (or the activation at ``layer``) from
the clean mean, sqrt((a − μ)ᵀ Σ⁻¹ (a − μ)), with Σ the Ledoit–Wolf shrinkage of the clean
covariance towards a multiple of the identity (d ≫ n clean prompts makes the sample
covariance singular).

Calibration
-----------
The threshold is set on clean prompts to a false-positive rate ``fpr``: a prompt is flagged
when its score is above the (⌊fpr·n⌋ + 1)-th largest clean score
(:func:`melbo.evaluate.detection.threshold_at_fpr`). Clean scores are computed
*out of fold* (``folds``-fold cross-fitting: the statistics that score a clean prompt were
fitted without it), because in-sample scores are too small — badly so for Mahalanobis in high
dimension — and would give a threshold with a far higher false-positive rate on new prompts.
The statistics used afterwards are refitted on all clean prompts. ``fpr`` needs n ≥ 1/fpr
clean prompts to mean anything (below that the threshold is the largest clean score; logged).

Storage: one ``.safetensors`` file (tensors + JSON metadata), written atomically
(:func:`melbo.store.io.atomic_write`) and never over an existing file unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from melbo.errors import check_prompts
from melbo.evaluate.detection import flag_rate, threshold_at_fpr
from melbo.models.access import LayerAccess, resolve_access
from melbo.models.hooks import residual_stream
from melbo.prompts import PromptLike, build_prompts

if TYPE_CHECKING:
    from melbo.features import Features

__all__ = [
    "DETECTORS",
    "REDUCES",
    "VIEWS",
    "FeatureStats",
    "MahalanobisStats",
    "Monitor",
    "fit_feature_stats",
    "fit_mahalanobis",
    "ledoit_wolf",
    "out_of_fold_scores",
    "prompt_activations",
]

logger = logging.getLogger(__name__)

DETECTORS = ("features", "mahalanobis")
VIEWS = ("source", "target", "both")
REDUCES = ("max", "rms")
FORMAT_VERSION = 1
_EPS = 1e-12


def _choice(name: str, value: object, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(valid)}")
    return str(value)


# ------------------------------------------------------------------------ activations


def prompt_activations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    layers: Sequence[int],
    *,
    positions: int = 1,
    chat: bool | Literal["auto"] = "auto",
    system_prompt: str | None = None,
    batch_size: int = 16,
    access: LayerAccess | None = None,
) -> dict[int, Tensor]:
    """The residual stream entering each of ``layers``, averaged over each prompt's last
    ``positions`` tokens.

    Layer index ``n_layers`` means the output of the last decoder layer (before the final
    norm). One forward pass per batch, stopped at the deepest layer asked for; prompts are
    left-padded with padding-free position ids (:func:`melbo.models.hooks.residual_stream`).

    Returns
    -------
    dict layer → Tensor, shape (n_prompts, d), float64, CPU
    """
    acc = resolve_access(model, access)
    n_layers = acc.n_layers
    wanted = sorted({int(x) for x in layers})
    bad = [x for x in wanted if not 0 <= x <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: this model has {n_layers} layers, so 0 ≤ layer ≤ {n_layers}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an int ≥ 1")
    prompts = check_prompts(prompts)
    device = next(model.parameters()).device
    out: dict[int, list[Tensor]] = {x: [] for x in wanted}
    for start in range(0, len(prompts), batch_size):
        b = build_prompts(
            tokenizer, prompts[start : start + batch_size], chat=chat, system_prompt=system_prompt,
            positions=positions, padding_side="left", model_config=getattr(model, "config", None),
        ).to(device)
        store = residual_stream(model, acc.layers, wanted, input_ids=b.input_ids, attention_mask=b.attention_mask,
                                positions=b.positions)  # x → (B, k, d)
        for x in wanted:
            out[x].append(store[x].double().mean(dim=1).cpu())  # (B, d)
    return {x: torch.cat(v) for x, v in out.items()}


# ------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class FeatureStats:
    """What the feature detector learned from clean prompts (module doc).

    mu_s, mu_t : Tensor, shape (d,) — clean means at layers s and t
    V : Tensor, shape (d, m) — unit input directions
    U : Tensor, shape (d, m) or None — unit target directions
    sd_V, sd_U : Tensor, shape (m,) — clean sd of the projections (sd_U None when U is)
    """

    mu_s: Tensor
    mu_t: Tensor
    V: Tensor
    U: Tensor | None
    sd_V: Tensor
    sd_U: Tensor | None

    def z(self, a_s: Tensor, a_t: Tensor, view: str) -> Tensor:
        """z-scores of activations (n, d), (n, d) → (n, m) or (n, 2m) for ``view="both"``."""
        parts = []
        if view in ("source", "both"):
            parts.append(((a_s - self.mu_s) @ self.V) / self.sd_V)
        if view in ("target", "both"):
            if self.U is None or self.sd_U is None:
                raise ValueError(f"view={view!r} needs target directions U; these features have none (use view='source')")
            parts.append(((a_t - self.mu_t) @ self.U) / self.sd_U)
        return torch.cat(parts, dim=1)


def _unit_columns(X: Tensor) -> Tensor:
    return X / X.norm(dim=0, keepdim=True).clamp_min(_EPS)


def fit_feature_stats(a_s: Tensor, a_t: Tensor, V: Tensor, U: Tensor | None) -> FeatureStats:
    """Clean means and projection sds. a_s, a_t: (n, d) with n ≥ 2; V, U: (d, m)."""
    if a_s.shape[0] < 2:
        raise ValueError(f"need at least 2 clean prompts to estimate spreads, got {a_s.shape[0]}")
    V = _unit_columns(V.double())
    U = None if U is None else _unit_columns(U.double())
    mu_s, mu_t = a_s.mean(0), a_t.mean(0)
    sd_V = ((a_s - mu_s) @ V).std(dim=0).clamp_min(_EPS)
    sd_U = None if U is None else ((a_t - mu_t) @ U).std(dim=0).clamp_min(_EPS)
    return FeatureStats(mu_s, mu_t, V, U, sd_V, sd_U)


def ledoit_wolf(X: Tensor) -> tuple[Tensor, float]:
    """Ledoit–Wolf (2004) shrinkage covariance of rows X (n, d).

    Σ = (1 − δ)·S + δ·m·I with S the (1/n) sample covariance, m = tr(S)/d and
    δ = min(b̄², d²)/d², where d² = ‖S − m I‖_F² and b̄² = (1/n²) Σ_k ‖x_k x_kᵀ − S‖_F²
    over the centred rows x_k.

    Returns
    -------
    (Tensor (d, d), float δ ∈ [0, 1])
    """
    n, d = X.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    Xc = X.double() - X.double().mean(0)
    S = Xc.T @ Xc / n  # (d, d)
    mu = float(torch.trace(S)) / d
    d2 = float(((S - mu * torch.eye(d, dtype=S.dtype)) ** 2).sum())
    # ‖x xᵀ − S‖² = ‖x‖⁴ − 2 xᵀ S x + ‖S‖²
    sq = (Xc ** 2).sum(1)
    b2 = float((sq ** 2 - 2 * ((Xc @ S) * Xc).sum(1) + (S ** 2).sum()).sum()) / n ** 2
    delta = 1.0 if d2 <= 0 else min(b2, d2) / d2
    return (1 - delta) * S + delta * mu * torch.eye(d, dtype=S.dtype), delta


@dataclass(frozen=True)
class MahalanobisStats:
    """mu : (d,) clean mean; precision : (d, d) inverse of the shrunk covariance; shrinkage δ."""

    mu: Tensor
    precision: Tensor
    shrinkage: float

    def distance(self, a: Tensor) -> Tensor:
        """(n, d) → (n,) Mahalanobis distances."""
        x = a - self.mu
        return ((x @ self.precision) * x).sum(1).clamp_min(0).sqrt()


def fit_mahalanobis(a: Tensor) -> MahalanobisStats:
    """Mean and shrunk precision of clean activations a (n, d), n ≥ 2."""
    cov, delta = ledoit_wolf(a)
    cov = 0.5 * (cov + cov.T)
    return MahalanobisStats(a.mean(0), torch.linalg.inv(cov), delta)


def _score(stats: FeatureStats | MahalanobisStats, acts: dict[str, Tensor], view: str, reduce: str) -> Tensor:
    if isinstance(stats, MahalanobisStats):
        return stats.distance(acts["t"])
    z = stats.z(acts["s"], acts["t"], view).abs()
    return z.max(dim=1).values if reduce == "max" else (z ** 2).mean(dim=1).sqrt()


def _fit(detector: str, acts: dict[str, Tensor], V: Tensor | None, U: Tensor | None) -> FeatureStats | MahalanobisStats:
    if detector == "mahalanobis":
        return fit_mahalanobis(acts["t"])
    assert V is not None
    return fit_feature_stats(acts["s"], acts["t"], V, U)


def out_of_fold_scores(
    acts: dict[str, Tensor], *, detector: str, V: Tensor | None = None, U: Tensor | None = None,
    view: str = "both", reduce: str = "max", folds: int = 5,
) -> Tensor:
    """Scores of clean activations, each by statistics fitted without its fold (module doc).

    acts : {"s": (n, d), "t": (n, d)} (only "t" is read by the Mahalanobis detector).
    Folds are contiguous blocks of the given order. Returns (n,) float64.
    """
    n = acts["t"].shape[0]
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"folds={folds!r}: must be an int with 2 ≤ folds ≤ n clean prompts ({n})")
    if n - math.ceil(n / folds) < 2:
        raise ValueError(f"{n} clean prompts are too few for {folds} folds (each fit needs ≥ 2 prompts)")
    out = torch.empty(n, dtype=torch.float64)
    for idx in torch.tensor_split(torch.arange(n), folds):
        keep = torch.ones(n, dtype=torch.bool)
        keep[idx] = False
        stats = _fit(detector, {k: v[keep] for k, v in acts.items()}, V, U)
        out[idx] = _score(stats, {k: v[idx] for k, v in acts.items()}, view, reduce)
    return out


# ------------------------------------------------------------------------ the monitor


@dataclass
class Monitor:
    """A calibrated detector (module doc). Build it with :meth:`fit` or :meth:`load`.

    Attributes
    ----------
    detector, view, reduce : how prompts are scored
    source_layer, target_layer : s and t (the Mahalanobis detector reads only t)
    positions, chat, system_prompt : how prompts are read
    stats : the clean statistics
    fpr, threshold : the calibration: flag when score > threshold
    calibration_scores : Tensor (n,) — the out-of-fold clean scores the threshold came from
    model_fingerprint : of the model it was fitted on
    provenance : JSON-able facts about the features it came from
    """

    detector: str
    view: str
    reduce: str
    source_layer: int
    target_layer: int
    positions: int
    chat: bool | str
    system_prompt: str | None
    stats: FeatureStats | MahalanobisStats
    fpr: float
    threshold: float
    calibration_scores: Tensor
    model_fingerprint: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    # -------------------------------------------------------------- fit

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        tokenizer: Any,
        features: Features | None,
        clean_prompts: Sequence[PromptLike],
        fpr: float = 0.01,
        *,
        detector: str = "features",
        view: str = "both",
        reduce: str = "max",
        layer: int | None = None,
        positions: int | None = None,
        chat: bool | Literal["auto"] = "auto",
        system_prompt: str | None = None,
        folds: int = 5,
        batch_size: int = 16,
        force: bool = False,
    ) -> Monitor:
        """Fit the clean statistics and calibrate the threshold to ``fpr``.

        Parameters
        ----------
        features : the learned perturbations (required by ``detector="features"``; for
            ``"mahalanobis"`` they only give the default layer t and positions)
        clean_prompts : prompts without the behaviour to detect (n ≥ 1/fpr recommended)
        fpr : false-positive rate on clean prompts, 0 ≤ fpr < 1
        layer : Mahalanobis: the layer whose input is read (default ``features.target_layer``)
        positions : last k tokens averaged (default ``features.positions`` when it is an int, else 1)
        force : accept features fitted on another model
        """
        detector = _choice("detector", detector, DETECTORS)
        view = _choice("view", view, VIEWS)
        reduce = _choice("reduce", reduce, REDUCES)
        if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not math.isfinite(fpr) or not 0 <= fpr < 1:
            raise ValueError(f"fpr={fpr!r}: must be a number with 0 ≤ fpr < 1")
        acc = resolve_access(model, None)
        V = U = None
        provenance: dict[str, Any] = {}
        if features is not None:
            if features.model:
                features.check_model(model, force=force)
            s, t = features.source_layer, features.target_layer
            V = features.V.detach().cpu()
            U = None if features.U is None else features.U.detach().cpu()
            if positions is None and isinstance(features.positions, int) and not isinstance(features.positions, bool):
                positions = features.positions
            provenance = {"method": features.method, "n_factors": features.n_factors, "R": features.R,
                          "prompts_hash": features.prompts_hash}
        elif detector == "features":
            raise ValueError("detector='features' needs features (a features directory); detector='mahalanobis' does not")
        else:
            if layer is None:
                raise ValueError("detector='mahalanobis' without features needs layer=...")
            s = t = layer
        if detector == "features" and view != "source" and U is None:
            raise ValueError(f"these {provenance.get('method')!r} features have no target directions U: use view='source'")
        if detector == "mahalanobis":
            s = t = t if layer is None else layer
        positions = 1 if positions is None else positions
        if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
            raise ValueError(f"positions={positions!r}: must be an int ≥ 1")
        prompts = list(clean_prompts)
        if len(prompts) < 2 * folds:
            raise ValueError(f"{len(prompts)} clean prompts: {folds}-fold calibration needs at least {2 * folds}")
        if fpr > 0 and len(prompts) * fpr < 1:
            logger.warning("fpr=%g with %d clean prompts: the threshold is the largest clean score "
                           "(give ≥ %d clean prompts for this rate to mean anything)", fpr, len(prompts), math.ceil(1 / fpr))
        raw = prompt_activations(model, tokenizer, prompts, [s, t], positions=positions, chat=chat,
                                 system_prompt=system_prompt, batch_size=batch_size, access=acc)
        acts = {"s": raw[s], "t": raw[t]}
        oof = out_of_fold_scores(acts, detector=detector, V=V, U=U, view=view, reduce=reduce, folds=folds)
        threshold = threshold_at_fpr(oof, fpr)
        stats = _fit(detector, acts, V, U)
        from melbo.models.fingerprint import model_fingerprint

        mon = cls(detector=detector, view=view, reduce=reduce, source_layer=s, target_layer=t, positions=positions,
                  chat=chat, system_prompt=system_prompt, stats=stats, fpr=float(fpr), threshold=threshold,
                  calibration_scores=oof, model_fingerprint=model_fingerprint(model),
                  provenance={**provenance, "n_clean": len(prompts), "folds": folds},
                  model=model, tokenizer=tokenizer)
        logger.info("monitor (%s%s) calibrated on %d clean prompts: threshold %.4g at fpr %g (%.1f%% of them above)",
                    detector, "" if detector == "mahalanobis" else f", {view}, {reduce}", len(prompts), threshold,
                    fpr, 100 * flag_rate(oof, threshold))
        return mon

    # -------------------------------------------------------------- score

    def _bound(self) -> tuple[nn.Module, Any]:
        if self.model is None or self.tokenizer is None:
            raise ValueError("this monitor has no model: load it with Monitor.load(path, model, tokenizer)")
        return self.model, self.tokenizer

    def activations(self, prompts: Sequence[PromptLike], *, batch_size: int = 16) -> dict[str, Tensor]:
        """{"s": (n, d), "t": (n, d)} activations of ``prompts`` as the monitor reads them."""
        model, tok = self._bound()
        raw = prompt_activations(model, tok, prompts, [self.source_layer, self.target_layer], positions=self.positions,
                                 chat=self.chat, system_prompt=self.system_prompt, batch_size=batch_size)  # type: ignore[arg-type]
        return {"s": raw[self.source_layer], "t": raw[self.target_layer]}

    def score_activations(self, acts: dict[str, Tensor]) -> Tensor:
        """Scores (n,) of activations from :meth:`activations`."""
        return _score(self.stats, {k: v.double() for k, v in acts.items()}, self.view, self.reduce)

    def score(self, prompts: Sequence[PromptLike], *, batch_size: int = 16) -> Tensor:
        """Anomaly score per prompt, shape (n,), float64 (higher = more like a learned perturbation)."""
        return self.score_activations(self.activations(prompts, batch_size=batch_size))

    def flag(self, prompts: Sequence[PromptLike], *, batch_size: int = 16) -> Tensor:
        """Bool (n,): score > threshold."""
        return self.score(prompts, batch_size=batch_size) > self.threshold

    def with_fpr(self, fpr: float) -> Monitor:
        """The same monitor with its threshold recalibrated (from the stored clean scores) to ``fpr``."""
        return replace(self, fpr=float(fpr), threshold=threshold_at_fpr(self.calibration_scores, fpr))

    # -------------------------------------------------------------- I/O

    def _tensors(self) -> dict[str, Tensor]:
        st = self.stats
        if isinstance(st, MahalanobisStats):
            t = {"mu": st.mu, "precision": st.precision}
        else:
            t = {"mu_s": st.mu_s, "mu_t": st.mu_t, "V": st.V, "sd_V": st.sd_V}
            if st.U is not None and st.sd_U is not None:
                t |= {"U": st.U, "sd_U": st.sd_U}
        t["calibration_scores"] = self.calibration_scores
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}

    def _meta(self) -> dict[str, Any]:
        from melbo.features import melbo_version

        meta = {
            "format_version": FORMAT_VERSION, "melbo_version": melbo_version(), "detector": self.detector,
            "view": self.view, "reduce": self.reduce, "source_layer": self.source_layer,
            "target_layer": self.target_layer, "positions": self.positions, "chat": self.chat,
            "system_prompt": self.system_prompt, "fpr": self.fpr, "threshold": self.threshold,
            "model": self.model_fingerprint, "provenance": self.provenance,
        }
        if isinstance(self.stats, MahalanobisStats):
            meta["shrinkage"] = self.stats.shrinkage
        return meta

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the monitor to one ``.safetensors`` file, atomically; an existing file is
        refused unless ``overwrite``."""
        from safetensors.torch import save_file

        from melbo.store.io import atomic_write

        p = Path(path)
        if p.suffix != ".safetensors":
            raise ValueError(f"{str(p)!r}: a monitor is saved as a .safetensors file")
        if p.exists() and not overwrite:
            raise FileExistsError(f"{str(p)!r} already exists; pass overwrite=True (--force) or choose another path")
        p.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self._tensors(), {"melbo_monitor": json.dumps(self._meta(), allow_nan=False)}
        atomic_write(p, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None, tokenizer: Any = None,
             *, force: bool = False) -> Monitor:
        """Read a monitor written by :meth:`save` and bind it to ``model`` and ``tokenizer``
        (checked against the fingerprint it was fitted on unless ``force``)."""
        from safetensors import safe_open

        from melbo.models.fingerprint import check_same_model

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"monitor file {str(p)!r} does not exist")
        with safe_open(str(p), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("melbo_monitor")
            if raw is None:
                raise ValueError(f"{str(p)!r} is not a melbo monitor (no 'melbo_monitor' metadata)")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
        meta = json.loads(raw)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{str(p)!r} has monitor format {meta.get('format_version')!r}; this melbo reads {FORMAT_VERSION}")
        stats: FeatureStats | MahalanobisStats
        if meta["detector"] == "mahalanobis":
            stats = MahalanobisStats(tensors["mu"], tensors["precision"], float(meta["shrinkage"]))
        else:
            stats = FeatureStats(tensors["mu_s"], tensors["mu_t"], tensors["V"], tensors.get("U"),
                                 tensors["sd_V"], tensors.get("sd_U"))
        if model is not None and meta["model"]:
            check_same_model(meta["model"], model, what="monitor", force=force)
        return cls(detector=meta["detector"], view=meta["view"], reduce=meta["reduce"],
                   source_layer=int(meta["source_layer"]), target_layer=int(meta["target_layer"]),
                   positions=int(meta["positions"]), chat=meta["chat"], system_prompt=meta["system_prompt"],
                   stats=stats, fpr=float(meta["fpr"]), threshold=float(meta["threshold"]),
                   calibration_scores=tensors["calibration_scores"], model_fingerprint=meta["model"],
                   provenance=meta["provenance"], model=model, tokenizer=tokenizer)
