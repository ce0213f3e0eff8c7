"""The ``pybench`` command: a thin shell over the library.

Exit codes: 0 success; 1 the command ran but something it checks failed (a cell failed in ``run``, a regression
in ``check``, a benchmark target missed with ``ops-bench --strict``); 2 bad usage or bad input (argparse's
convention: an unknown option, a malformed suite file, a run folder that is not there).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pybench.cli._common import COMMANDS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]

# one module per command, in the order `pybench --help` lists them; each registers its parser in COMMANDS
_COMMAND_MODULES = ("run", "merge", "report", "compare", "check", "prune", "lut", "profile", "reproduce",
                    "ops_bench", "zoo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pybench", description=__doc__.splitlines()[0],
                                     epilog="exit codes: 0 ok; 1 a check failed or some cells failed; 2 bad usage or "
                                     "input. Start with: pybench run suites/smoke.toml && pybench report results/smoke")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"pybench.cli.{name}")
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pybench`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        print("pybench: --repeats must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:  # one line: a message that quotes another tool's (torch.load's) keeps to it
        print(f"pybench {args.command}: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pybench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
