"""``melbo`` command line: thin argument parsing over the library.

Start-up is kept cheap: this package imports no torch and no heavy melbo module at import
time. Parsing, ``--help`` and argument errors (bad choices, missing arguments, missing
input files) are answered before a command imports what it needs; ``--method``'s choices
come from the torch-free registry :mod:`melbo.methods`.

The package: :mod:`melbo.cli.app` (the top-level parser and :func:`main`), :mod:`melbo.cli._common`
(shared checks and argument groups), and one module per group of commands, each adding its
subcommands' parsers (``add_parsers``) and running them (``cmd_*``).
"""

from melbo.cli._common import ONE_SHOT_MODES, ORGANISM_KINDS, PENALTIES
from melbo.cli.app import USER_ERRORS, build_parser, main
from melbo.cli.monitor import MONITOR_DETECTORS, MONITOR_REDUCES, MONITOR_VIEWS

__all__ = [
    "MONITOR_DETECTORS", "MONITOR_REDUCES", "MONITOR_VIEWS", "ONE_SHOT_MODES", "ORGANISM_KINDS", "PENALTIES",
    "USER_ERRORS", "build_parser", "main",
]
