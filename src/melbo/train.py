"""The training runner behind ``melbo train``: prompts → Δ → the registered method's
estimator (:mod:`melbo.methods`; it calibrates R) → Features on disk, with a checkpoint after
every iteration of an iterative method and resume.

Kept apart from argument parsing so it can be driven from Python and tested directly.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from melbo.baselines.one_shot import MODES as ONE_SHOT_MODES
from melbo.causal_map import TransformerCausalMap
from melbo.errors import (
    UserError,
    check_anneal,
    check_anneal_after,
    check_lam,
    check_mu,
    check_R,
    check_seed,
    warn_renamed,
)
from melbo.features import Features, prompts_hash
from melbo.fit.step import DEFAULT_STEP, resolve_anneal_after
from melbo.fit.two_map import PENALTIES as _PENALTIES
from melbo.io import check_output, read_file_set, write_file_set
from melbo.methods import estimator_class, get_method, method_names
from melbo.models.fingerprint import model_fingerprint
from melbo.outputs import features_dir
from melbo.prompts import PromptLike

logger = logging.getLogger(__name__)

METHODS = method_names()
CHECKPOINT = "checkpoint"
_STEP_METHODS = ("melbo-v1", "one-shot")  # whose τ is optimiser steps (the deprecated `steps`)
CONTRAST_METHODS = ("mean-diff", "contrastive")  # need a contrast prompt set B
TWO_MAP_METHODS = ("contrastive", "model-diff")  # melbo.fit.two_map
OGI_METHODS = ("exponential", *TWO_MAP_METHODS)  # fitted with the OGI step of melbo.fit.step



@dataclass
class TrainConfig:
    """Everything that defines a fit (recorded in the output's ``config.json``).

    ``max_iter`` is τ, the iteration limit of the method (OGI/ALS iterations; melbo-v1:
    steps per vector; one-shot: steps); None = the method's default (OGI: the default step's
    20; quadratic 10; melbo-v1 300; one-shot 100).
    ``random_state`` seeds calibration and fit (one generator, as the estimators do).
    ``beta``, ``ortho``, ``anneal`` and ``anneal_after`` are the OGI step of the exponential and
    two-map methods, by default :data:`melbo.fit.step.DEFAULT_STEP`'s; ``**step_options("published")``
    (:mod:`melbo.fit.step`) gives the publication's, ``max_iter`` included.
    Deprecated spellings, mapped on construction with a :class:`DeprecationWarning`: ``iters``
    (τ of the DCT methods), ``steps`` (τ of melbo-v1 and one-shot), ``seed`` (``random_state``).
    """

    source_layer: int
    target_layer: int
    method: str = "exponential"
    n_factors: int = 256
    max_iter: int | None = None
    lam: float = 0.5
    R: float | None = None
    random_state: int = 0
    positions: int = 3
    chat: bool | str = "auto"
    system_prompt: str | None = None
    beta: float = DEFAULT_STEP.beta  # OGI damping (melbo.fit.step)
    init: str = "projected"
    sequential: bool = False  # exponential: G_V from the updated U (melbo.fit.exponential)
    orient: bool = False  # exponential: flip each factor to the side of larger ‖Δ_R(±v)‖
    ortho: str = DEFAULT_STEP.ortho  # OGI: "polar" (symmetric) or "qr" (published) orthogonalisation
    anneal: float | None = DEFAULT_STEP.anneal  # OGI: damping β/(1 + (k − anneal_after)/anneal); None keeps β
    anneal_after: int | None = None  # OGI: iterations at the full β first; None: 10 with anneal, 0 without
    mu: float = 1.0  # contrastive / model-diff: weight μ of the penalised map (melbo.fit.two_map)
    penalty: str | None = None  # contrastive / model-diff: "norm" or "difference"; None = the method's default
    extra: dict[str, Any] = field(default_factory=dict)
    # baselines (melbo.baselines): one-shot's example, optimiser settings of melbo-v1 / one-shot
    completion: str | None = None  # one-shot: promoted (suppressed in mode "suppress")
    suppress: str | None = None  # one-shot, mode "mixed": the completion to suppress
    one_shot_mode: str = "promote"
    token_a: str = "Sure"  # obprop: the observable logit(A) − logit(B) at the first generated position
    token_b: str = "Sorry"
    lr: float | None = None  # melbo-v1: 1e-3; one-shot: 0.01
    orthogonal: bool = True  # melbo-v1: each vector orthogonal to the earlier ones
    compile: bool = False  # torch.compile the slice layers (pays on long fits; see TransformerCausalMap)
    iters: InitVar[int | None] = None
    steps: InitVar[int | None] = None
    seed: InitVar[int | None] = None

    def __post_init__(self, iters: int | None, steps: int | None, seed: int | None) -> None:
        for old, new, v in (("iters", "max_iter", iters), ("steps", "max_iter", steps), ("seed", "random_state", seed)):
            if v is not None:
                warn_renamed(f"TrainConfig({old}=...)", f"{new}=", stacklevel=4)
        if seed is not None:
            self.random_state = seed
        self._steps_alias = steps
        if self.max_iter is None:
            if steps is not None and self.method in _STEP_METHODS:
                self.max_iter = steps
            elif iters is not None and self.method in METHODS and get_method(self.method).iterative:
                self.max_iter = iters

    def schedule(self) -> tuple[float | None, int]:
        """(anneal, anneal_after) as the fit takes them (:func:`melbo.fit.step.resolve_anneal_after`)."""
        return self.anneal, resolve_anneal_after(self.anneal, self.anneal_after)

    def resolved_max_iter(self) -> int | None:
        """τ: ``max_iter``, or the method's default (None for methods without iterations)."""
        if self.max_iter is not None:
            return self.max_iter
        default = inspect.signature(estimator_class(self.method)).parameters.get("max_iter")
        return None if default is None else int(default.default)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: choose one of {', '.join(METHODS)}")
        for name in ("n_factors", "positions"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer ≥ 1")
        for name, v in (("max_iter", self.max_iter), ("steps", self._steps_alias)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name}={v!r}: must be an integer ≥ 1")
        if self.max_iter is not None and "max_iter" not in inspect.signature(estimator_class(self.method)).parameters:
            raise ValueError(f"max_iter={self.max_iter!r} (--max-iter): method {self.method!r} runs no iterations or optimiser steps")
        if self.R is not None:
            check_R(self.R, f"R={self.R!r}:")
        check_lam("lam", self.lam)
        if not (isinstance(self.beta, int | float) and 0 < self.beta <= 1):
            raise ValueError(f"beta={self.beta!r}: must be in (0, 1]")
        if self.one_shot_mode not in ONE_SHOT_MODES:
            raise ValueError(f"one_shot_mode={self.one_shot_mode!r}: choose one of {', '.join(ONE_SHOT_MODES)}")
        if self.method == "one-shot" and not self.completion:
            raise ValueError("method 'one-shot' needs a completion (--completion TEXT)")
        if self.method == "one-shot" and self.one_shot_mode == "mixed" and not self.suppress:
            raise ValueError("one-shot mode 'mixed' needs a completion to suppress (--suppress TEXT)")
        if self.method != "one-shot" and (self.completion is not None or self.suppress is not None):
            raise ValueError(f"completion/suppress are only used by method 'one-shot', not {self.method!r}")
        for name in ("compile", "sequential", "orient"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be True or False")
        if self.method != "exponential" and (self.sequential or self.orient):
            raise ValueError(f"sequential/orient are options of method 'exponential', not {self.method!r}")
        step = (self.beta, self.ortho, *self.schedule())
        if self.method not in OGI_METHODS and step != (DEFAULT_STEP.beta, DEFAULT_STEP.ortho, DEFAULT_STEP.anneal,
                                                       DEFAULT_STEP.anneal_after):
            raise ValueError(f"beta/ortho/anneal/anneal_after are the OGI step of methods {', '.join(OGI_METHODS)}, "
                             f"not {self.method!r}")
        check_anneal_after(self.schedule()[1], check_anneal(self.anneal))
        check_mu("mu", self.mu)
        check_seed("random_state", self.random_state)
        if self.penalty not in (None, *_PENALTIES):
            raise ValueError(f"penalty={self.penalty!r}: choose one of {', '.join(_PENALTIES)}")
        if self.method not in TWO_MAP_METHODS and (self.mu != 1.0 or self.penalty is not None):
            raise ValueError(f"mu/penalty are options of methods {', '.join(TWO_MAP_METHODS)}, not {self.method!r}")
        if self.ortho not in ("qr", "polar"):
            raise ValueError(f"ortho={self.ortho!r}: choose one of qr, polar")
        if self.lr is not None and not (self.lr > 0 and torch.isfinite(torch.tensor(self.lr))):
            raise ValueError(f"lr={self.lr!r}: must be a finite number > 0")
        if self.method not in _STEP_METHODS and (self._steps_alias is not None or self.lr is not None):
            raise ValueError(f"steps/lr are only used by methods 'melbo-v1' and 'one-shot', not {self.method!r}")

    def estimator_options(self) -> dict[str, Any]:
        """The constructor arguments of the method's estimator this configuration sets
        (:meth:`melbo.methods.MethodSpec.make` keeps those the estimator accepts)."""
        anneal, anneal_after = self.schedule()
        opts: dict[str, Any] = {
            "n_factors": self.n_factors, "R": self.R, "lam": self.lam, "random_state": self.random_state,
            "beta": self.beta, "init": self.init, "sequential": self.sequential, "orient": self.orient,
            "ortho": self.ortho, "anneal": anneal, "anneal_after": anneal_after, "orthogonal": self.orthogonal, "mode": self.one_shot_mode,
            "completion": self.completion, "suppress": self.suppress, "mu": self.mu, "penalty": self.penalty,
            "token_a": self.token_a, "token_b": self.token_b,
        }
        for name, v in (("max_iter", self.max_iter), ("lr", self.lr)):
            if v is not None:
                opts[name] = v
        return opts


#: Estimator settings recorded in the features' ``extra["fit"]`` (those the method has).
_RECORDED = ("max_iter", "beta", "tol", "init", "ortho", "ortho_iters", "sequential", "orient", "anneal", "anneal_after",
             "orthogonal", "mode", "lr", "mu", "penalty")


def check_contrast_prompts(method: str, contrast_prompts: Sequence[PromptLike] | None) -> None:
    """mean-diff and contrastive need the contrast set B; every other method refuses one."""
    if method in CONTRAST_METHODS and not contrast_prompts:
        raise ValueError(f"method {method!r} needs a contrast prompt set B (--contrast-prompts FILE)")
    if method not in CONTRAST_METHODS and contrast_prompts is not None:
        raise ValueError(f"contrast prompts are only used by methods {', '.join(CONTRAST_METHODS)}, not {method!r}")


def check_base_model(method: str, has_base_model: bool) -> None:
    """model-diff needs the base model; every other method refuses one."""
    if method == "model-diff" and not has_base_model:
        raise ValueError("method 'model-diff' needs the base model the fine-tune came from (--base-model M)")
    if method != "model-diff" and has_base_model:
        raise ValueError(f"a base model is only used by method 'model-diff', not {method!r}")


def check_two_maps_differ(method: str, prompts: Sequence[PromptLike] | None = None,
                          contrast_prompts: Sequence[PromptLike] | None = None, *, model: Any = None,
                          base_model: Any = None, contrast_source: str = "--contrast-prompts") -> None:
    """Refuse a two-map fit whose maps are equal, where that shows without running them: contrastive
    with the same prompts on both sides, model-diff with the model as its own base (the same
    object, or the same path). Every feature would be zero (the fit itself probes the maps too,
    :func:`melbo.fit.two_map.two_map_dct`)."""
    import json

    if method == "contrastive" and prompts is not None and contrast_prompts is not None:
        def key(ps: Sequence[PromptLike]) -> set[str]:
            return {json.dumps(p, sort_keys=True, default=str) for p in ps}

        if key(prompts) == key(contrast_prompts):
            raise UserError(f"the two maps are equal: {contrast_source} holds the same prompts as --prompts, so Δ_A = Δ_B, "
                            "their contrast is zero and so would be every feature; give a contrast set B of other prompts")
    if method == "model-diff" and model is not None and base_model is not None:
        same = model is base_model
        if isinstance(model, str | os.PathLike) and isinstance(base_model, str | os.PathLike):
            a, b = Path(model).expanduser(), Path(base_model).expanduser()
            same = os.fspath(model) == os.fspath(base_model) or (a.exists() and b.exists() and a.resolve() == b.resolve())
        if same:
            raise UserError(f"the two maps are equal: --base-model {str(base_model)!r} is the model itself, so Δ_fine = "
                            "Δ_base, their difference is zero and so would be every feature; give the model it was "
                            "fine-tuned from")


def _write_checkpoint(out: Path, it: int, U: torch.Tensor, V: torch.Tensor, R: float, history: list[float], meta: dict[str, Any]) -> None:
    """Iteration ``it``'s factors and state as one unit (:func:`melbo.io.write_file_set`): a kill
    at any moment leaves iteration ``it - 1``'s checkpoint or this one, never a mix."""
    tensors = {"U": U.detach().cpu().contiguous(), "V": V.detach().cpu().contiguous()}
    write_file_set(out / CHECKPOINT, {"state.safetensors": lambda tmp: save_file(tensors, str(tmp))},
                   {"iteration": it, "R": R, "history": history, **meta})


def read_checkpoint(out: Path, cfg: TrainConfig | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The state and tensors (U, V) of ``out``'s checkpoint, checked to belong together and to
    make sense: ``iteration`` an integer ≥ 0, ``R`` a finite number > 0, ``history`` finite
    numbers; with ``cfg``, also made with that configuration and at most its τ iterations. Needs
    no model, so the command line reads it before loading one.

    Raises
    ------
    FileNotFoundError
        when there is no checkpoint (or one of its files is missing).
    ValueError
        when its files do not belong together, cannot be read or hold bad values (naming the
        file and the value).
    """
    state, paths = read_file_set(out / CHECKPOINT, what="checkpoint", legacy=("state.safetensors",))
    where = str(out / CHECKPOINT / "state.json")
    try:
        tensors = load_file(str(paths["state.safetensors"]))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"checkpoint {str(paths['state.safetensors'])!r} is not readable: {err}; start over (--force)") from err
    bad = [k for k in ("iteration", "R") if not isinstance(state.get(k), (int, float)) or isinstance(state.get(k), bool)]
    if bad or not {"U", "V"} <= set(tensors):
        raise ValueError(f"checkpoint in {str(out / CHECKPOINT)!r} lacks {bad or sorted({'U', 'V'} - set(tensors))}; "
                         "start over (--force)")
    it, R = state["iteration"], state["R"]
    if not isinstance(it, int) or it < 0:
        raise UserError(f"checkpoint {where!r}: iteration {it!r} must be an integer ≥ 0 (the iterations done); "
                        "start over (--force)")
    try:
        R = check_R(R)
    except UserError:
        raise UserError(f"checkpoint {where!r}: R {R!r} must be a finite number > 0; start over (--force)") from None
    history = state.get("history", state.get("objective", []))
    if not isinstance(history, list) or not all(isinstance(h, int | float) and not isinstance(h, bool) and math.isfinite(h)
                                                for h in history):
        raise UserError(f"checkpoint {where!r}: history {str(history)[:60]!r} must be a list of finite numbers; "
                        "start over (--force)")
    if cfg is not None:
        now = asdict(cfg)
        # compile changes speed, not results: a fit may be resumed with or without it
        if {k: v for k, v in (state.get("config") or {}).items() if k != "compile"} != \
                {k: v for k, v in now.items() if k != "compile"}:
            raise UserError("the checkpoint was made with a different configuration or model; "
                            f"checkpoint config: {state.get('config')}, now: {now}")
        tau = cfg.resolved_max_iter()
        if tau is not None and it > tau:
            raise UserError(f"checkpoint {where!r}: iteration {it} is beyond this fit's {tau} iterations (--max-iter); "
                            "start over (--force)")
    return state, tensors


def train(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    cfg: TrainConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = False,
    on_iteration: Callable[[int, float], None] | None = None,
    contrast_prompts: Sequence[PromptLike] | None = None,
    base_model: nn.Module | None = None,
) -> Features:
    """Fit features and (if ``out`` is given) save them there with per-iteration checkpoints.

    The method's estimator comes from the registry (:mod:`melbo.methods`) and is fitted on
    the causal map of ``prompts`` exactly as from Python: the same ``random_state`` gives
    the same factors. ``contrast_prompts`` (the set B) is required by ``mean-diff`` and
    refused otherwise; so is ``base_model`` (the model ``model`` was fine-tuned from, the
    penalised map of ``model-diff``; Δ_base is built on the same tokens, layers and
    positions). Iterative methods get a checkpoint after every iteration (resumable);
    every method uses R (given, else calibrated): melbo-v1 and random vectors at norm R,
    mean-diff steered at R, one-shot capped at R.
    """
    cfg.validate()
    check_contrast_prompts(cfg.method, contrast_prompts)
    check_base_model(cfg.method, base_model is not None)
    check_two_maps_differ(cfg.method, prompts, contrast_prompts, model=model, base_model=base_model)
    spec = get_method(cfg.method)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        check_output(out_dir, flag="--out", writer="melbo train", ours=features_dir, directory=True, force=force,
                     resume=resume, resume_file=f"{CHECKPOINT}/state.json")
        if force and not resume:  # an earlier run's checkpoint is no start for this one
            shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
    delta = TransformerCausalMap(
        model, prompts, cfg.source_layer, cfg.target_layer, tokenizer=tokenizer,
        positions=cfg.positions, chat=cfg.chat, system_prompt=cfg.system_prompt, compile=cfg.compile,
    )
    fp = model_fingerprint(model)
    meta: dict[str, Any] = {"config": asdict(cfg), "model": fp}
    if base_model is not None:
        meta["base_model"] = model_fingerprint(base_model)
    options = cfg.estimator_options()
    tau = cfg.resolved_max_iter()
    start_it = 0
    history0: list[float] = []
    if resume and out_dir is not None:
        state, tensors = read_checkpoint(out_dir, cfg)
        if state.get("model") != fp or state.get("base_model") != meta.get("base_model"):
            raise ValueError(
                "the checkpoint was made with a different configuration or model; "
                f"checkpoint model: {state.get('model')}, now: {fp}"
            )
        options["init"] = (tensors["U"].to(delta.device, delta.dtype), tensors["V"].to(delta.device, delta.dtype))
        start_it, history0, options["R"] = int(state["iteration"]), list(state.get("history", state.get("objective", []))), float(state["R"])
        _check_R(model, tokenizer, prompts, cfg, options["R"], f"R {options['R']:g} of the checkpoint in {str(out_dir / CHECKPOINT)!r}")
        logger.info("resuming from iteration %d of %s", start_it, tau)
        options.update(_resumed_schedule(cfg, start_it))
    elif cfg.R is not None:
        _check_R(model, tokenizer, prompts, cfg, cfg.R, f"R {cfg.R:g} (--R)")
    bar = None
    if spec.iterative and tau is not None:
        options["max_iter"] = max(tau - start_it, 1)
        if progress and tau > start_it:
            from tqdm.auto import tqdm

            bar = tqdm(total=tau, initial=start_it, desc=f"{cfg.method} DCT", unit="it")
    seen: list[float] = []
    est: Any = None

    def callback(i: int, st: Any) -> bool:
        it = start_it + len(seen) + 1
        if not math.isfinite(float(st.objective)):
            R_now = options["R"] if options["R"] is not None else est.calibration_.R
            raise UserError(f"the fit's objective is {float(st.objective)} at iteration {it} (R = {float(R_now):g}): the "
                            "steered vectors overflow the model; use a smaller --R (or calibrate it with --lam)")
        # no checkpoint of the last iteration (the limit, or the factors stopped moving): the
        # features are saved next, and a kill before that resumes from the one before and
        # repeats this iteration, as an uninterrupted fit ends, rather than running one more
        tol = getattr(est, "tol", None)
        last = (tau is not None and it >= tau) or (tol is not None and float(st.movement) < tol)
        if out_dir is not None and not last:
            R_now = float(options["R"] if options["R"] is not None else est.calibration_.R)
            _write_checkpoint(out_dir, it, st.U, st.V, R_now, history0 + [*seen, st.objective], meta)
        seen.append(float(st.objective))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objective=f"{st.objective:.4g}")
        if on_iteration is not None:
            on_iteration(it, float(st.objective))
        return False

    if spec.iterative:
        options["callback"] = callback
    if contrast_prompts is not None:
        options["contrast_prompts"] = list(contrast_prompts)
    if base_model is not None:
        options["base_model"] = base_model
    est = spec.make(**options)
    try:
        est.fit(delta)
    finally:
        if bar is not None:
            bar.close()
    cal = est.calibration_
    # how the factors were fitted, as the estimator took it (its JSON-able settings; not the callback)
    fit_settings = {f.name: getattr(est, f.name) for f in dataclasses.fields(est)
                    if f.name in _RECORDED and isinstance(getattr(est, f.name), int | float | str | bool | None)}
    if start_it:  # a resumed fit ran with its remaining iterations and a shifted schedule: record the fit's own
        configured = {"max_iter": tau, "beta": cfg.beta, "anneal": cfg.anneal, "anneal_after": cfg.schedule()[1]}
        fit_settings.update({k: v for k, v in configured.items() if k in fit_settings})
    calibration = {"E": cal.error, "history": [list(h) for h in cal.history]} if cal is not None else {}
    feats = est.to_features(
        model=fp, prompts=list(prompts), positions=cfg.positions,
        extra={"random_state": cfg.random_state, "lam": cfg.lam, "calibrated": cfg.R is None, "n_prompts": len(prompts),
               **({"calibration": calibration} if calibration else {}), **_baseline_extra(cfg, contrast_prompts),
               **({"base_model": meta["base_model"]} if base_model is not None else {}), "fit": fit_settings, **cfg.extra},
    )
    if start_it:  # the iterations before the resume count too
        extra = {**feats.extra, "n_iter": start_it + int(feats.extra.get("n_iter", 0)), "resumed_at": start_it}
        feats = dataclasses.replace(feats, history=history0 + list(feats.history), extra=extra)
    if out_dir is not None:
        feats.save(out_dir, overwrite=force or resume)
        shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
    return feats


def _resumed_schedule(cfg: TrainConfig, start_it: int) -> dict[str, Any]:
    """The damping options that continue ``cfg``'s schedule after ``start_it`` iterations.

    The fit counts its iterations k from 0 again when resumed, but the exponential DCT's
    schedule β_k = β / (1 + max(0, k − anneal_after) / anneal) is one of the whole fit's
    iteration. With k = start_it + k′ it is ``anneal_after − start_it`` iterations more at β
    while that is ≥ 0; after, with s = start_it − anneal_after > 0,
    β / (1 + (k′ + s) / anneal) = β′ / (1 + k′ / anneal′), β′ = β · anneal / (anneal + s),
    anneal′ = anneal + s. A fixed β (no ``anneal``) needs nothing.
    """
    anneal, anneal_after = cfg.schedule()
    if anneal is None or start_it <= 0:
        return {}
    s = start_it - anneal_after
    if s <= 0:
        return {"anneal_after": -s}
    return {"anneal_after": 0, "anneal": anneal + s, "beta": cfg.beta * anneal / (anneal + s)}


def _check_R(model: nn.Module, tokenizer: Any, prompts: Sequence[PromptLike], cfg: TrainConfig, R: float, what: str) -> None:
    """Refuse a steering norm R that dwarfs the residual stream at the source layer (a checkpoint's
    R of 1e300 used to end in a NaN objective and "not JSON compliant")."""
    from melbo.interventions import check_steering_norm

    check_steering_norm(model, tokenizer, list(prompts)[:16], cfg.source_layer, R, chat=cfg.chat,
                        system_prompt=cfg.system_prompt, what=what,
                        fix="give a smaller --R (or calibrate it with --lam), or start over (--force)")


def _baseline_extra(cfg: TrainConfig, contrast_prompts: Sequence[PromptLike] | None) -> dict[str, Any]:
    if cfg.method in CONTRAST_METHODS and contrast_prompts:
        return {"contrast_prompts_hash": prompts_hash(list(contrast_prompts)), "n_contrast_prompts": len(contrast_prompts)}
    if cfg.method == "one-shot":
        return {"completion": cfg.completion, "suppress": cfg.suppress, "one_shot_mode": cfg.one_shot_mode}
    if cfg.method == "melbo-v1":
        return {"orthogonal": cfg.orthogonal}
    if cfg.method == "obprop":
        return {"observable": [cfg.token_a, cfg.token_b]}
    return {}
