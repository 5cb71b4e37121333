"""Calibrating the steering norm R (``method.md`` §3, "Calibrating R").

    E(R) = sqrt( mean_c ‖Δ(R v_c) − R J(0) v_c‖² / ‖R J(0) v_c‖² )

is the relative size of the non-linear part of Δ along random unit directions v_c; R is
the root of E(R) = λ. J(0) v_c does not depend on R, so the JVPs are computed once and
every evaluation of E costs one batched forward pass of ``n_cal`` points.

The root is bracketed in log R (widening the bracket geometrically until E − λ changes
sign; where E > λ at both ends of the initial bracket, first a log grid inside it looks for
an R with E < λ — rounding noise in Δ, e.g. from bf16 matmuls, makes E large at tiny R too) and refined with the Illinois variant of regula falsi on log E − log λ, which keeps
the bracket and converges superlinearly — no scipy needed. (log E is close to linear in
log R — E ∝ R where the quadratic term dominates — whereas E itself can span many orders
of magnitude over the bracket, e.g. exponentially for an exponential Δ, which stalls
regula falsi on E − λ for dozens of evaluations.)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from melbo.errors import check_lam, warn_renamed
from melbo.fit._common import (
    RandomState,
    check_delta,
    check_positive_int,
    make_generator,
    normalize_columns,
    randn,
)
from melbo.maps.protocol import CausalMap

__all__ = ["CalibrationError", "CalibrationResult", "calibrate_R", "nonlinearity_ratio"]

logger = logging.getLogger(__name__)

_UNSET: Any = object()

# E(R) of a transformer levels off for large R (Δ(Rv) grows like R again through the residual
# stream): when widening the bracket upwards changes E by less than this factor this many times
# in a row, no larger R will reach λ (see melbo.errors.MAX_LAM for measured plateaus).
_FLAT_RATIO = 1.02
_FLAT_WIDENINGS = 2
# Interior points of the initial bracket tried when E(R) > λ at both ends (see calibrate_R).
_GRID = 8


class CalibrationError(ValueError):
    """E(R) = λ has no root in the widened bracket (e.g. Δ is linear, or J(0) v = 0)."""


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of :func:`calibrate_R`.

    Attributes
    ----------
    R : float
        The calibrated steering norm.
    error : float
        E(R) at the returned R.
    lam : float
        The target λ.
    history : tuple of (R, E(R)) pairs
        Every evaluation, in order.
    """

    R: float
    error: float
    lam: float
    history: tuple[tuple[float, float], ...]

    @property
    def n_evals(self) -> int:
        """Number of evaluations of E (batched forward passes)."""
        return len(self.history)


def nonlinearity_ratio(delta: CausalMap, R: float, V: Tensor, JV: Tensor) -> float:
    """E(R) for unit directions V (d, n) with precomputed JV = J(0) V (d, n).

    Returns ``inf`` when Δ(R V) is not finite (overflow counts as "very non-linear").
    """
    D = delta.value(R * V)  # (d, n)
    num = (D - R * JV).square().sum(dim=0)  # (n,)
    den = (R * JV).square().sum(dim=0)  # (n,)
    e = math.sqrt(float((num / den).mean()))
    return e if math.isfinite(e) else math.inf


def _fmt(history: list[tuple[float, float]]) -> str:
    return ", ".join(f"E({r:.4g})={e:.4g}" for r, e in history)


def calibrate_R(
    delta: CausalMap,
    lam: float = 0.5,
    n_cal: int = 30,
    random_state: RandomState = 0,
    bracket: tuple[float, float] = (1e-3, 1e2),
    *,
    widen: float = 10.0,
    max_widen: int = 8,
    rtol: float = 1e-4,
    max_evals: int = 60,
    n_dirs: int | None = None,
    seed: Any = _UNSET,
) -> CalibrationResult:
    """Find R with E(R) = λ.

    Parameters
    ----------
    delta : CausalMap
    lam : float
        Target relative size λ of the non-linear part, 0 < λ < 1 (0.5 in the publication; the
        rule is :func:`melbo.errors.check_lam`, which says why λ ≥ 1 is out of reach).
    n_cal : int
        Number n_cal of random unit directions v_c (≥ 1; 30 in the publication).
    random_state : int, torch.Generator or None
        Randomness of the directions (drawn on the CPU in float64, then cast/moved).
    bracket : (float, float)
        Initial 0 < R_lo < R_hi. Widened by ``widen``× at the end that does not yet
        straddle λ, at most ``max_widen`` times.
    rtol : float
        Stop when the bracket is narrower than a factor 1 + rtol, or |E − λ| ≤ rtol·λ.
    max_evals : int
        Hard cap on evaluations of E.
    n_dirs, seed
        Deprecated names of ``n_cal`` and ``random_state`` (a :class:`DeprecationWarning`).

    Returns
    -------
    CalibrationResult

    Raises
    ------
    CalibrationError
        If J(0) v_c = 0 for some direction, or no sign change of E − λ was found (also early:
        when E(R) levels off below λ while R grows, two widenings in a row changing E by
        < 2 %); the message quotes every (R, E(R)) tried.
    ValueError
        For invalid arguments.
    """
    if n_dirs is not None:
        warn_renamed("calibrate_R(n_dirs=...)", "n_cal=")
        n_cal = n_dirs
    if seed is not _UNSET:
        warn_renamed("calibrate_R(seed=...)", "random_state=")
        random_state = seed
    delta = check_delta(delta)
    lam = check_lam("lam", lam)  # the one λ rule, as train, discover and the CLI check it
    n_cal = check_positive_int("n_cal", n_cal)
    lo, hi = (float(x) for x in bracket)
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"bracket must satisfy 0 < lo < hi < inf, got {bracket}")
    if not widen > 1:
        raise ValueError(f"widen must be > 1, got {widen}")
    check_positive_int("max_widen", max_widen, minimum=0)
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    check_positive_int("max_evals", max_evals, minimum=2)

    V = normalize_columns(randn(delta.d_model, n_cal, make_generator(random_state), delta))  # (d, n)
    JV = delta.jvp0(V)  # (d, n), independent of R
    jnorm = JV.norm(dim=0)
    if not bool((jnorm > 0).all()) or not bool(jnorm.isfinite().all()):
        raise CalibrationError(
            f"J(0) v_c vanishes or is not finite for some calibration direction "
            f"(norms min={float(jnorm.min()):.3g}, max={float(jnorm.max()):.3g}); E(R) is undefined"
        )

    history: list[tuple[float, float]] = []

    def f(R: float) -> float:
        e = nonlinearity_ratio(delta, R, V, JV)
        history.append((R, e))
        logger.debug("calibrate_R: E(%.6g) = %.6g", R, e)
        return (math.log(e) if e > 0 else -math.inf) - math.log(lam)  # same sign as e - lam

    f_lo, f_hi = f(lo), f(hi)
    if f_lo > 0 and f_hi > 0:
        # Both ends too non-linear. With half-precision matmuls Δ carries rounding noise of a
        # fixed size, so E(R) ≈ noise / ‖R J v‖ is large at small R too: E is U-shaped, and the
        # root wanted is where the real non-linearity takes over, above the U's bottom. Look for
        # the bottom on a log grid; with none below λ, widen as for a map that is non-linear
        # everywhere.
        for k in range(1, _GRID):
            r = lo * (hi / lo) ** (k / _GRID)
            fr = f(r)
            if fr < 0:
                lo, f_lo = r, fr
                break
    n_widen = n_flat = 0
    while f_lo != 0 and f_hi != 0 and (f_lo > 0) == (f_hi > 0):
        if n_flat >= _FLAT_WIDENINGS:
            e_top = history[-1][1]
            raise CalibrationError(
                f"E(R) levels off at {e_top:.4g} for large R, below lam = {lam} (it changed by < "
                f"{_FLAT_RATIO - 1:.0%} over the last {_FLAT_WIDENINGS} {widen:g}x widenings), so E(R) = lam has no "
                f"root; choose lam below {e_top:.3g}. Tried: {_fmt(history)}"
            )
        if n_widen >= max_widen:
            raise CalibrationError(
                f"E(R) = lam = {lam} has no root between R = {min(r for r, _ in history):.4g} and "
                f"{max(r for r, _ in history):.4g} (E - lam does not change sign; a (nearly) linear Δ "
                f"never reaches lam). Tried: {_fmt(history)}"
            )
        n_widen += 1
        if f_lo > 0:  # too non-linear already at lo: look at smaller R
            hi, f_hi = lo, f_lo
            lo = lo / widen
            f_lo = f(lo)
        else:  # not non-linear enough at hi: look at larger R
            lo, f_lo = hi, f_hi
            hi = hi * widen
            f_hi = f(hi)
            n_flat = n_flat + 1 if abs(f_hi - f_lo) < math.log(_FLAT_RATIO) else 0
    if f_lo == 0:
        return CalibrationResult(lo, lam, lam, tuple(history))
    if f_hi == 0:
        return CalibrationResult(hi, lam, lam, tuple(history))

    # Illinois regula falsi in x = log R on f = log E - log lam, a bracket with f(a) f(b) < 0.
    a, b = math.log(lo), math.log(hi)
    fa, fb = f_lo, f_hi
    fx = min(fa, fb, key=abs)
    while len(history) < max_evals:
        if abs(b - a) < math.log1p(rtol) or abs(fx) <= math.log1p(rtol):
            break
        if math.isinf(fa) or math.isinf(fb):
            x = 0.5 * (a + b)  # bisect while an end overflowed
        else:
            x = (a * fb - b * fa) / (fb - fa)
            if not min(a, b) < x < max(a, b):
                x = 0.5 * (a + b)
        fx = f(math.exp(x))
        if fx == 0:
            break
        if (fx > 0) != (fb > 0):
            a, fa = b, fb
        else:
            fa *= 0.5  # Illinois: the retained end's value is halved
        b, fb = x, fx
    else:
        logger.warning("calibrate_R: stopped after max_evals=%d evaluations", max_evals)
    R_best, e_best = min(history, key=lambda re: abs(re[1] - lam))
    logger.info("calibrate_R: R = %.6g, E(R) = %.6g (lam = %g, %d evaluations)", R_best, e_best, lam, len(history))
    return CalibrationResult(R_best, e_best, lam, tuple(history))
