"""The commands over a features directory: ``inspect``, ``export``, ``rank``, ``steer``,
``analyze`` and ``report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from melbo.cli._common import (
    Subcommands,
    _add_score_args,
    _chat,
    _check_feature_index,
    _check_features_fit,
    _check_max_new_tokens,
    _check_out_file,
    _check_single_tokens,
    _check_steering,
    _count,
    _features_command,
    _finite,
    _load,
    _load_features,
    _need_dir,
    _need_file,
    _say,
    _scale,
)
from melbo.export import FORMATS as EXPORT_FORMATS
from melbo.export import format_names as export_format_names


def cmd_inspect(args: argparse.Namespace) -> int:
    feats = _load_features(args.dir)
    import torch

    info = {k: v for k, v in feats.to_config().items() if k not in ("objective",)}
    info["n_factors"] = feats.n_factors
    info["d_model"] = feats.d_model
    info["objective_first_last"] = [feats.history[0], feats.history[-1]] if feats.history else []
    top = torch.argsort(feats.alpha ** 2, descending=True)[: args.top].tolist()
    info["top_by_alpha"] = [{"feature": k, "alpha": float(feats.alpha[k])} for k in top]
    sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _need_dir(args.dir)
    out = Path(args.out)
    from melbo.export import export_features, get_format

    _check_out_file("-o/--out", out, writer="melbo export", ours=get_format(args.format).load_recogniser(),
                    force=args.force, inputs=[("DIR", args.dir)])

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
    from melbo.store.outputs import rank_file

    _check_out_file("--out", args.out, writer="melbo rank", ours=rank_file, reuse_own=True,
                    inputs=[("DIR", args.dir), ("--prompts", args.prompts), ("--model", args.model)])
    feats = _load_features(args.dir)
    import torch

    from melbo.evaluate.rank import rank_by_alpha, readout_scores

    if args.by == "alpha":
        order = rank_by_alpha(feats.alpha)
        scores = feats.alpha[order] ** 2
    else:
        from melbo.prompts.files import read_prompts

        _check_features_fit(feats, args.model)
        prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts)
        _check_single_tokens(args.model, args.trust_remote_code, token_a=args.token_a, token_b=args.token_b)
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
    _check_max_new_tokens(args.max_new_tokens, args.model)
    from melbo.generation import generate
    from melbo.steering.interventions import steer_features

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


# Choices of melbo.jobs.monitor (which imports torch), copied for --help; tests/test_cli_start.py checks them.


def cmd_analyze(args: argparse.Namespace) -> int:
    from melbo.prompts.files import read_prompts

    _need_dir(args.dir)
    out = Path(args.out) if args.out else Path(args.dir) / "analysis.json"
    from melbo.store.outputs import analysis_file

    _check_out_file("--out", out, writer="melbo analyze", ours=analysis_file, reuse_own=True,
                    inputs=[("DIR", args.dir), ("--prompts", args.prompts), ("--model", args.model)])
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
    apath = Path(args.analysis) if args.analysis else Path(args.dir) / "analysis.json"
    from melbo.store.outputs import report_file

    _check_out_file("-o/--out", out, writer="melbo report", ours=report_file, reuse_own=True,
                    inputs=[("DIR", args.dir), ("--prompts", args.prompts), ("--heldout", args.heldout),
                            ("--analysis", apath), ("--model", args.model)])
    feats = _load_features(args.dir)
    from melbo.evaluate.analysis import Analysis
    from melbo.prompts.files import read_prompts
    from melbo.report import make_report, write_report

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
        _check_max_new_tokens(args.max_new_tokens, args.model)
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


def add_parsers(sub: Subcommands) -> None:
    """``melbo inspect``, ``export``, ``rank``, ``steer``, ``analyze`` and ``report``: their arguments."""
    ins = sub.add_parser("inspect", help="summarise a features directory")
    ins.add_argument("dir")
    ins.add_argument("--top", type=_count(1), default=10)
    ins.set_defaults(func=cmd_inspect)

    ex = sub.add_parser("export", help="write features for another tool (llama.cpp control vector, …)")
    ex.add_argument("dir", help="a features directory")
    ex.add_argument("--feature", type=int, action="append", required=True,
                    help="feature index; repeat to sum several into one vector (as melbo steers them together)")
    ex.add_argument("--scale", type=_scale, default=1.0, help="write scale·R·v: scale 1 steers as melbo does at 1 (default 1)")
    ex.add_argument("--format", choices=export_format_names(), required=True,
                    help="; ".join(f"{n}: {EXPORT_FORMATS[n].summary}" for n in export_format_names()))
    ex.add_argument("-o", "--out", required=True, help="output file")
    ex.add_argument("--force", action="store_true", help="replace an earlier export at -o (never another file)")
    ex.set_defaults(func=cmd_export)

    rk = _features_command(sub, "rank", "rank features by alpha² or by a readout (logit A − logit B)")
    rk.add_argument("--by", choices=("alpha", "readout"), default="alpha")
    rk.add_argument("--prompts", default=None)
    rk.add_argument("--token-a", default="Sure")
    rk.add_argument("--token-b", default="Sorry")
    rk.add_argument("--scale", type=_scale, default=1.0, help="score at scale·R")
    rk.add_argument("--top", type=_count(1), default=20)
    rk.add_argument("--out", default=None, help="write the full ranking as JSON")
    rk.add_argument("--force", action="store_true", help="allow features from a different model")
    rk.set_defaults(func=cmd_rank)

    st = _features_command(sub, "steer", "steered vs unsteered completions for one feature")
    st.add_argument("--feature", type=_count(0), required=True)
    st.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    st.add_argument("--scale", type=_scale, default=1.0)
    st.add_argument("--max-new-tokens", type=_count(1), default=32)
    st.add_argument("--force", action="store_true", help="allow features from a different model")
    st.set_defaults(func=cmd_steer)

    an = _features_command(sub, "analyze", "rank features by exact jailbreak score; multiplicity, adding vs ablating (Tables 3–5)")
    _add_score_args(an)
    an.add_argument("--prompts", required=True, help="validation prompts (.txt, .json/.jsonl, .csv)")
    an.add_argument("--threshold", type=_finite, default=5.0, help="a feature counts if its mean score is above this")
    an.add_argument("--top", type=_count(1), default=10, help="features to list; also the set size if none is above the threshold")
    an.add_argument("--max-ablations", type=_count(1), default=None, help="ablate at most this many features individually")
    an.add_argument("--ablate-embedding", action="store_true", help="also ablate from the embedding")
    an.add_argument("--out", default=None, help="JSON output (default: DIR/analysis.json)")
    an.set_defaults(func=cmd_analyze)

    rp = _features_command(sub, "report", "write a self-contained HTML report of a features directory")
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
