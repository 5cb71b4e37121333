"""Fitted features with their provenance: the :class:`Features` value.

A :class:`Features` holds m features of a transcoder fitted between the residual stream
entering layer ``source_layer`` and the one entering ``target_layer`` (``method.md`` §2):
``V[:, ℓ]`` is the input (source-layer) direction, ``U[:, ℓ]`` the output (target-layer)
direction, ``alpha[ℓ]`` its scale. Feature ℓ is applied as ``R * V[:, ℓ]`` added to the
residual stream entering layer ``source_layer`` (:func:`melbo.steering.interventions.steer_features`),
exactly where Δ was trained; :meth:`Features.hook_site` names that place in other tools' terms
(:mod:`melbo.features.names`).

Methods that learn no target directions (one-shot, mean-diff: ``has_targets`` False in
:mod:`melbo.methods`) have ``U = None``; what α, ``history`` and ``scores`` mean per method is
the table of :mod:`melbo.fit.result`.

:meth:`Features.save` / :meth:`Features.load` write and read the two files of
:mod:`melbo.features.format`; :meth:`Features.save_pretrained` /
:meth:`Features.from_pretrained` are the Hugging Face-style names for the same format, with a
model card and Hub repository ids (:mod:`melbo.features.hub`). Results derived from features
record :meth:`Features.fingerprint` and are refused with other features (e.g. an
``analysis.json`` left behind by ``melbo train --force``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from melbo.errors import ModelMismatchError, check_R
from melbo.features.format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    TENSORS_FILE,
    read_features,
    write_features,
)
from melbo.features.format import melbo_version as running_melbo_version
from melbo.features.hub import MODEL_CARD_FILE, model_card, pretrained_dir
from melbo.features.names import check_int, hook_site
from melbo.models.fingerprint import (
    check_same_model,
    model_fingerprint,
)
from melbo.store.io import atomic_write_text

__all__ = ["Features", "ModelMismatchError", "prompts_hash"]  # ModelMismatchError: melbo.errors's, re-exported

logger = logging.getLogger(__name__)


def prompts_hash(prompts: Sequence[Any]) -> str:
    """SHA-256 of a canonical JSON of ``prompts`` (strings, chat message lists, …).

    Dict keys are sorted, so ``{"role": .., "content": ..}`` and ``{"content": .., "role": ..}``
    hash alike; the order of the prompts matters.

    Raises
    ------
    TypeError
        if ``prompts`` is not JSON-serialisable.
    """
    try:
        canonical = json.dumps(
            list(prompts), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as err:
        raise TypeError(f"prompts must be JSON-serialisable (strings, lists, dicts): {err}") from err
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_json(name: str, value: object) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serialisable, got {value!r}: {err}") from err



@dataclass(frozen=True, eq=False, init=False)
class Features:
    """m fitted features between layers ``source_layer`` → ``target_layer``, with provenance.

    Attributes
    ----------
    U : Tensor of shape (d_model, n_factors), or None
        Output (target-layer) directions, one per column; None for a method that learns no
        target directions (:meth:`require_targets` raises a clear error then).
    V : Tensor, shape (d_model, n_factors)
        Input (source-layer) directions, one per column (unit norm for every fitting
        method); feature ℓ steers with ``R * V[:, ℓ]``.
    alpha : Tensor, shape (n_factors,)
        Scales α_ℓ of the transcoder.
    R : float
        Steering norm the features were trained at (> 0).
    method : str
        Fitting method, e.g. ``"exponential"``.
    source_layer, target_layer : int
        0 ≤ source_layer < target_layer: the residual streams entering these layers.
    positions : JSON-able
        Target positions the fit used, e.g. ``3`` (the last 3 tokens) or a list.
    history : list of float
        Training curve, one value per iteration (empty for non-iterative methods).
    scores : list of float
        One value per feature where the method has one (melbo-v1's objective, one-shot's
        final objective), else empty.
    prompts_hash : str
        :func:`prompts_hash` of the training prompts ("" when unknown).
    model : dict
        :func:`melbo.models.fingerprint.model_fingerprint` of the model ({} when unknown).
    extra : dict
        Any further JSON-able metadata (n_iter, converged, seed, …).
    melbo_version : str
        Version of melbo that made them.

    ``history``, ``scores``, ``model`` and ``extra`` default to empty and ``melbo_version`` to
    the running melbo's (None: the same). ``objective=`` is format 1's name for ``history=``
    and is still accepted.
    """

    U: Tensor | None
    V: Tensor
    alpha: Tensor
    R: float
    method: str
    source_layer: int
    target_layer: int
    positions: Any
    history: list[float]
    scores: list[float]
    prompts_hash: str
    model: dict[str, Any]
    extra: dict[str, Any]
    melbo_version: str

    def __init__(self, U: Tensor | None, V: Tensor, alpha: Tensor, R: float, method: str, source_layer: int,
                 target_layer: int, positions: Any = None, history: Sequence[float] | None = None,
                 scores: Sequence[float] | None = None, prompts_hash: str = "", model: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, melbo_version: str | None = None, *,
                 objective: Sequence[float] | None = None) -> None:
        if objective is not None:
            if history is not None:
                raise TypeError("give history= or its old name objective=, not both")
            history = objective
        values = {
            "U": U, "V": V, "alpha": alpha, "R": R, "method": method, "source_layer": source_layer,
            "target_layer": target_layer, "positions": positions,
            "history": [] if history is None else history, "scores": [] if scores is None else scores,
            "prompts_hash": prompts_hash, "model": {} if model is None else model,
            "extra": {} if extra is None else extra,
            "melbo_version": running_melbo_version() if melbo_version is None else melbo_version,
        }  # fmt: skip
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: each field is set once, here
        self._validate()

    def _validate(self) -> None:
        """Check every field; a TypeError or ValueError names the field and what is valid."""
        for name in self._tensor_names():
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if self.V.ndim != 2 or (self.U is not None and (self.U.ndim != 2 or self.U.shape != self.V.shape)):
            u = "None" if self.U is None else tuple(self.U.shape)
            raise ValueError(
                "U and V must both have shape (d_model, n_factors) (or U None), got "
                f"U {u} and V {tuple(self.V.shape)}"
            )
        d, m = self.V.shape
        if d < 1 or m < 1:
            raise ValueError(f"need d_model ≥ 1 and n_factors ≥ 1, got V {tuple(self.V.shape)}")
        if tuple(self.alpha.shape) != (m,):
            raise ValueError(
                f"alpha must have shape (n_factors,) = ({m},), got {tuple(self.alpha.shape)}"
            )
        for name in self._tensor_names():
            t = getattr(self, name)
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                idx = bad.nonzero()[0].tolist()
                raise ValueError(
                    f"{name} has {int(bad.sum())} non-finite values, e.g. {name}{idx} = "
                    f"{t[tuple(idx)].item()}"
                )
        object.__setattr__(self, "R", check_R(self.R))
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty str, got {self.method!r}")
        s = check_int("source_layer", self.source_layer)
        t_ = check_int("target_layer", self.target_layer)
        if not 0 <= s < t_:
            raise ValueError(
                f"need 0 ≤ source_layer < target_layer, got source_layer={s}, target_layer={t_}"
            )
        for name in ("history", "scores"):
            given = getattr(self, name)
            try:  # not a string or a mapping: "123" would be read as [1.0, 2.0, 3.0], a dict as its keys
                if isinstance(given, str | bytes | Mapping) or any(isinstance(x, str | bytes | bool) for x in given):
                    raise TypeError(name)
                values = [float(x) for x in given]
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name} must be a list of floats, got {given!r}") from err
            object.__setattr__(self, name, values)
        if self.scores and len(self.scores) != m:
            raise ValueError(f"scores must hold one value per feature ({m}), got {len(self.scores)}")
        if not isinstance(self.prompts_hash, str):
            raise TypeError(f"prompts_hash must be a str, got {self.prompts_hash!r}")
        for name in ("model", "extra"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be a dict, got {getattr(self, name)!r}")
        _check_json("positions", self.positions)
        _check_json("model", self.model)
        _check_json("extra", self.extra)
        if not isinstance(self.melbo_version, str):
            raise TypeError(f"melbo_version must be a str, got {self.melbo_version!r}")

    def _tensor_names(self) -> tuple[str, ...]:
        return ("V", "alpha") if self.U is None else ("U", "V", "alpha")

    # ------------------------------------------------------------------ sizes and views

    @property
    def n_factors(self) -> int:
        """Number m of features."""
        return int(self.V.shape[1])

    @property
    def d_model(self) -> int:
        """Residual-stream dimension d."""
        return int(self.V.shape[0])

    @property
    def objective(self) -> list[float]:
        """Deprecated name of :attr:`history`, the training curve (format 1's; a :class:`DeprecationWarning`)."""
        from melbo.errors import warn_renamed

        warn_renamed("Features.objective", "Features.history", stacklevel=3)
        return self.history

    def require_targets(self, purpose: str = "this") -> Tensor:
        """U, or a ValueError saying that ``purpose`` needs target directions this method lacks."""
        if self.U is None:
            raise ValueError(
                f"{purpose} needs target-layer directions U, but method {self.method!r} learns none "
                "(U is None); use features of a method that has them (e.g. exponential)"
            )
        return self.U

    def __len__(self) -> int:
        return self.n_factors

    def steering_vector(self, k: int) -> Tensor:
        """``R * V[:, k]``, shape (d_model,): what :func:`~melbo.steering.interventions.steer_features`
        adds to the residual stream entering ``source_layer``."""
        k = self._check_index(k)
        return self.R * self.V[:, k]

    def _check_index(self, k: object) -> int:
        k = check_int("feature index", k)
        m = self.n_factors
        if not -m <= k < m:
            raise IndexError(f"feature index {k} is out of range for {m} features (-{m} ≤ k < {m})")
        return k % m

    def subset(self, indices: Sequence[int] | Tensor) -> Features:
        """A new :class:`Features` with the columns ``indices`` (ints, negative allowed, or a
        boolean mask of length n_factors), in that order; provenance is kept."""
        m = self.n_factors
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            if idx.shape != (m,):
                raise ValueError(
                    f"a boolean mask must have shape ({m},), got {tuple(idx.shape)}"
                )
            idx = idx.nonzero().reshape(-1)
        if idx.ndim != 1 or idx.numel() == 0:
            raise ValueError(f"indices must be a non-empty 1-d sequence, got {indices!r}")
        if idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        idx = idx.long()
        bad = (idx < -m) | (idx >= m)
        if bool(bad.any()):
            raise IndexError(
                f"indices {idx[bad].tolist()} are out of range for {m} features (-{m} ≤ i < {m})"
            )
        idx = idx % m
        return dataclasses.replace(
            self,
            U=None if self.U is None else self.U[:, idx.to(self.U.device)].clone(),
            V=self.V[:, idx.to(self.V.device)].clone(),
            alpha=self.alpha[idx.to(self.alpha.device)].clone(),
        )

    def order_by(self, scores: Sequence[float] | Tensor, descending: bool = True) -> Features:
        """A new :class:`Features` sorted by ``scores`` (shape (n_factors,)); ties keep their order.

        E.g. ``features.order_by(features.alpha ** 2)``.
        """
        s = torch.as_tensor(scores).detach().reshape(-1).to("cpu", torch.float64)
        if s.numel() != self.n_factors:
            raise ValueError(f"need one score per feature ({self.n_factors}), got {s.numel()}")
        if bool(torch.isnan(s).any()):
            raise ValueError(f"scores contain NaN at {torch.isnan(s).nonzero().reshape(-1).tolist()}")
        order = torch.sort(s, descending=descending, stable=True).indices
        return self.subset(order)

    # ------------------------------------------------------------------ provenance

    @classmethod
    def from_fit(
        cls,
        result: Any,
        *,
        source_layer: int,
        target_layer: int,
        model: nn.Module | dict[str, Any] | None = None,
        prompts: Sequence[Any] | None = None,
        positions: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> Features:
        """Wrap a :class:`melbo.fit.FitResult` (anything with ``U, V, alpha, R, method``
        and optionally ``history, scores, n_iter, converged``) with its provenance.

        ``model`` may be the model (it is fingerprinted) or a fingerprint dict; ``prompts``
        are hashed with :func:`prompts_hash`.
        """
        fp: dict[str, Any] = {}
        if isinstance(model, nn.Module):
            fp = model_fingerprint(model)
        elif isinstance(model, dict):
            fp = dict(model)
        ext: dict[str, Any] = {}
        for key in ("n_iter", "converged"):
            if hasattr(result, key):
                ext[key] = getattr(result, key)
        ext.update(extra or {})
        return cls(
            U=None if result.U is None else result.U.detach(),
            V=result.V.detach(),
            alpha=result.alpha.detach(),
            R=float(result.R),
            method=str(result.method),
            source_layer=source_layer,
            target_layer=target_layer,
            positions=positions,
            history=list(getattr(result, "history", [])),
            scores=list(getattr(result, "scores", [])),
            prompts_hash=prompts_hash(prompts) if prompts is not None else "",
            model=fp,
            extra=ext,
        )

    def check_model(self, model: nn.Module, force: bool = False) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` matches the stored fingerprint.

        With ``force=True`` a mismatch (or a missing fingerprint) is only logged.
        """
        check_same_model(self.model, model, what="features", force=force,
                         hint="If this is the same model in another dtype or quantisation, pass force=True.")

    # ------------------------------------------------------------------ I/O

    def hook_site(self) -> dict[str, Any]:
        """:func:`hook_site` of these features (``layers_path`` from the model fingerprint)."""
        path = self.model.get("layers_path")
        return hook_site(self.source_layer, path if isinstance(path, str) and path else None)

    def to_config(self) -> dict[str, Any]:
        """The JSON-able metadata written to ``config.json``."""
        return {
            "R": self.R,
            "method": self.method,
            "source_layer": self.source_layer,
            "target_layer": self.target_layer,
            "positions": self.positions,
            "history": list(self.history),
            "scores": list(self.scores),
            "prompts_hash": self.prompts_hash,
            "model": self.model,
            "extra": self.extra,
            "hook": self.hook_site(),
            "melbo_version": self.melbo_version,
            "format_version": FORMAT_VERSION,
        }

    def fingerprint(self) -> str:
        """A sha256 of what these features are — U, V, alpha (bytes, dtype, shape), R, method,
        layers and positions — independent of file bytes; derived results record it."""
        h = hashlib.sha256()
        head = {"R": self.R, "method": self.method, "source_layer": self.source_layer,
                "target_layer": self.target_layer, "positions": self.positions}
        h.update(json.dumps(head, sort_keys=True).encode())
        for name in ("U", "V", "alpha"):
            t = getattr(self, name)
            if t is None:
                h.update(f"{name}:None;".encode())
                continue
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``features.safetensors`` and ``config.json`` into ``directory`` (created if
        needed), each atomically, and return its path (:func:`~melbo.features.format.write_features`).

        Raises FileExistsError if either file exists and ``overwrite`` is False (nothing is
        written then).
        """
        tensors = {name: getattr(self, name) for name in self._tensor_names()}
        return write_features(directory, tensors, self.to_config(), overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Features:
        """Read features written by :meth:`save`, in any format this melbo reads
        (:func:`~melbo.features.format.read_features`); tensors are loaded on the CPU.

        Raises FileNotFoundError naming a missing file; ValueError naming the file for an
        unsupported ``format_version``, missing keys or inconsistent shapes.
        """
        kwargs = read_features(directory)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{Path(directory)} holds invalid features ({CONFIG_FILE}, {TENSORS_FILE}): {err}") from err

    def save_pretrained(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """:meth:`save` plus a model card ``README.md`` (:func:`~melbo.features.hub.model_card`:
        Hub metadata and the hook site), so the directory can be uploaded as a Hugging Face Hub
        repository as it is.

        Raises FileExistsError if any of the three files exists and ``overwrite`` is False
        (nothing is written then).
        """
        out = Path(directory)
        card = out / MODEL_CARD_FILE
        if card.exists() and not overwrite:
            raise FileExistsError(
                f"{card} already exists; pass overwrite=True to replace it or choose another directory"
            )
        self.save(out, overwrite=overwrite)
        atomic_write_text(card, model_card(self.to_config(), n_factors=self.n_factors, d_model=self.d_model))
        return out

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        download: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Features:
        """Load features from a directory (``subfolder`` inside it, if given) or a Hugging Face
        Hub repository id ``owner/name``, read from the local Hugging Face cache (``cache_dir``,
        default ``HF_HUB_CACHE``): melbo is offline by default; ``download=True`` fetches
        missing files (:func:`~melbo.features.hub.pretrained_dir`).

        Raises FileNotFoundError naming the repository, the file and the cache when it is not
        there (and how to fetch it), or when ``name_or_path`` is neither a directory nor a
        repository id; ValueError for a bad file, as :meth:`load`.
        """
        where = pretrained_dir(name_or_path, subfolder=subfolder, revision=revision, download=download,
                               cache_dir=cache_dir)
        return cls.load(where)
