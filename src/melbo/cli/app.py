"""The top-level parser and :func:`main`, the error boundary of the command line.

Each command module adds its own subcommands (``add_parsers``); this module fixes their order.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from melbo.cli import explore, features, fitting, monitor, organism
from melbo.cli._common import _setup_logging


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
    for command_module in (fitting, features, monitor, explore, organism):  # the order of `melbo --help`
        command_module.add_parsers(sub)
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
