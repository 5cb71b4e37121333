"""User mistakes: the exception the command line reports as one line with exit status 2, and the
torch-free checks of numbers that raise it.

:class:`UserError` is a :class:`ValueError`, so library callers that catch ``ValueError`` keep
working. The CLI (:func:`melbo.cli.main`) treats it, any other ``ValueError`` and the
file-system errors of bad paths (``FileNotFoundError``, ``FileExistsError``,
``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError``) and a missing optional
package (``ImportError``, whose message names the ``pip install``) as the user's to fix:
``melbo CMD: error: <one line>``, exit status 2. Anything else is a bug: a short message, exit
status 1 and a hint to rerun with ``-v`` for the traceback.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

__all__ = ["MAX_LAM", "MAX_MU", "MAX_SCALE", "MAX_SEED", "ModelMismatchError", "UserError", "check_R", "check_count", "check_finite", "check_lam",
           "check_conversation", "check_mu", "check_prompts", "check_scale", "check_seed", "warn_renamed"]

MAX_SCALE = 100.0
"""Largest |scale| (a multiple of the features' R) a command steers at. Steering at 100 R is
already far outside what a fit is calibrated for; ``melbo discover --scales`` has the same bound."""

MAX_LAM = 1.0
"""λ must lie in (0, MAX_LAM). Calibration solves E(R) = λ for the relative size E of Δ's non-linear
part (:mod:`melbo.fit.calibrate`). E rises from 0 at small R and levels off at large R, where Δ(Rv)
grows like R again, at a value the model and layers set: measured on Gemma-3-270M (8 random
directions, 4 prompts) layers 4 → 10: E(10) = 0.43, E(100) = 0.99, E(10³) = 1.02, E(10⁴…10⁸) ≈ 0.99–1.00;
layers 2 → 8 and 8 → 14 level off at 0.999 too (largest E seen 1.01); on tiny random models (Llama,
Gemma-3, GPT-2, Qwen2) at 0.3–1.0. So λ ≥ 1 is out of reach (``--lam 1e6`` used to widen the bracket for minutes before
failing); below 1, :func:`~melbo.fit.calibrate.calibrate_R` stops as soon as E levels off under λ."""


MAX_SEED = 2**32 - 1
"""Largest seed (``--seed``, ``random_state``): seeds are integers in 0 … 2³² − 1, which every
generator melbo seeds (torch's, Python's, numpy's) takes; ``--seed 10**23`` used to fail deep
in torch with "Overflow when unpacking long long"."""

MAX_MU = 1e3
"""Largest penalty weight μ of the two-map methods (contrastive, model-diff). μ = 1 already asks
for more effect on A than on B; at μ = 10³ the penalty outweighs any A-effect by 10⁶ in the
norm penalty's squares, and a far larger μ overflows (``--mu 1e308`` made the SVD fail)."""


class UserError(ValueError):
    """A mistake in what the user gave (a value, a path, a file); the message names the value,
    the file and what is valid."""


class ModelMismatchError(UserError):
    """Something fitted on one model (features, a monitor, an adapter) is applied to another:
    :func:`melbo.models.fingerprint.check_same_model`, the one same-model check, raises it."""


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """A :class:`DeprecationWarning` that ``old`` is an old name of ``new`` (both as the user writes
    them), pointing at the caller of the function that calls this (``stacklevel`` 3)."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=stacklevel)


def check_finite(name: str, value: float) -> float:
    """``value`` as a float, or :class:`UserError` for NaN, ±inf or a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} {value!r}: must be a number")
    if not math.isfinite(value):
        raise UserError(f"{name} {value!r}: must be a finite number (not nan or ±inf)")
    return float(value)


def check_R(R: object, name: str = "R") -> float:
    """The steering norm R as a float: a finite number > 0 (else :class:`UserError`). The one R
    check: fits, :class:`~melbo.fit.result.FitResult`, :class:`~melbo.features.Features` and the
    baselines all use it."""
    if isinstance(R, bool) or not isinstance(R, int | float) or not math.isfinite(R) or R <= 0:
        raise UserError(f"{name} must be a finite number > 0, got {R!r}")
    return float(R)


def check_anneal_after(value: object, anneal: float | None) -> int:
    """Iterations at the full β before OGI's damping schedule starts: an integer ≥ 0, and > 0
    only with a schedule (``anneal``) to start."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"anneal_after={value!r}: must be an integer ≥ 0 (iterations)")
    if value > 0 and anneal is None:
        raise UserError(f"anneal_after={value!r} needs anneal (the schedule to start after it), got anneal=None")
    return value


def check_count(name: str, value: int, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` if it is an int ≥ ``minimum`` (and ≤ ``maximum``, if given), else :class:`UserError`."""
    valid = f"an integer ≥ {minimum}" if maximum is None else f"an integer in {minimum} … {maximum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} {value!r}: must be {valid}")
    if value < minimum or (maximum is not None and value > maximum):
        raise UserError(f"{name} {value}: must be {valid}")
    return value


def check_seed(name: str, value: int) -> int:
    """A seed: an integer in 0 … :data:`MAX_SEED`."""
    return check_count(name, value, 0, MAX_SEED)


def check_mu(name: str, value: float) -> float:
    """The two-map penalty weight μ: finite, 0 ≤ μ ≤ :data:`MAX_MU`."""
    v = check_finite(name, value)
    if not 0 <= v <= MAX_MU:
        raise UserError(f"{name} {value!r}: must be a number in 0 … {MAX_MU:g} (the weight of the penalised map; "
                        "1 asks for more effect on A than on B)")
    return v


def check_scale(name: str, value: float, *, zero: bool = False, bound: float | None = MAX_SCALE) -> float:
    """A steering scale (a multiple of R) as a float: the one scale check.

    Always a finite number; either sign (features are signed: −v steers otherwise than v).
    The commands, exports and :class:`~melbo.jobs.discover_config.DiscoverConfig` take the defaults:
    non-zero (a scale of 0 steers nothing) with |scale| ≤ ``bound`` = :data:`MAX_SCALE`.
    ``zero=True`` admits 0 where it means "unsteered" (the explorer's baseline, or a library
    call that adds nothing); ``bound=None`` admits any finite size (the library's steering
    functions, which the commands bound)."""
    v = check_finite(name, value)
    if (v == 0 and not zero) or (bound is not None and abs(v) > bound):
        size = "" if bound is None else f" with |scale| ≤ {bound:g}"
        raise UserError(f"{name} {value!r}: must be {'a multiple of R' if zero else 'non-zero'}{size}"
                        + ("" if zero else " (a multiple of R)"))
    return v


def check_anneal(value: object) -> float | None:
    """OGI's damping schedule β_k = β/(1 + k/anneal): None, or a finite number of iterations > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise UserError(f"anneal={value!r}: must be a finite number > 0 (iterations), or None")
    return float(value)


def check_lam(name: str, value: float) -> float:
    """The calibration target λ: finite, 0 < λ < :data:`MAX_LAM`."""
    v = check_finite(name, value)
    if not 0 < v < MAX_LAM:
        raise UserError(f"{name} {value!r}: must be in (0, {MAX_LAM:g}); the non-linear share E(R) that calibration "
                        f"matches levels off near or below {MAX_LAM:g} for large R (0.5 is the usual choice)")
    return v


def check_conversation(conv: object, where: str) -> list[dict[str, str]]:
    """A chat conversation as a list: a non-empty list (or tuple) of messages, each a dict with a
    string ``role`` and a string ``content``; else :class:`UserError` naming ``where``."""
    if not isinstance(conv, list | tuple) or not conv:
        raise UserError(f"{where} is {str(conv)[:60]!r}, neither a prompt string nor a chat conversation "
                        "(a non-empty list of {'role': ..., 'content': ...} messages)")
    for j, m in enumerate(conv):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}, message {j} ({str(m)[:60]}) needs a string 'role' and a string 'content'")
    return list(conv)


def check_prompts(prompts: object, source: str = "the prompt list", *, empty_ok: bool = False) -> list[Any]:
    """``prompts`` as a list: the one prompt-list check of every entry point that takes prompts
    (:func:`melbo.prompts.build_prompts` and the functions that read activations or steer
    without it, the prompt files, the explorer).

    A sequence — not one string, which would be a list of one-character prompts (a
    :class:`TypeError`) — of at least one prompt (unless ``empty_ok``), each a string that is
    not blank or a chat conversation (:func:`check_conversation`); else :class:`UserError`
    naming ``source`` and the first bad prompt's index."""
    if isinstance(prompts, str | bytes):
        raise TypeError(f"{source} must be a list of prompts, not a single string")
    if isinstance(prompts, dict) or not hasattr(prompts, "__iter__"):
        raise TypeError(f"{source} must be a list of prompts, got {type(prompts).__name__}")
    out = list(prompts)  # type: ignore[call-overload]
    if not out and not empty_ok:
        raise UserError(f"{source} contains no prompts (it is empty): give at least one prompt")
    for i, p in enumerate(out):
        if isinstance(p, str):
            if not p.strip():
                raise UserError(f"{source}: prompt {i} is {'an empty string' if not p else f'blank ({p!r})'}")
        else:
            check_conversation(p, f"{source}: prompt {i}")
    return out
