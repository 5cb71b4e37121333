"""``melbo monitor``: score prompts with a deployment monitor."""

from __future__ import annotations

import argparse
import json

from melbo.cli._common import (
    Subcommands,
    _add_model_args,
    _add_prompt_args,
    _chat,
    _check_features_fit,
    _check_out_file,
    _count,
    _fpr,
    _load,
    _need_dir,
    _need_file,
    _say,
)

MONITOR_DETECTORS = ("features", "mahalanobis")  # = melbo.jobs.monitor.DETECTORS
MONITOR_VIEWS = ("source", "target", "both")  # = melbo.jobs.monitor.VIEWS
MONITOR_REDUCES = ("max", "rms")  # = melbo.jobs.monitor.REDUCES


def cmd_monitor(args: argparse.Namespace) -> int:
    _need_dir(args.dir)
    _need_file("--clean", args.clean)
    _need_file("--prompts", args.prompts)
    if args.save is not None and not args.save.endswith(".safetensors"):
        raise ValueError(f"--save {args.save!r}: a monitor is saved as a .safetensors file")
    from melbo.store.outputs import monitor_file, monitor_scores_file

    inputs = [("DIR", args.dir), ("--model", args.model), ("--clean", args.clean), ("--prompts", args.prompts)]
    _check_out_file("--out", args.out, writer="melbo monitor", ours=monitor_scores_file, force=args.force,
                    inputs=inputs, others=[("--save", args.save)])
    _check_out_file("--save", args.save, writer="melbo monitor", ours=monitor_file, force=args.force,
                    inputs=inputs, others=[("--out", args.out)])
    from melbo.prompts.files import read_prompts

    clean = read_prompts(args.clean, column=args.column)
    prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts)
    if len(clean) < 2 * args.folds:
        raise ValueError(f"--clean {args.clean!r} has {len(clean)} prompts; {args.folds}-fold calibration needs ≥ {2 * args.folds}")

    from melbo.features import Features

    feats = Features.load(args.dir)
    if args.detector == "features" and args.view != "source" and feats.U is None:
        raise ValueError(f"{args.dir!r} holds {feats.method!r} features without target directions: use --view source")
    _check_features_fit(feats, args.model, target=True)
    model, tok = _load(args)

    from melbo.jobs.monitor import Monitor
    from melbo.store.io import atomic_write_text

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


def add_parsers(sub: Subcommands) -> None:
    """``melbo monitor``: its arguments."""
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
    mo.add_argument("--force", action="store_true", help="replace melbo's own earlier --out/--save; accept features from another model")
    mo.set_defaults(func=cmd_monitor)
