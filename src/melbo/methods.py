"""The method registry: every fitting method melbo knows, registered once.

Importing this module is cheap (no torch): the command line reads the names, capabilities and
options from here (``melbo train``'s ``--method``, its method options and their checks). Each
entry names its estimator class by import path; the class is imported only when asked for
(:func:`estimator_class`, :func:`make_estimator`).

A method is one estimator module and one :func:`register` call. Its :class:`MethodSpec` says,
as data, everything :mod:`melbo.jobs.train` and ``melbo train`` need: whether it needs a contrast
prompt set B or a base model, whether it takes the OGI step (``beta``/``ortho``/``anneal``),
whether τ counts optimiser steps (it then takes ``lr``), its own options
(:class:`MethodOption`: default, check, command-line flag), the rules between them and what it
records into the features. Nothing else names a method.

Every estimator follows one contract (:mod:`melbo.fit.estimator`): the constructor stores
its arguments, ``fit(delta)`` takes one :class:`~melbo.maps.protocol.CausalMap`, the fitted
attributes are the same (``U_``, ``V_``, ``alpha_``, ``R_``, ``history_``, ``scores_``,
``n_iter_``, ``converged_``, ``result_``) and ``to_features()`` gives
:class:`melbo.features.Features` whose ``method`` is the registry name. The meaning of U, α,
``history`` and ``scores`` per method is the table in :mod:`melbo.fit.result`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MethodOption",
    "MethodSpec",
    "ONE_SHOT_MODES",
    "PENALTIES",
    "REGISTRY",
    "describe_methods",
    "estimator_class",
    "get_method",
    "make_estimator",
    "method_names",
    "method_options",
    "methods_where",
    "register",
    "registered",
    "unregister",
]

# Choices whose home modules import torch, copied so that the registry (and so the command line)
# stays torch-free; tests/test_cli_start.py checks each equals its source.
ONE_SHOT_MODES = ("promote", "suppress", "mixed")  # = melbo.baselines.one_shot.MODES
PENALTIES = ("norm", "difference")  # = melbo.fit.two_map.PENALTIES


def _resolve(ref: Any) -> Any:
    """A callable given as itself or as ``"module:name"`` (imported when first used)."""
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)
    return ref


@dataclass(frozen=True)
class MethodOption:
    """One option of a method (beyond the settings every method shares).

    name : its name in :class:`melbo.jobs.train.TrainConfig` (a field there, else a key of
        ``TrainConfig.method_options``) and the command line's ``dest``
    help : one line for ``--help`` (the methods that take it are prefixed)
    default : the value that means "not set" (None: the estimator's own default; a method that
        does not take the option refuses any other value)
    type : parses the command-line text; ``bool`` makes the flag a switch
    choices : the valid values (None: any of ``type``)
    check : ``(name, value) -> value`` raising ValueError on a bad value, or ``"module:function"``
    arg : the estimator's argument (default: ``name``)
    flag : the command-line flag: ``""`` gives ``--name-with-dashes``, None none (Python only)
    record : recorded among the fit's settings (the features' ``extra["fit"]``)
    single_token : a token string that must be one token of the model's tokenizer (checked
        before the model loads)
    """

    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    choices: tuple[Any, ...] | None = None
    check: Callable[[str, Any], Any] | str | None = None
    arg: str | None = None
    flag: str | None = ""
    record: bool = True
    single_token: bool = False

    @property
    def estimator_arg(self) -> str:
        return self.arg or self.name

    @property
    def cli_flag(self) -> str | None:
        return None if self.flag is None else self.flag or "--" + self.name.replace("_", "-")

    def check_function(self) -> Callable[[str, Any], Any] | None:
        """:attr:`check` as a callable (imports its module when given as ``"module:function"``)."""
        return _resolve(self.check) if self.check is not None else None

    def validate(self, value: Any) -> None:
        """Raise ValueError naming the option when ``value`` is not valid for it."""
        if value is None and self.default is None:
            return
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name}={value!r}: must be True or False")
        elif self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{self.name}={value!r}: choose one of {', '.join(map(str, self.choices))}")
        elif self.type is str and not isinstance(value, str):
            raise ValueError(f"{self.name}={value!r}: must be text")
        check = self.check_function()
        if check is not None:
            check(self.name, value)


@dataclass(frozen=True)
class MethodSpec:
    """One method.

    name : the name used everywhere (``melbo train --method``, ``Features.method``, reports)
    estimator : ``"module:Class"`` of its estimator (imported lazily)
    summary : one line for ``--help`` and reports
    iterative : whether it runs iterations (gets checkpoints and a per-iteration history)
    has_targets : whether it learns target-layer directions U (False: U is None)
    fixed : constructor arguments that make the estimator this method (e.g. the linear
        estimator's ``method="full"``)
    factors_per_dim : the most features it fits per residual-stream dimension (``n_factors ≤
        factors_per_dim × d_model``: 1 where V is orthogonalised, 2 for the ±v pairs of the
        quadratic and linear fits), or None (no bound); the command line checks it against the
        model's ``config.json`` before loading the model
    contrast : it needs a contrast prompt set B (``contrast_prompts``; every other method refuses one)
    base_model : it needs the base model a fine-tune came from (``base_model``; refused elsewhere)
    ogi_step : it takes the OGI step (``beta``, ``ortho``, ``anneal``, ``anneal_after``,
        :mod:`melbo.fit.step`; every other method refuses a step other than the default)
    optimiser_steps : τ (``max_iter``) counts optimiser steps: it takes ``lr`` (and the
        deprecated ``steps``)
    options : its own options (:class:`MethodOption`); setting one for another method is an error
    check : rules between its option values (``{name: value}``), raising ValueError
    extra : what it records into the features' ``extra`` from its option values (``{name: value}``)
    """

    name: str
    estimator: str
    summary: str
    iterative: bool = False
    has_targets: bool = True
    fixed: Mapping[str, Any] = field(default_factory=dict)
    factors_per_dim: int | None = None
    contrast: bool = False
    base_model: bool = False
    ogi_step: bool = False
    optimiser_steps: bool = False
    options: tuple[MethodOption, ...] = ()
    check: Callable[[Mapping[str, Any]], None] | None = None
    extra: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None

    def estimator_class(self) -> Any:
        """Its estimator class (imports its module)."""
        module, _, cls = self.estimator.partition(":")
        return getattr(importlib.import_module(module), cls)

    def parameters(self) -> tuple[str, ...]:
        """The arguments its estimator's constructor takes (those in :attr:`fixed` aside)."""
        return tuple(p for p in inspect.signature(self.estimator_class()).parameters if p not in self.fixed)

    def make(self, **options: Any) -> Any:
        """The estimator of this method, built from ``options`` and :attr:`fixed`.

        Raises
        ------
        ValueError
            naming the options its estimator does not take, and those it does.
        """
        accepted = self.parameters()
        bad = [k for k in options if k not in accepted]
        if bad:
            raise ValueError(f"method {self.name!r} takes no option {', '.join(map(repr, bad))}; "
                             f"its options: {', '.join(accepted)}")
        return self.estimator_class()(**options, **self.fixed)


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (a name may be registered once; an option name means one option: a
    method that shares one with another must give the same :class:`MethodOption`)."""
    if spec.name in REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    known = method_options()
    for opt in spec.options:
        if opt.name in known and known[opt.name][0] != opt:
            raise ValueError(f"method {spec.name!r}: option {opt.name!r} differs from the one of methods "
                             f"{', '.join(known[opt.name][1])} of that name")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> MethodSpec:
    """Remove a method (e.g. one a test registered); a ValueError naming the valid ones if unknown."""
    spec = get_method(name)
    del REGISTRY[name]
    return spec


@contextmanager
def registered(spec: MethodSpec) -> Iterator[MethodSpec]:
    """``spec`` registered for the ``with`` block, unregistered after."""
    register(spec)
    try:
        yield spec
    finally:
        REGISTRY.pop(spec.name, None)


def method_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(REGISTRY)


def methods_where(predicate: Callable[[MethodSpec], bool]) -> tuple[str, ...]:
    """The names of the methods whose spec satisfies ``predicate``, in registration order."""
    return tuple(n for n, s in REGISTRY.items() if predicate(s))


def method_options() -> dict[str, tuple[MethodOption, tuple[str, ...]]]:
    """Every method option by name, with the methods that take it (registration order)."""
    out: dict[str, tuple[MethodOption, tuple[str, ...]]] = {}
    for spec in REGISTRY.values():
        for opt in spec.options:
            first, takers = out.get(opt.name, (opt, ()))
            out[opt.name] = (first, (*takers, spec.name))
    return out


def describe_methods(names: tuple[str, ...] | list[str]) -> str:
    """``method 'x'`` for one name, ``methods a, b`` for several (for messages)."""
    return f"method {names[0]!r}" if len(names) == 1 else f"methods {', '.join(names)}"


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``; a ValueError naming the valid methods otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"method={name!r}: choose one of {', '.join(REGISTRY)}") from None


def estimator_class(name: str) -> Any:
    """The estimator class of ``name`` (imports its module)."""
    return get_method(name).estimator_class()


def make_estimator(name: str, **options: Any) -> Any:
    """The estimator of method ``name`` built from ``options`` (:meth:`MethodSpec.make`: an
    option it does not take is a ValueError)."""
    return get_method(name).make(**options)


# ---------------------------------------------------------------- the built-in methods
# Options two methods share are one object (register checks that a name means one option).
_INIT = MethodOption("init", "initialisation of the factors: projected | random", default="projected")
_SEQUENTIAL = MethodOption("sequential", "G_V from the updated U (Gauss–Seidel)", default=False, type=bool)
_ORIENT = MethodOption("orient", "flip each factor to the side of larger ‖Δ_R(±v)‖", default=False, type=bool)
_MU = MethodOption("mu", "weight μ of the penalised map", default=1.0, type=float, check="melbo.errors:check_mu")
_PENALTY = MethodOption("penalty", "penalise ‖Δ_B‖ (norm; contrastive's default) or fit Δ_A − μΔ_B (difference; "
                        "model-diff's default)", choices=PENALTIES)


def _check_one_shot(o: Mapping[str, Any]) -> None:
    if not o["completion"]:
        raise ValueError("method 'one-shot' needs a completion (--completion TEXT)")
    if o["one_shot_mode"] == "mixed" and not o["suppress"]:
        raise ValueError("one-shot mode 'mixed' needs a completion to suppress (--suppress TEXT)")


for _spec in (
    MethodSpec("exponential", "melbo.fit.exponential:ExponentialDCT", "exponential DCT fitted by OGI", iterative=True,
               factors_per_dim=1, ogi_step=True, options=(_INIT, _SEQUENTIAL, _ORIENT)),
    MethodSpec("quadratic", "melbo.fit.quadratic:QuadraticDCT", "quadratic DCT fitted by ALS", iterative=True,
               factors_per_dim=2, options=(_INIT,)),
    MethodSpec("linear", "melbo.fit.linear:LinearDCT", "linear DCT: SVD of the full Jacobian", fixed={"method": "full"},
               factors_per_dim=2),
    MethodSpec("linear-projected", "melbo.fit.linear:LinearDCT", "linear DCT: SVD of the Jacobian projected on random directions",
               fixed={"method": "projected"}, factors_per_dim=2),
    MethodSpec("mean-diff", "melbo.baselines.mean_diff:MeanDifference", "difference of mean activations on two prompt sets",
               has_targets=False, contrast=True),
    MethodSpec("contrastive", "melbo.fit.two_map:ContrastiveDCT",
               "contrastive DCT: effect on the prompts, none on --contrast-prompts", iterative=True,
               factors_per_dim=1, contrast=True, ogi_step=True, options=(_INIT, _MU, _PENALTY)),
    MethodSpec("model-diff", "melbo.fit.two_map:ModelDiffDCT",
               "model-diff DCT: effect in the model (a fine-tune), none in --base-model", iterative=True,
               factors_per_dim=1, base_model=True, ogi_step=True, options=(_INIT, _MU, _PENALTY)),
    MethodSpec("melbo-v1", "melbo.baselines.melbo_v1:MelboV1", "original MELBO: maximise the target-layer change per vector",
               factors_per_dim=1, optimiser_steps=True,
               options=(MethodOption("orthogonal", "each vector orthogonal to the earlier ones", default=True, type=bool,
                                     flag=None),),
               extra=lambda o: {"orthogonal": o["orthogonal"]}),
    MethodSpec("one-shot", "melbo.baselines.one_shot:OneShotSteering", "one vector optimised on one (prompt, completion) example",
               has_targets=False, optimiser_steps=True,
               options=(MethodOption("completion", "the completion to promote (suppress in mode suppress); required",
                                     record=False),
                        MethodOption("suppress", "mode mixed: the completion to suppress", record=False),
                        MethodOption("one_shot_mode", "promote, suppress or both (mixed)", default="promote",
                                     choices=ONE_SHOT_MODES, arg="mode")),
               check=_check_one_shot,
               extra=lambda o: {"completion": o["completion"], "suppress": o["suppress"], "one_shot_mode": o["one_shot_mode"]}),
    MethodSpec("obprop", "melbo.baselines.obprop:ObservablePropagation",
               "gradient of logit(A) - logit(B) w.r.t. the source-layer residual stream (observable propagation)",
               has_targets=False,
               options=(MethodOption("token_a", "the observable is logit(A) − logit(B) at the first generated position",
                                     default="Sure", record=False, single_token=True),
                        MethodOption("token_b", "token B of the observable", default="Sorry", record=False,
                                     single_token=True)),
               extra=lambda o: {"observable": [o["token_a"], o["token_b"]]}),
    MethodSpec("random", "melbo.baselines.random_vectors:RandomVectors", "random unit vectors (the noise floor)"),
):
    register(_spec)
