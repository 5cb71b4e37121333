"""Fitted features with their provenance, saved as ``features.safetensors`` + ``config.json``.

A :class:`Features` holds m features of a transcoder fitted between the residual stream
entering layer ``source_layer`` and the one entering ``target_layer`` (``method.md`` §2):
``V[:, ℓ]`` is the input (source-layer) direction, ``U[:, ℓ]`` the output (target-layer)
direction, ``alpha[ℓ]`` its scale. Feature ℓ is applied as ``R * V[:, ℓ]`` added to the
residual stream entering layer ``source_layer`` (:func:`melbo.interventions.steer_features`),
exactly where Δ was trained.

Methods that learn no target directions (one-shot, mean-diff: ``has_targets`` False in
:mod:`melbo.methods`) have ``U = None``; what α, ``history`` and ``scores`` mean per method is
the table of :mod:`melbo.fit.result`.

On disk (``format_version`` 2)::

    <dir>/features.safetensors   tensors V (d, m), alpha (m,) and U (d, m) unless U is None
    <dir>/config.json            R, method, source_layer, target_layer, positions,
                                 history, scores, prompts_hash, model (fingerprint), extra,
                                 hook, melbo_version, format_version, tensors_sha256
    <dir>/README.md              (only from :meth:`Features.save_pretrained`) a model card

``tensors_sha256`` (the sha256 of ``features.safetensors``) proves the pair: the tensors are
written first, the config naming their hash last, and :meth:`Features.load` refuses a pair
whose hashes differ (a save interrupted between the two files, or one file replaced).
Files without it (older melbo) are read as before. Results derived from features record
:meth:`Features.fingerprint` and are refused with other features (e.g. an ``analysis.json``
left behind by ``melbo train --force``).

``hook`` (:func:`hook_site`) says where the vectors go in the names other tools use — the
input of the Hugging Face module ``model.layers.{s}`` (= the output of ``model.layers.{s-1}``),
TransformerLens ``blocks.{s}.hook_resid_pre``, llama.cpp ``direction.{s-1}`` — so that another
tool applies ``R * V[:, k]`` without guessing. It is derived from ``source_layer`` and the model
fingerprint's ``layers_path``; :meth:`Features.load` only checks that it agrees. Directories
written before it existed still load.

:meth:`Features.save_pretrained` / :meth:`Features.from_pretrained` are the Hugging Face-style
names for the same format: ``from_pretrained`` also takes a Hub repository id, read from the
local Hugging Face cache (``HF_HUB_CACHE``); it downloads only with ``download=True``.

Format 1 (before history/scores were separated) is still read: its ``objective`` is the
per-vector ``scores`` for melbo-v1 and the per-iteration ``history`` otherwise, and the U it
stored for a method without target directions (a copy of V or Δ_R(v)) is dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from melbo.errors import warn_renamed
from melbo.fingerprint import describe_fingerprint, model_fingerprint, same_model
from melbo.io import atomic_write, atomic_write_text, file_sha256, read_json_file

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "Features",
    "ModelMismatchError",
    "SUPPORTED_FORMAT_VERSIONS",
    "TENSORS_FILE",
    "hook_site",
    "melbo_version",
    "prompts_hash",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = frozenset({1, 2})
TENSORS_FILE = "features.safetensors"
CONFIG_FILE = "config.json"
_CONFIG_KEYS = (
    "R",
    "method",
    "source_layer",
    "target_layer",
    "positions",
    "history",
    "scores",
    "objective",  # format 1
    "prompts_hash",
    "model",
    "extra",
    "hook",
    "melbo_version",
    "format_version",
    "tensors_sha256",
)
_REQUIRED_CONFIG_KEYS = ("R", "method", "source_layer", "target_layer", "format_version")
MODEL_CARD_FILE = "README.md"
DEFAULT_LAYERS_PATH = "model.layers"
"""The decoder-layer list of most Hugging Face causal LMs; :func:`hook_site` names it when the
features carry no fingerprint with the model's own ``layers_path``."""


class ModelMismatchError(ValueError):
    """Features are applied to a model other than the one they were fitted on."""


def melbo_version() -> str:
    """The running melbo's version: ``melbo.__version__``, the one version source (pyproject reads it too)."""
    from melbo import __version__

    return __version__


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0].split("+", 1)[0]
    return int(head) if head.isdigit() else None


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


def hook_site(source_layer: int, layers_path: str | None = None) -> dict[str, Any]:
    """Where features fitted at ``source_layer`` are applied, in the names other tools use.

    Feature k adds ``scale * R * V[:, k]`` to the residual stream entering decoder layer s =
    ``source_layer``, at every position (prompt and generated tokens): a forward *pre*-hook on
    ``{layers_path}.{s}`` adding to its first input. For s ≥ 1 that is the same as adding to
    the output (the hidden states, first element) of ``{layers_path}.{s-1}``.

    Returns
    -------
    dict
        ``layer`` (s); ``module`` and ``module_io`` ("input"); ``output_of`` (the module whose
        output it equals, None for s = 0: the embedding's output, scaled on some families);
        ``layers_path`` and ``layers_path_known`` (False: :data:`DEFAULT_LAYERS_PATH`, the
        common Hugging Face name, was assumed); ``hidden_states_index`` (``output_hidden_states``
        index s); ``transformer_lens`` (``blocks.{s}.hook_resid_pre``, the SAELens
        ``hook_name``); ``llama_cpp_direction`` (the control-vector tensor ``direction.{s-1}``,
        None for s < 2, which llama.cpp cannot express); ``positions`` ("all"); ``vector``
        ("R * V[:, k]"); ``description``.
    """
    s = _check_int("source_layer", source_layer)
    if s < 0:
        raise ValueError(f"source_layer must be ≥ 0, got {s}")
    known = bool(layers_path)
    path = layers_path or DEFAULT_LAYERS_PATH
    return {
        "layer": s,
        "module": f"{path}.{s}",
        "module_io": "input",
        "output_of": f"{path}.{s - 1}" if s >= 1 else None,
        "layers_path": path,
        "layers_path_known": known,
        "hidden_states_index": s,
        "transformer_lens": f"blocks.{s}.hook_resid_pre",
        "llama_cpp_direction": s - 1 if s >= 2 else None,
        "positions": "all",
        "vector": "R * V[:, k]",
        "description": (
            f"feature k adds scale * R * V[:, k] to the residual stream entering decoder layer {s} "
            f"(input of {path}.{s}"
            + (f" = output of {path}.{s - 1}" if s >= 1 else ", the embedding output")
            + "), at every position, prompt and generated tokens alike"
        ),
    }


def _check_json(name: str, value: object) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serialisable, got {value!r}: {err}") from err


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True, eq=False)
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
        :func:`melbo.fingerprint.model_fingerprint` of the model ({} when unknown).
    extra : dict
        Any further JSON-able metadata (n_iter, converged, seed, …).
    melbo_version : str
        Version of melbo that made them.
    """

    U: Tensor | None
    V: Tensor
    alpha: Tensor
    R: float
    method: str
    source_layer: int
    target_layer: int
    positions: Any = None
    history: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    prompts_hash: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    melbo_version: str = field(default_factory=melbo_version)

    def __post_init__(self) -> None:
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
        if isinstance(self.R, bool) or not isinstance(self.R, (int, float)):
            raise TypeError(f"R must be a float, got {self.R!r}")
        if not math.isfinite(self.R) or self.R <= 0:
            raise ValueError(f"R must be finite and > 0, got {self.R}")
        object.__setattr__(self, "R", float(self.R))
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty str, got {self.method!r}")
        s = _check_int("source_layer", self.source_layer)
        t_ = _check_int("target_layer", self.target_layer)
        if not 0 <= s < t_:
            raise ValueError(
                f"need 0 ≤ source_layer < target_layer, got source_layer={s}, target_layer={t_}"
            )
        for name in ("history", "scores"):
            try:
                values = [float(x) for x in getattr(self, name)]
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name} must be a list of floats, got {getattr(self, name)!r}") from err
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
        """``R * V[:, k]``, shape (d_model,): what :func:`~melbo.interventions.steer_features`
        adds to the residual stream entering ``source_layer``."""
        k = self._check_index(k)
        return self.R * self.V[:, k]

    def _check_index(self, k: object) -> int:
        k = _check_int("feature index", k)
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
        fp = model_fingerprint(model)
        if self.model and same_model(self.model, fp):
            return
        if not self.model:
            msg = "these features carry no model fingerprint, so the model cannot be checked"
        else:
            msg = (
                "these features were fitted on a different model:\n"
                f"  features: {describe_fingerprint(self.model)}\n"
                f"  model:    {describe_fingerprint(fp)}"
            )
        if force:
            logger.warning("%s (ignored: force=True)", msg)
            return
        raise ModelMismatchError(
            msg + "\nIf this is the same model in another dtype or quantisation, pass force=True."
        )

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
        needed) and return its path.

        Each file is written to a temporary file in the same directory and moved into place
        with :func:`os.replace`, so a reader never sees a half-written file.

        Raises
        ------
        FileExistsError
            if either file exists and ``overwrite`` is False (nothing is written then).
        """
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out} exists and is not a directory")
        paths = (out / TENSORS_FILE, out / CONFIG_FILE)
        if not overwrite:
            for p in paths:
                if p.exists():
                    raise FileExistsError(
                        f"{p} already exists; pass overwrite=True to replace it or choose another directory"
                    )
        out.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).detach().to("cpu").contiguous() for name in self._tensor_names()}
        meta = {"format": "pt", "melbo_format_version": str(FORMAT_VERSION)}
        digest: list[str] = []

        def write_tensors(tmp: Path) -> None:
            save_file(tensors, str(tmp), metadata=meta)
            digest.append(file_sha256(tmp))

        atomic_write(paths[0], write_tensors)
        config = {**self.to_config(), "tensors_sha256": digest[0]}
        atomic_write_text(paths[1], json.dumps(config, indent=2, allow_nan=False) + "\n")
        logger.info("saved %d features (d=%d) to %s", self.n_factors, self.d_model, out)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Features:
        """Read features written by :meth:`save`; tensors are loaded on the CPU.

        Raises
        ------
        FileNotFoundError
            naming a missing file.
        ValueError
            for an unsupported ``format_version``, missing keys or inconsistent shapes
            (the message names the file).
        """
        src = Path(directory)
        tpath, cpath = src / TENSORS_FILE, src / CONFIG_FILE
        for p in (tpath, cpath):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: {src} is not a saved Features directory")
        cfg = read_json_file(cpath, what="features config")
        if not isinstance(cfg, dict):
            raise ValueError(f"{cpath} must hold a JSON object, got {type(cfg).__name__}")
        missing = [k for k in _REQUIRED_CONFIG_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"{cpath} lacks the keys {missing}")
        fv = cfg["format_version"]
        if isinstance(fv, bool) or not isinstance(fv, int) or fv not in SUPPORTED_FORMAT_VERSIONS:  # not True, 1.0
            newer = isinstance(fv, int) and fv > max(SUPPORTED_FORMAT_VERSIONS)
            raise ValueError(
                f"{cpath} has format_version={fv!r}; this melbo ({melbo_version()}) reads "
                f"format_version in {sorted(SUPPORTED_FORMAT_VERSIONS)}"
                + ("; upgrade melbo to read it" if newer else "")
            )
        unknown = sorted(set(cfg) - set(_CONFIG_KEYS))
        if unknown:
            logger.warning("%s: ignoring unknown keys %s", cpath, unknown)
        saved_version = str(cfg.get("melbo_version", "0+unknown"))
        ours = melbo_version()
        if _major(saved_version) is not None and _major(saved_version) != _major(ours):
            warnings.warn(
                f"{src} was written by melbo {saved_version}, this is melbo {ours} "
                "(different major version); check the results",
                UserWarning,
                stacklevel=2,
            )
        recorded = cfg.get("tensors_sha256")
        if recorded is not None and recorded != file_sha256(tpath):
            raise ValueError(
                f"{tpath} does not match {cpath} (its sha256 differs from the recorded tensors_sha256): a save "
                "was interrupted between the two files or one was replaced; fit the features again (--force)"
            )
        try:
            tensors = load_file(str(tpath), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{tpath} is not a readable safetensors file: {err}") from err
        absent = [k for k in ("U", "V", "alpha") if k not in tensors and (k != "U" or fv == 1)]
        if absent:
            raise ValueError(f"{tpath} lacks the tensors {absent}; it holds {sorted(tensors)}")
        hook = cfg.get("hook")
        if hook is not None and (not isinstance(hook, dict) or hook.get("layer") != cfg["source_layer"]):
            raise ValueError(
                f"{cpath}: hook {hook!r} does not agree with source_layer={cfg['source_layer']!r} "
                "(hook is derived from source_layer; remove it or fix source_layer)"
            )
        history, scores = cfg.get("history", []), cfg.get("scores", [])
        U = tensors.get("U")
        if fv == 1:  # one name for two meanings, and U stored for methods without targets
            old = cfg.get("objective", [])
            history, scores = ([], old) if cfg["method"] == "melbo-v1" else (old, [])
            if not _has_targets(cfg["method"]):
                U = None
        try:
            return cls(
                U=U,
                V=tensors["V"],
                alpha=tensors["alpha"],
                R=cfg["R"],
                method=cfg["method"],
                source_layer=cfg["source_layer"],
                target_layer=cfg["target_layer"],
                positions=cfg.get("positions"),
                history=history,
                scores=scores,
                prompts_hash=cfg.get("prompts_hash", ""),
                model=cfg.get("model", {}),
                extra=cfg.get("extra", {}),
                melbo_version=saved_version,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{src} holds invalid features ({cpath.name}, {tpath.name}): {err}") from err

    def save_pretrained(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """:meth:`save` plus a model card ``README.md`` (Hugging Face Hub metadata:
        ``library_name: melbo``, tags, ``base_model`` when the fingerprint names a Hub id, and the
        hook site), so the directory can be uploaded as a Hub repository as it is.

        Raises
        ------
        FileExistsError
            if any of the three files exists and ``overwrite`` is False (nothing is written).
        """
        out = Path(directory)
        card = out / MODEL_CARD_FILE
        if card.exists() and not overwrite:
            raise FileExistsError(
                f"{card} already exists; pass overwrite=True to replace it or choose another directory"
            )
        self.save(out, overwrite=overwrite)
        atomic_write_text(card, _model_card(self))
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
        """Load features from a directory or a Hugging Face Hub repository id.

        A local directory (``subfolder`` inside it, if given) is read with :meth:`load`. Any
        other ``name_or_path`` must be a repository id (``owner/name``); its ``config.json``
        and ``features.safetensors`` are read from the local Hugging Face cache
        (``cache_dir``, default ``HF_HUB_CACHE``) — melbo is offline by default. With
        ``download=True`` missing files are fetched with :func:`huggingface_hub.hf_hub_download`
        (into that cache, in its layout; ``HF_HUB_OFFLINE=1`` still forbids it).

        Raises
        ------
        FileNotFoundError
            naming the repository, the file and the cache when it is not there (and how to
            fetch it), or when ``name_or_path`` is neither a directory nor a repository id.
        ValueError
            for a bad file, as :meth:`load` (naming the file).
        """
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            return cls.load(path / subfolder if subfolder else path)
        raw = os.fspath(name_or_path)
        from melbo.models.source import _is_hub_id

        if not isinstance(name_or_path, str) or not _is_hub_id(raw):
            raise FileNotFoundError(
                f"{raw!r} is not a directory and not a Hugging Face repository id (owner/name)"
            )
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
        )

        cache = os.fspath(cache_dir) if cache_dir is not None else HF_HUB_CACHE
        where = f"{raw!r}" + (f" (subfolder {subfolder!r})" if subfolder else "") + (
            f" at revision {revision!r}" if revision else ""
        )
        found: list[Path] = []
        for name in (CONFIG_FILE, TENSORS_FILE):
            try:
                found.append(Path(hf_hub_download(
                    raw, name, subfolder=subfolder, revision=revision,
                    cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                    local_files_only=not download, library_name="melbo", library_version=melbo_version(),
                )))  # fmt: skip
            except LocalEntryNotFoundError as err:
                how = (
                    "HF_HUB_OFFLINE is set or the Hub cannot be reached"
                    if download
                    else "melbo does not download unless asked: pass download=True, or fetch it "
                    f"once with `hf download {raw}`"
                )
                raise FileNotFoundError(
                    f"{name} of {where} is not in the local Hugging Face cache ({cache}); {how}"
                ) from err
            except (EntryNotFoundError, HfHubHTTPError, OSError) as err:
                raise FileNotFoundError(f"could not get {name} of {where} from the Hub: {err}") from err
        if found[0].parent != found[1].parent:
            raise ValueError(
                f"{where}: {CONFIG_FILE} and {TENSORS_FILE} resolved to different snapshots "
                f"({found[0].parent}, {found[1].parent}); pass an explicit revision"
            )
        return cls.load(found[0].parent)


def _model_card(features: Features) -> str:
    """The README.md of :meth:`Features.save_pretrained`: Hub metadata and how to apply them."""
    from melbo.models.source import _is_hub_id

    hook = features.hook_site()
    name = str(features.model.get("name", ""))
    base = f"base_model: {name}\n" if name and not name.startswith((".", "/", "~")) and _is_hub_id(name) else ""
    s, t = features.source_layer, features.target_layer
    llama = hook["llama_cpp_direction"]
    return (
        "---\n"
        "library_name: melbo\n"
        f"{base}"
        "tags:\n  - melbo\n  - steering-vectors\n  - deep-causal-transcoder\n"
        "---\n\n"
        f"# {features.n_factors} melbo features ({features.method}, layers {s} → {t})\n\n"
        f"Fitted on `{name or 'an unrecorded model'}` with melbo {features.melbo_version}; "
        f"steering norm R = {features.R:g}, d_model = {features.d_model}.\n\n"
        "```python\nfrom melbo.features import Features\n"
        "features = Features.from_pretrained(\"<this directory or repo id>\")\n```\n\n"
        f"Where they apply: {hook['description']}.\n\n"
        "| tool | hook site |\n|---|---|\n"
        f"| Hugging Face transformers | input of `{hook['module']}`"
        + (f" = output of `{hook['output_of']}`" if hook["output_of"] else "")
        + " |\n"
        f"| TransformerLens / SAELens | `{hook['transformer_lens']}` |\n"
        f"| llama.cpp control vector | "
        + (f"`direction.{llama}` (`melbo export DIR --format gguf`)" if llama is not None else "not expressible (s < 2)")
        + " |\n\n"
        "Files: `features.safetensors` (`V` (d_model, m) input directions, `U` output directions, "
        "`alpha`), `config.json` (R, layers, method, model fingerprint, `hook`).\n"
    )



_dataclass_init = Features.__init__


@functools.wraps(_dataclass_init)
def _init_accepting_objective(self: Features, *args: Any, objective: Sequence[float] | None = None, **kwargs: Any) -> None:
    """The dataclass ``__init__``, also accepting format 1's ``objective=`` (the training curve) for ``history=``."""
    if objective is not None:
        if "history" in kwargs:
            raise TypeError("give history= or its old name objective=, not both")
        kwargs["history"] = objective
    _dataclass_init(self, *args, **kwargs)


Features.__init__ = _init_accepting_objective  # type: ignore[method-assign]


def _has_targets(method: str) -> bool:
    """Whether ``method`` learns target directions (unknown methods: assume so)."""
    from melbo.methods import REGISTRY

    spec = REGISTRY.get(method)
    return True if spec is None else spec.has_targets
