"""``melbo`` command line: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger("melbo")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma-3-270m", help="HF id or local dir, a .gguf file, or 'gemma-3-270m' (packaged)")
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, … (default: cpu)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code (off by default)")


def cmd_demo(args: argparse.Namespace) -> int:
    from melbo.demo import run_demo

    result = run_demo(
        model=args.model,
        source_layer=args.source_layer,
        target_layer=args.target_layer,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )
    out = sys.stdout
    out.write("Layer map\n")
    for k, v in result["layer_map"].items():
        out.write(f"  {k:>12}: {v}\n")
    out.write(f"\nCausal map Δ: {json.dumps(result['causal_map'])}\n")
    out.write(f"Model loaded in {result['load_seconds']:.1f} s; unsteered run cached in {result['capture_seconds']:.2f} s\n\n")
    out.write("  R        mean ‖Δ(Rv)‖   mean ‖R·J(0)v‖   E(R) (non-linear share)\n")
    for row in result["evaluation"]:
        out.write(f"  {row['R']:<8.3g} {row['delta_norm']:<14.4g} {row['linear_norm']:<16.4g} {row['E']:.3f}\n")
    out.write(f"\n({result['n_directions']} random unit directions; Δ + J(0)v in {result['eval_seconds']:.2f} s)\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from melbo import __version__

    parser = argparse.ArgumentParser(prog="melbo", description="Mechanistically eliciting latent behaviours: deep causal transcoders.")
    parser.add_argument("--version", action="version", version=f"melbo {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load the default model, show its layer map and evaluate Δ")
    _add_model_args(demo)
    demo.add_argument("--source-layer", type=int, default=4)
    demo.add_argument("--target-layer", type=int, default=10)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        if args.verbose > 1:
            raise
        parser.exit(2, f"melbo {args.command}: error: {err}\n")
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
