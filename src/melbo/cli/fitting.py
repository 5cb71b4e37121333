"""``melbo demo``, ``melbo discover`` and ``melbo train``: the commands that fit features."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from melbo.cli._common import (
    _chat,
    _check_factors,
    _check_layers,
    _check_max_new_tokens,
    _check_model_source,
    _check_out_dir_path,
    _check_out_file,
    _check_single_tokens,
    _load,
    _method_option_values,
    _model_layers,
    _peek_tokenizer,
    _say,
    _step_flags_given,
    _step_options,
)


def cmd_demo(args: argparse.Namespace) -> int:
    _check_out_dir_path("--out", args.out)
    _check_out_file("-o/--report", args.report)
    from melbo.discover_config import DiscoverConfig

    base = args.organism if args.organism is not None else args.model
    DiscoverConfig(source_layer=args.source_layer, target_layer=args.target_layer).validate(_model_layers(base))
    _check_factors(args.factors, "exponential", base)
    _check_max_new_tokens(args.max_new_tokens, base)
    from melbo.demo import run_demo

    run_demo(
        model=args.model, organism=args.organism, source_layer=args.source_layer, target_layer=args.target_layer,
        n_factors=args.factors, scales=tuple(args.scales), n_train=args.n_train, n_eval=args.n_eval,
        n_random=args.random, max_new_tokens=args.max_new_tokens, organism_steps=args.organism_steps, seed=args.seed,
        top=args.top, out=args.out, report=args.report, force=args.force, progress=not args.no_progress, say=_say,
        shifts=not args.phrases_only, **_step_options(args),
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
        source_layer=args.source_layer, target_layer=args.target_layer, n_factors=args.factors,
        n_train=args.n_train, n_eval=args.n_eval, scales=tuple(args.scales), max_new_tokens=args.max_new_tokens,
        n_random=args.random, lam=args.lam, R=args.R, random_state=args.seed, chat=_chat(args), batch_size=args.batch_size,
        shifts=not args.phrases_only, **_step_options(args),
    )
    cfg.validate(_model_layers(args.model_pos))
    out = Path(args.out)
    check_out_dir(out, force=args.force, resume=args.resume,
                  inputs=[("MODEL", args.model_pos), ("--prompts", args.prompts), ("--heldout", args.heldout)])
    _check_factors(cfg.n_factors, "exponential", args.model_pos)
    _check_max_new_tokens(cfg.max_new_tokens, args.model_pos)
    if args.resume:
        from melbo.discover import check_resumable

        check_resumable(out, cfg)
    need = cfg.n_train + (0 if heldout is not None else 2)
    if len(prompts) < need:
        raise ValueError(f"{args.prompts}: {len(prompts)} prompts; --n-train {cfg.n_train} needs at least {need} "
                         "(the training prompts, then held-out ones unless --heldout FILE is given)")
    tok = _peek_tokenizer(args.model_pos, args.trust_remote_code)
    if tok is not None:  # the held-out prompts and --max-new-tokens fit the context: with the tokenizer alone
        from melbo.discover import check_context
        from melbo.models.peek import peek_context

        eval_p = heldout[: cfg.n_eval] if heldout is not None else prompts[cfg.n_train : cfg.n_train + cfg.n_eval]
        check_context(tok, eval_p, cfg, peek_context(args.model_pos))
    args.model = args.model_pos
    model, tok = _load(args)
    res = discover(model, tok, prompts, cfg, out, heldout=heldout, force=args.force, resume=args.resume,
                   progress=not args.no_progress, search=args.search, say=_say)
    path = write_discovery_report(res, out / "report.html", title=f"melbo discover — {args.model_pos}")
    _say(f"\n{len(res.groups)} behaviour(s) found; top {min(args.top, len(res.groups))}:")
    for g in res.groups[: args.top]:
        rh = "" if g.random_hits is None else f", random vectors saying it: {g.random_hits}/{g.n_random}"
        _say(f"  {g.rank}. {g.signature!r}: {g.best.rate:.0%} of held-out prompts, feature {g.best.vector} at "
             f"{g.best.scale:g}·R ({g.n_features} feature(s){rh})")
    _say(f"Report: {path}  Behaviours: {out / 'behaviours.json'}  Features: {out / 'features'}")
    return 0




def cmd_train(args: argparse.Namespace) -> int:
    _check_layers(args.source_layer, args.target_layer, _model_layers(args.model), args.model)
    from melbo.io import check_output
    from melbo.outputs import features_dir

    check_output(args.out, flag="--out", writer="melbo train", ours=features_dir, directory=True, force=args.force,
                 resume=args.resume, resume_file="checkpoint/state.json",  # = melbo.train.CHECKPOINT, which imports torch
                 inputs=[("--model", args.model), ("--prompts", args.prompts),
                         ("--contrast-prompts", args.contrast_prompts), ("--base-model", args.base_model)])
    from melbo.prompt_files import read_prompts

    prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts)
    contrast = read_prompts(args.contrast_prompts, column=args.column, limit=args.n_prompts) if args.contrast_prompts else None

    from melbo.methods import get_method, method_options, methods_where
    from melbo.train import (
        TrainConfig,
        check_base_model,
        check_contrast_prompts,
        check_two_maps_differ,
        read_checkpoint,
        train,
    )

    spec = get_method(args.method)
    if spec.ogi_step:
        step = _step_options(args)
    elif _step_flags_given(args):
        raise ValueError(f"{'/'.join(_step_flags_given(args))}: the OGI step of methods "
                         f"{', '.join(methods_where(lambda s: s.ogi_step))}, not {args.method!r}")
    else:
        step = {"max_iter": args.max_iter}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = _method_option_values(args)
    defaults = {n: o.default for n, (o, _) in method_options().items()}
    cfg = TrainConfig(
        source_layer=args.source_layer, target_layer=args.target_layer, method=args.method,
        n_factors=args.factors, lam=args.lam, R=args.R, random_state=args.seed,
        positions=args.positions, chat=_chat(args), system_prompt=args.system_prompt, lr=args.lr, compile=args.compile,
        method_options={n: v for n, v in values.items() if n not in fields and v != defaults[n]},
        **{n: v for n, v in values.items() if n in fields}, **step,
    )
    cfg.validate()
    _check_factors(cfg.n_factors, cfg.method, args.model)
    check_contrast_prompts(cfg.method, contrast)
    check_base_model(cfg.method, args.base_model is not None)
    check_two_maps_differ(cfg.method, prompts, contrast, model=args.model, base_model=args.base_model,
                          contrast_source=f"--contrast-prompts {args.contrast_prompts!r}")
    if args.base_model is not None:
        _check_model_source("--base-model", args.base_model)
    own = cfg.option_values(spec)
    tokens = {o.name: own[o.name] for o in spec.options if o.single_token}
    if tokens:
        _check_single_tokens(args.model, args.trust_remote_code, **tokens)
    if args.resume:
        read_checkpoint(Path(args.out), cfg)  # its hash, values and configuration, before the model loads
    model, tok = _load(args)
    base = None
    if args.base_model is not None:
        from melbo.models.loading import load_model

        base, _ = load_model(args.base_model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    feats = train(model, tok, prompts, cfg, args.out, force=args.force, resume=args.resume, progress=not args.no_progress,
                  contrast_prompts=contrast, base_model=base)
    sys.stdout.write(
        f"{feats.n_factors} {feats.method} features, R = {feats.R:.4g}, layers {feats.source_layer}→{feats.target_layer}"
        f", final objective {feats.history[-1] if feats.history else float('nan'):.4g} → {args.out}\n"
    )
    return 0
