"""The training runner behind ``melbo train``: prompts → Δ → R → fit → Features on disk,
with a checkpoint after every iteration and resume.

Kept apart from argument parsing so it can be driven from Python and tested directly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from melbo.baselines.one_shot import MODES as ONE_SHOT_MODES
from melbo.causal_map import TransformerCausalMap
from melbo.features import Features, prompts_hash
from melbo.fingerprint import model_fingerprint
from melbo.io import atomic_write, atomic_write_text, check_out_dir
from melbo.prompts import PromptLike

logger = logging.getLogger(__name__)

METHODS = ("exponential", "quadratic", "linear", "linear-projected", "melbo-v1", "one-shot", "mean-diff", "random")
BASELINES = ("melbo-v1", "one-shot", "mean-diff", "random")  # melbo.baselines; steered at the same R
CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    """Everything that defines a fit (recorded in the output's ``config.json``)."""

    source_layer: int
    target_layer: int
    method: str = "exponential"
    n_factors: int = 256
    iters: int = 10
    lam: float = 0.5
    R: float | None = None
    seed: int = 0
    positions: int = 3
    chat: bool | str = "auto"
    system_prompt: str | None = None
    beta: float = 1.0
    init: str = "projected"
    sequential: bool = False  # exponential: G_V from the updated U (melbo.fit.exponential)
    orient: bool = False  # exponential: flip each factor to the side of larger ‖Δ_R(±v)‖
    ortho: str = "qr"  # exponential: "qr" (published) or "polar" (symmetric) orthogonalisation
    extra: dict[str, Any] = field(default_factory=dict)
    # baselines (melbo.baselines): one-shot's example, optimiser settings of melbo-v1 / one-shot
    completion: str | None = None  # one-shot: promoted (suppressed in mode "suppress")
    suppress: str | None = None  # one-shot, mode "mixed": the completion to suppress
    one_shot_mode: str = "promote"
    steps: int | None = None  # melbo-v1: steps per vector (default 300); one-shot: steps (100)
    lr: float | None = None  # melbo-v1: 1e-3; one-shot: 0.01
    orthogonal: bool = True  # melbo-v1: each vector orthogonal to the earlier ones
    compile: bool = False  # torch.compile the slice layers (pays on long fits; see TransformerCausalMap)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: choose one of {', '.join(METHODS)}")
        for name in ("n_factors", "iters", "positions"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer ≥ 1")
        if self.R is not None and not (self.R > 0 and torch.isfinite(torch.tensor(self.R))):
            raise ValueError(f"R={self.R!r}: must be a finite number > 0")
        if not self.lam > 0:
            raise ValueError(f"lam={self.lam!r}: must be > 0")
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
        if self.method != "exponential" and (self.sequential or self.orient or self.ortho != "qr"):
            raise ValueError(f"sequential/orient/ortho are options of method 'exponential', not {self.method!r}")
        if self.ortho not in ("qr", "polar"):
            raise ValueError(f"ortho={self.ortho!r}: choose one of qr, polar")
        if self.steps is not None and (not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1):
            raise ValueError(f"steps={self.steps!r}: must be an integer ≥ 1")
        if self.lr is not None and not (self.lr > 0 and torch.isfinite(torch.tensor(self.lr))):
            raise ValueError(f"lr={self.lr!r}: must be a finite number > 0")
        if self.method not in ("melbo-v1", "one-shot") and (self.steps is not None or self.lr is not None):
            raise ValueError(f"steps/lr are only used by methods 'melbo-v1' and 'one-shot', not {self.method!r}")


def check_contrast_prompts(method: str, contrast_prompts: Sequence[PromptLike] | None) -> None:
    """mean-diff needs the contrast set B; every other method refuses one."""
    if method == "mean-diff" and not contrast_prompts:
        raise ValueError("method 'mean-diff' needs a contrast prompt set B (--contrast-prompts FILE)")
    if method != "mean-diff" and contrast_prompts is not None:
        raise ValueError(f"contrast prompts are only used by method 'mean-diff', not {method!r}")


def _write_checkpoint(out: Path, it: int, U: torch.Tensor, V: torch.Tensor, R: float, objective: list[float], meta: dict[str, Any]) -> None:
    ck = out / CHECKPOINT
    ck.mkdir(parents=True, exist_ok=True)
    tensors = {"U": U.detach().cpu().contiguous(), "V": V.detach().cpu().contiguous()}
    atomic_write(ck / "state.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_text(ck / "state.json", json.dumps({"iteration": it, "R": R, "objective": objective, **meta}, indent=1))


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
) -> Features:
    """Fit features and (if ``out`` is given) save them there with per-iteration checkpoints.

    ``contrast_prompts`` (the set B) is required by ``mean-diff`` and refused otherwise.
    Baselines get no checkpoints; like the DCT methods they use R (given, else calibrated):
    melbo-v1 and random vectors at norm R, mean-diff steered at R, one-shot capped at R.
    """
    from melbo.fit.calibrate import calibrate_R

    cfg.validate()
    check_contrast_prompts(cfg.method, contrast_prompts)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        check_out_dir(out_dir, writer="melbo train", force=force, resume=resume, resume_file=f"{CHECKPOINT}/state.json")
    delta = TransformerCausalMap(
        model, prompts, cfg.source_layer, cfg.target_layer, tokenizer=tokenizer,
        positions=cfg.positions, chat=cfg.chat, system_prompt=cfg.system_prompt, compile=cfg.compile,
    )
    fp = model_fingerprint(model)
    meta = {"config": asdict(cfg), "model": fp}
    init: Any = cfg.init
    start_it = 0
    objective0: list[float] = []
    R = cfg.R
    calibration: dict[str, Any] = {}
    if resume and out_dir is not None:
        state = json.loads((out_dir / CHECKPOINT / "state.json").read_text())
        # compile changes speed, not results: a fit may be resumed with or without it
        same = {k: v for k, v in (state.get("config") or {}).items() if k != "compile"} == \
            {k: v for k, v in meta["config"].items() if k != "compile"}
        if not same or state.get("model") != fp:
            raise ValueError(
                "the checkpoint was made with a different configuration or model; "
                f"checkpoint config: {state.get('config')}, now: {meta['config']}"
            )
        tensors = load_file(str(out_dir / CHECKPOINT / "state.safetensors"))
        init = (tensors["U"].to(delta.device, delta.dtype), tensors["V"].to(delta.device, delta.dtype))
        start_it, objective0, R = int(state["iteration"]), list(state["objective"]), float(state["R"])
        logger.info("resuming from iteration %d of %d", start_it, cfg.iters)
    if R is None:
        cal = calibrate_R(delta, lam=cfg.lam, seed=cfg.seed)
        R = float(cal.R)
        calibration = {"E": cal.error, "history": [list(h) for h in cal.history]}
    remaining = cfg.iters - start_it
    bar = None
    if progress and cfg.method in ("exponential", "quadratic") and remaining > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iters, initial=start_it, desc=f"{cfg.method} DCT", unit="it")

    def callback(i: int, st: Any) -> bool:
        it = start_it + len(objective_seen) + 1
        if out_dir is not None:
            _write_checkpoint(out_dir, it, st.U, st.V, float(R), objective0 + [*objective_seen, st.objective], meta)
        objective_seen.append(float(st.objective))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objective=f"{st.objective:.4g}")
        if on_iteration is not None:
            on_iteration(it, float(st.objective))
        return False

    objective_seen: list[float] = []
    try:
        result = _fit(delta, cfg, R, init, max(remaining, 1) if cfg.method in ("exponential", "quadratic") else 0, callback,
                      tokenizer=tokenizer, prompts=prompts, contrast_prompts=contrast_prompts)
    finally:
        if bar is not None:
            bar.close()
    feats = Features.from_fit(
        result, source_layer=cfg.source_layer, target_layer=cfg.target_layer, model=fp,
        prompts=list(prompts), positions=cfg.positions,
        extra={"seed": cfg.seed, "lam": cfg.lam, "calibrated": cfg.R is None, "n_prompts": len(prompts), **({"calibration": calibration} if calibration else {}), **_baseline_extra(cfg, contrast_prompts), **cfg.extra},
    )
    if objective0:
        feats = Features(**{**feats.__dict__, "objective": objective0 + list(feats.objective)})
    if out_dir is not None:
        feats.save(out_dir, overwrite=force or resume)
        shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
    return feats


def _baseline_extra(cfg: TrainConfig, contrast_prompts: Sequence[PromptLike] | None) -> dict[str, Any]:
    if cfg.method == "mean-diff" and contrast_prompts:
        return {"contrast_prompts_hash": prompts_hash(list(contrast_prompts)), "n_contrast_prompts": len(contrast_prompts)}
    if cfg.method == "one-shot":
        return {"completion": cfg.completion, "suppress": cfg.suppress, "one_shot_mode": cfg.one_shot_mode}
    if cfg.method == "melbo-v1":
        return {"orthogonal": cfg.orthogonal}
    return {}


def _fit_baseline(delta: TransformerCausalMap, cfg: TrainConfig, R: float, tokenizer: Any, prompts: Sequence[PromptLike],
                  contrast_prompts: Sequence[PromptLike] | None) -> Any:
    opt: dict[str, Any] = {k: v for k, v in (("n_steps", cfg.steps), ("lr", cfg.lr)) if v is not None}
    if cfg.method == "melbo-v1":
        from melbo.baselines.melbo_v1 import melbo_v1

        return melbo_v1(delta, cfg.n_factors, R=R, orthogonal=cfg.orthogonal, random_state=cfg.seed, **opt)
    if cfg.method == "random":
        from melbo.baselines.random_vectors import random_vectors

        return random_vectors(delta, cfg.n_factors, R=R, random_state=cfg.seed)
    if cfg.method == "mean-diff":
        from melbo.baselines.mean_diff import mean_difference

        assert contrast_prompts is not None  # checked in train()
        return mean_difference(delta.model, prompts, contrast_prompts, layer=cfg.source_layer, tokenizer=tokenizer,
                               chat=cfg.chat, system_prompt=cfg.system_prompt, R=R, delta=delta)  # type: ignore[arg-type]
    from melbo.baselines.one_shot import one_shot

    return one_shot(delta.model, tokenizer, prompts[0], str(cfg.completion), layer=cfg.source_layer,
                    mode=cfg.one_shot_mode, suppress=cfg.suppress, max_norm=R, chat=cfg.chat,  # type: ignore[arg-type]
                    system_prompt=cfg.system_prompt, random_state=cfg.seed, delta=delta, **opt)


def _fit(delta: TransformerCausalMap, cfg: TrainConfig, R: float, init: Any, iters: int, callback: Callable[[int, Any], bool],
         *, tokenizer: Any = None, prompts: Sequence[PromptLike] = (), contrast_prompts: Sequence[PromptLike] | None = None) -> Any:
    if cfg.method in BASELINES:
        return _fit_baseline(delta, cfg, R, tokenizer, prompts, contrast_prompts)
    if cfg.method == "exponential":
        from melbo.fit.exponential import exponential_dct

        return exponential_dct(
            delta, cfg.n_factors, R=R, max_iter=iters, beta=cfg.beta, init=init,
            random_state=cfg.seed, callback=callback, sequential=cfg.sequential, orient=cfg.orient, ortho=cfg.ortho,
        )
    if cfg.method == "quadratic":
        from melbo.fit.quadratic import quadratic_dct

        return quadratic_dct(delta, cfg.n_factors, R=R, max_iter=iters, init=init, random_state=cfg.seed, callback=callback)
    from melbo.fit.linear import linear_dct

    which = "full" if cfg.method == "linear" else "projected"
    return linear_dct(delta, cfg.n_factors, R=R, method=which, random_state=cfg.seed)
