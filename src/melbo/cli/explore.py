"""``melbo explore``: serve the interactive explorer of a features directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from melbo.cli._common import (
    _chat,
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
