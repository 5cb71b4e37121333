"""The OGI step of the exponential and two-map DCTs, defined once: the default every entry point
fits with (:data:`DEFAULT_STEP`) and the published one, a name away for reproduction.

A step is the iteration limit, the damping β, how V is orthogonalised and the damping schedule:
iteration k (from 0) mixes with β_k = β / (1 + max(0, k − anneal_after) / anneal) (a fixed β
without ``anneal``; :func:`damping`). Two are named (:data:`STEPS`):

* ``"annealed"``, the default: 20 iterations, β = 0.5 with polar (symmetric) orthogonalisation
  for 10, then annealed as β / (1 + j / 5). On Gemma the objective settles (< 1 % change per
  iteration at the end, the factors nearly stop) and it recovers every planted factor of
  ``bench/default_step.py`` within 20 iterations (README, "Does the fit settle?").
* ``"published"``: the publication's OGI, 10 iterations, β = 1, QR every iteration. It
  oscillates on Gemma (the median factor moves ~0.8 every iteration).

The estimators (:class:`~melbo.fit.ExponentialDCT`, :class:`~melbo.fit.ContrastiveDCT`,
:class:`~melbo.fit.ModelDiffDCT`), their fit functions, :class:`melbo.jobs.train.TrainConfig` and
:class:`melbo.jobs.discover_config.DiscoverConfig` take their defaults from :data:`DEFAULT_STEP`; the
command line (``melbo train``, ``discover``, ``demo``) takes ``--step NAME``. In Python::

    ExponentialDCT(64, **step_options("published"))          # the published step
    TrainConfig(4, 10, **step_options("published"))

This module imports no torch: the command line reads it for its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANNEALED",
    "DEFAULT_STEP",
    "PUBLISHED",
    "STEPS",
    "FitStep",
    "damping",
    "get_step",
    "resolve_anneal_after",
    "step_options",
]


@dataclass(frozen=True)
class FitStep:
    """One named OGI step (module docstring); :meth:`options` are the fit's keyword arguments."""

    name: str
    max_iter: int
    beta: float
    ortho: str
    anneal: float | None
    anneal_after: int

    def options(self) -> dict[str, Any]:
        """``max_iter``, ``beta``, ``ortho``, ``anneal`` and ``anneal_after``: the keyword
        arguments of the fit functions, estimators and configurations that make this step."""
        return {"max_iter": self.max_iter, "beta": self.beta, "ortho": self.ortho, "anneal": self.anneal,
                "anneal_after": self.anneal_after}


ANNEALED = FitStep("annealed", max_iter=20, beta=0.5, ortho="polar", anneal=5.0, anneal_after=10)
PUBLISHED = FitStep("published", max_iter=10, beta=1.0, ortho="qr", anneal=None, anneal_after=0)
#: The named steps, by name.
STEPS: dict[str, FitStep] = {s.name: s for s in (ANNEALED, PUBLISHED)}
#: The step every fit defaults to.
DEFAULT_STEP = ANNEALED


def get_step(name: object) -> FitStep:
    """The step called ``name``; a ValueError naming the valid ones otherwise."""
    if isinstance(name, str) and name in STEPS:
        return STEPS[name]
    raise ValueError(f"step={name!r}: choose one of {', '.join(STEPS)} (default {DEFAULT_STEP.name})")


def step_options(name: str) -> dict[str, Any]:
    """:meth:`FitStep.options` of the step called ``name`` (:func:`get_step`)."""
    return get_step(name).options()


def resolve_anneal_after(anneal: float | None, anneal_after: int | None) -> int:
    """An unset (None) ``anneal_after``: the default step's with a schedule, 0 for a fixed β;
    one that is set is kept (and refused without a schedule by the fit's validation)."""
    if anneal_after is not None:
        return anneal_after
    return DEFAULT_STEP.anneal_after if anneal is not None else 0


def damping(beta: float, iteration: int, anneal: float | None, anneal_after: int) -> float:
    """β_k of iteration ``iteration`` (from 0): β, or β / (1 + max(0, k − anneal_after) / anneal)."""
    if anneal is None:
        return beta
    return beta / (1.0 + max(0, iteration - anneal_after) / anneal)
