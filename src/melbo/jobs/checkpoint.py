"""The checkpoint of an iterative fit (``melbo train``, ``melbo discover``): iteration, R, history,
configuration and the factors U and V, written as one unit after every iteration and read back,
checked, before a resume — without a model, so that the command line refuses a bad one before
loading any."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from melbo.errors import UserError, check_R
from melbo.store.io import read_file_set, write_file_set

if TYPE_CHECKING:
    from melbo.jobs.train import TrainConfig

__all__ = ["CHECKPOINT", "read_checkpoint", "write_checkpoint"]

CHECKPOINT = "checkpoint"


def write_checkpoint(out: Path, it: int, U: torch.Tensor, V: torch.Tensor, R: float, history: list[float], meta: dict[str, Any]) -> None:
    """Iteration ``it``'s factors and state as one unit (:func:`melbo.store.io.write_file_set`): a kill
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
        now = cfg.as_record()
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
