"""``melbo explore``: serve the interactive explorer of a features directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from melbo.cli._common import (
    Subcommands,
    _add_model_args,
    _chat,
    _count,
    _load,
    _need_dir,
    _need_file,
    _say,
)


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
    from melbo.store.cache import cache_dir

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
    if not args.host.strip():  # "" would listen on every interface
        raise ValueError(f"--host {args.host!r}: give an address of this machine (127.0.0.1, ::1, 0.0.0.0 for all)")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        sys.stderr.write(f"melbo explore needs the 'explore' extra ({err.name} is missing): "
                         "pip install 'melbo[explore]'\n")
        return 2
    from melbo.explore.server import allowed_hosts, check_exposure, open_socket, tls_context

    open_socket(args.host, args.port).close()  # a bad --host or a taken --port is refused before the model loads

    if args.keyfile is not None and args.certfile is None:
        raise ValueError(f"--keyfile {args.keyfile!r} needs --certfile (the certificate it belongs to)")
    if args.certfile is not None:
        tls_context(args.certfile, args.keyfile)  # a bad certificate or key: now, before the model loads
    check_exposure(args.host, tls=args.certfile is not None, insecure_http=args.insecure_http)
    allowed_hosts(args.host, args.port, args.allow_host)
    from melbo.explore.run import load_run
    from melbo.prompts.files import read_prompts

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
    serve(explorer, host=args.host, port=args.port, say=_say, certfile=args.certfile, keyfile=args.keyfile,
          insecure_http=args.insecure_http, allow_hosts=args.allow_host)
    return 0


def add_parsers(sub: Subcommands) -> None:
    """``melbo explore``: its arguments."""
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
    ex.set_defaults(func=cmd_explore)
