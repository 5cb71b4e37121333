"""``melbo organism build``: fine-tune a model organism with a known hidden behaviour."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from melbo.cli._common import (
    _check_out_dir_path,
)


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
