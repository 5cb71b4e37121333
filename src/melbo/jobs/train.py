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
from torch import nn

from melbo.errors import (
    UserError,
    check_anneal,
    check_anneal_after,
    check_lam,
    check_R,
    check_seed,
    warn_renamed,
)
from melbo.features import Features, prompts_hash
from melbo.fit.step import DEFAULT_STEP, resolve_anneal_after
from melbo.jobs.checkpoint import CHECKPOINT, read_checkpoint
from melbo.jobs.checkpoint import write_checkpoint as _write_checkpoint  # (tests stop a fit here)
from melbo.maps.transformer import TransformerCausalMap
from melbo.methods import (
    MethodSpec,
    describe_methods,
    get_method,
    method_names,
    method_options,
    methods_where,
)
from melbo.models.fingerprint import model_fingerprint
from melbo.prompts import PromptLike
from melbo.store.io import check_output
from melbo.store.outputs import features_dir

logger = logging.getLogger(__name__)

_STEP_FIELDS = ("beta", "ortho", "anneal", "anneal_after")  # the OGI step (melbo.fit.step)


def __getattr__(name: str) -> tuple[str, ...]:
    """The method groups of old, derived from the registry when read (so they include methods
    registered after import): ``METHODS``, ``CONTRAST_METHODS`` (need a contrast set B),
    ``OGI_METHODS`` (take the OGI step), ``TWO_MAP_METHODS`` (OGI with a second map)."""
    groups: dict[str, Any] = {
        "METHODS": lambda s: True, "CONTRAST_METHODS": lambda s: s.contrast, "OGI_METHODS": lambda s: s.ogi_step,
        "TWO_MAP_METHODS": lambda s: s.ogi_step and (s.contrast or s.base_model),
    }
    if name in groups:
        return methods_where(groups[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    The method's own options (:attr:`melbo.methods.MethodSpec.options`) are the fields of
    old below (``init`` … ``orthogonal``) or, for an option that is no field, ``method_options``
    (name → value); a method refuses another method's option set to other than its default.
    Deprecated spellings, mapped on construction with a :class:`DeprecationWarning`: ``iters``
    (τ of the iterative methods), ``steps`` (τ of the methods whose τ is optimiser steps), ``seed``
    (``random_state``).
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
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's options that are no field above
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
        if self.max_iter is None and self.method in method_names():
            spec = get_method(self.method)
            if steps is not None and spec.optimiser_steps:
                self.max_iter = steps
            elif iters is not None and spec.iterative:
                self.max_iter = iters

    def schedule(self) -> tuple[float | None, int]:
        """(anneal, anneal_after) as the fit takes them (:func:`melbo.fit.step.resolve_anneal_after`)."""
        return self.anneal, resolve_anneal_after(self.anneal, self.anneal_after)

    def resolved_max_iter(self) -> int | None:
        """τ: ``max_iter``, or the method's default (None for methods without iterations)."""
        if self.max_iter is not None:
            return self.max_iter
        default = inspect.signature(get_method(self.method).estimator_class()).parameters.get("max_iter")
        return None if default is None else int(default.default)

    def as_record(self) -> dict[str, Any]:
        """The configuration as recorded (a checkpoint's ``config``): its fields, without
        ``method_options`` when empty, so records made before that field existed still match."""
        d = asdict(self)
        if not d["method_options"]:
            del d["method_options"]
        return d

    def option_values(self, spec: MethodSpec | None = None) -> dict[str, Any]:
        """The value of every registered method option (or only ``spec``'s): the field of that
        name, else ``method_options``'s entry, else the option's default."""
        options = {o.name: o for o in spec.options} if spec is not None else {n: o for n, (o, _) in method_options().items()}
        fields = {f.name for f in dataclasses.fields(self)}
        return {n: getattr(self, n) if n in fields else self.method_options.get(n, o.default) for n, o in options.items()}

    def validate(self) -> None:
        spec = get_method(self.method)
        for name in ("n_factors", "positions"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer ≥ 1")
        for name, v in (("max_iter", self.max_iter), ("steps", self._steps_alias)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name}={v!r}: must be an integer ≥ 1")
        if self.max_iter is not None and "max_iter" not in spec.parameters():
            raise ValueError(f"max_iter={self.max_iter!r} (--max-iter): method {self.method!r} runs no iterations or optimiser steps")
        if self.R is not None:
            check_R(self.R, f"R={self.R!r}:")
        check_lam("lam", self.lam)
        if not (isinstance(self.beta, int | float) and 0 < self.beta <= 1):
            raise ValueError(f"beta={self.beta!r}: must be in (0, 1]")
        if not isinstance(self.method_options, dict):
            raise ValueError(f"method_options={self.method_options!r}: must be a dict of option name → value")
        known = method_options()
        own = {o.name for o in spec.options}
        fields = {f.name for f in dataclasses.fields(self)}
        for name in self.method_options:  # another method's option is refused with the fields' (below)
            if name in fields:
                raise ValueError(f"method_options: {name!r} is a field of TrainConfig: give {name}=... instead")
            if name not in known:
                raise ValueError(f"method_options: {name!r} is no method's option; method {self.method!r} takes "
                                 f"{', '.join(sorted(own)) or 'none'}")
        values = self.option_values()
        for name, (opt, _) in known.items():
            opt.validate(values[name])
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile={self.compile!r}: must be True or False")
        if spec.check is not None:
            spec.check({n: values[n] for n in own})
        misplaced = [n for n, (opt, _) in known.items() if n not in own and values[n] != opt.default]
        if misplaced:  # named with every option of the methods that take it
            takers = known[misplaced[0]][1]
            group = [n for n, (_, t) in known.items() if t == takers]
            are = "is an option" if len(group) == 1 else "are options"
            raise ValueError(f"{'/'.join(group)} {are} of {describe_methods(takers)}, not {self.method!r}")
        step = (self.beta, self.ortho, *self.schedule())
        if not spec.ogi_step and step != (DEFAULT_STEP.beta, DEFAULT_STEP.ortho, DEFAULT_STEP.anneal,
                                           DEFAULT_STEP.anneal_after):
            raise ValueError(f"{'/'.join(_STEP_FIELDS)} are the OGI step of methods "
                             f"{', '.join(methods_where(lambda s: s.ogi_step))}, not {self.method!r}")
        check_anneal_after(self.schedule()[1], check_anneal(self.anneal))
        check_seed("random_state", self.random_state)
        if self.ortho not in ("qr", "polar"):
            raise ValueError(f"ortho={self.ortho!r}: choose one of qr, polar")
        if self.lr is not None and not (self.lr > 0 and torch.isfinite(torch.tensor(self.lr))):
            raise ValueError(f"lr={self.lr!r}: must be a finite number > 0")
        if not spec.optimiser_steps and (self._steps_alias is not None or self.lr is not None):
            takers = methods_where(lambda s: s.optimiser_steps)
            raise ValueError(f"steps/lr are only used by methods {' and '.join(map(repr, takers))}, not {self.method!r}")

    def estimator_options(self) -> dict[str, Any]:
        """The constructor arguments of the method's estimator that this configuration sets:
        the shared ones (``R``, ``lam``, ``random_state``; ``n_factors`` where the estimator
        has it; ``max_iter`` when set), the OGI step where the method takes it, ``lr`` where τ
        counts optimiser steps, and the method's own options (those not None)."""
        spec = get_method(self.method)
        opts: dict[str, Any] = {"R": self.R, "lam": self.lam, "random_state": self.random_state}
        if "n_factors" in spec.parameters():
            opts["n_factors"] = self.n_factors
        if self.max_iter is not None:
            opts["max_iter"] = self.max_iter
        if spec.ogi_step:
            anneal, anneal_after = self.schedule()
            opts.update(beta=self.beta, ortho=self.ortho, anneal=anneal, anneal_after=anneal_after)
        if spec.optimiser_steps and self.lr is not None:
            opts["lr"] = self.lr
        values = self.option_values(spec)
        opts.update({o.estimator_arg: values[o.name] for o in spec.options if values[o.name] is not None})
        return opts


#: Estimator settings recorded in the features' ``extra["fit"]`` whatever the method (those it has),
#: besides the OGI step, ``lr`` and the method's own options marked ``record``.
_RECORDED = ("max_iter", "tol", "ortho_iters")


def _recorded(spec: MethodSpec) -> set[str]:
    """The estimator settings of ``spec``'s method that ``extra["fit"]`` records."""
    return {*_RECORDED, *(_STEP_FIELDS if spec.ogi_step else ()), *(("lr",) if spec.optimiser_steps else ()),
            *(o.estimator_arg for o in spec.options if o.record)}


def check_contrast_prompts(method: str, contrast_prompts: Sequence[PromptLike] | None) -> None:
    """The methods that need the contrast set B (:attr:`MethodSpec.contrast`) get one; every other
    method refuses one."""
    takers = methods_where(lambda s: s.contrast)
    if get_method(method).contrast:
        if not contrast_prompts:
            raise ValueError(f"method {method!r} needs a contrast prompt set B (--contrast-prompts FILE)")
    elif contrast_prompts is not None:
        raise ValueError(f"contrast prompts are only used by {describe_methods(takers)}, not {method!r}")


def check_base_model(method: str, has_base_model: bool) -> None:
    """The methods that need the base model (:attr:`MethodSpec.base_model`) get one; every other
    method refuses one."""
    takers = methods_where(lambda s: s.base_model)
    if get_method(method).base_model:
        if not has_base_model:
            raise ValueError(f"method {method!r} needs the base model the fine-tune came from (--base-model M)")
    elif has_base_model:
        raise ValueError(f"a base model is only used by {describe_methods(takers)}, not {method!r}")


def check_two_maps_differ(method: str, prompts: Sequence[PromptLike] | None = None,
                          contrast_prompts: Sequence[PromptLike] | None = None, *, model: Any = None,
                          base_model: Any = None, contrast_source: str = "--contrast-prompts") -> None:
    """Refuse a fit on two maps that are equal, where that shows without running them: a method
    with a contrast set B given the same prompts on both sides, one with a base model given the
    model as its own base (the same object, or the same path). Every feature would be zero (the
    two-map fit itself probes the maps too, :func:`melbo.fit.two_map.two_map_dct`)."""
    import json

    spec = get_method(method)
    if spec.contrast and prompts is not None and contrast_prompts is not None:
        def key(ps: Sequence[PromptLike]) -> set[str]:
            return {json.dumps(p, sort_keys=True, default=str) for p in ps}

        if key(prompts) == key(contrast_prompts):
            raise UserError(f"the two maps are equal: {contrast_source} holds the same prompts as --prompts, so Δ_A = Δ_B, "
                            "their contrast is zero and so would be every feature; give a contrast set B of other prompts")
    if spec.base_model and model is not None and base_model is not None:
        same = model is base_model
        if isinstance(model, str | os.PathLike) and isinstance(base_model, str | os.PathLike):
            a, b = Path(model).expanduser(), Path(base_model).expanduser()
            same = os.fspath(model) == os.fspath(base_model) or (a.exists() and b.exists() and a.resolve() == b.resolve())
        if same:
            raise UserError(f"the two maps are equal: --base-model {str(base_model)!r} is the model itself, so Δ_fine = "
                            "Δ_base, their difference is zero and so would be every feature; give the model it was "
                            "fine-tuned from")


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
    distributed: bool = False,
) -> Features:
    """Fit features and (if ``out`` is given) save them there with per-iteration checkpoints.

    The method's estimator comes from the registry (:mod:`melbo.methods`) and is fitted on
    the causal map of ``prompts`` exactly as from Python: the same ``random_state`` gives
    the same factors. ``contrast_prompts`` (the set B) is required by the methods whose spec
    says ``contrast`` and refused by the others; so is ``base_model`` (the model ``model`` was
    fine-tuned from; Δ_base is built on the same tokens, layers and positions) by those that
    say ``base_model``. Iterative methods get a checkpoint after every iteration (resumable);
    every method uses R (given, else calibrated).

    ``distributed=True``, called on every rank of an initialised ``torch.distributed`` process
    group (each with its own copy of the model, the same prompts and ``cfg``): the factors are
    sharded over the ranks (:func:`melbo.jobs.distributed.distributed_fit`) and every rank
    returns the same features; only rank 0 reads and writes ``out`` (the checkpoint it resumes
    from is broadcast), so the other ranks need not see the same disk.
    """
    from melbo.jobs.distributed import distributed_fit, from_rank0, process_world

    rank = process_world()[1] if distributed else 0
    on_rank0: Callable[[Callable[[], Any]], Any] = from_rank0 if distributed else (lambda fn: fn())
    cfg.validate()
    check_contrast_prompts(cfg.method, contrast_prompts)
    check_base_model(cfg.method, base_model is not None)
    check_two_maps_differ(cfg.method, prompts, contrast_prompts, model=model, base_model=base_model)
    spec = get_method(cfg.method)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        def prepare(out_dir: Path = out_dir) -> None:
            check_output(out_dir, flag="--out", writer="melbo train", ours=features_dir, directory=True, force=force,
                         resume=resume, resume_file=f"{CHECKPOINT}/state.json")
            if force and not resume:  # an earlier run's checkpoint is no start for this one
                shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)

        on_rank0(prepare)
    delta = TransformerCausalMap(
        model, prompts, cfg.source_layer, cfg.target_layer, tokenizer=tokenizer,
        positions=cfg.positions, chat=cfg.chat, system_prompt=cfg.system_prompt, compile=cfg.compile,
    )
    fp = model_fingerprint(model)
    meta: dict[str, Any] = {"config": cfg.as_record(), "model": fp}
    if base_model is not None:
        meta["base_model"] = model_fingerprint(base_model)
    options = cfg.estimator_options()
    tau = cfg.resolved_max_iter()
    start_it = 0
    history0: list[float] = []
    if resume and out_dir is not None:
        def read(out_dir: Path = out_dir) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
            return read_checkpoint(out_dir, cfg)

        state, tensors = on_rank0(read)
        if state.get("model") != fp or state.get("base_model") != meta.get("base_model"):
            raise ValueError(
                "the checkpoint was made with a different configuration or model; "
                f"checkpoint model: {state.get('model')}, now: {fp}"
            )
        options["init"] = (tensors["U"].to(delta.device, delta.dtype), tensors["V"].to(delta.device, delta.dtype))
        start_it, history0, options["R"] = int(state["iteration"]), list(state.get("history", state.get("objective", []))), float(state["R"])
        _check_R(model, tokenizer, prompts, cfg, options["R"], f"R {options['R']:g} of the checkpoint in {str(out_dir / CHECKPOINT)!r}")
        logger.info("resuming from iteration %d of %s", start_it, tau)
        if spec.ogi_step:
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
        if out_dir is not None and not last and rank == 0:
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
    if spec.contrast and contrast_prompts is not None:
        options["contrast_prompts"] = list(contrast_prompts)
    if spec.base_model:
        options["base_model"] = base_model
    est = spec.make(**options)
    try:
        if distributed:
            est = distributed_fit(est, delta)
        else:
            est.fit(delta)
    finally:
        if bar is not None:
            bar.close()
    cal = est.calibration_
    # how the factors were fitted, as the estimator took it (its JSON-able settings; not the callback)
    fit_settings = {f.name: getattr(est, f.name) for f in dataclasses.fields(est)
                    if f.name in _recorded(spec) and isinstance(getattr(est, f.name), int | float | str | bool | None)}
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
        def save(out_dir: Path = out_dir) -> None:
            feats.save(out_dir, overwrite=force or resume)
            shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)

        on_rank0(save)
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
    from melbo.steering.interventions import check_steering_norm

    check_steering_norm(model, tokenizer, list(prompts)[:16], cfg.source_layer, R, chat=cfg.chat,
                        system_prompt=cfg.system_prompt, what=what,
                        fix="give a smaller --R (or calibrate it with --lam), or start over (--force)")


def _baseline_extra(cfg: TrainConfig, contrast_prompts: Sequence[PromptLike] | None) -> dict[str, Any]:
    """What the method records into the features' ``extra``: the contrast set's hash and size where
    it takes one, and its spec's own :attr:`~melbo.methods.MethodSpec.extra`."""
    spec = get_method(cfg.method)
    out: dict[str, Any] = {}
    if spec.contrast and contrast_prompts:
        out.update(contrast_prompts_hash=prompts_hash(list(contrast_prompts)), n_contrast_prompts=len(contrast_prompts))
    if spec.extra is not None:
        out.update(spec.extra(cfg.option_values(spec)))
    return out
