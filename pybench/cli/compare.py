"""`pybench compare A B`: the same cells of two runs side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pybench.cli._common import COMMANDS, EXIT_OK, UsageError


def main(args: argparse.Namespace) -> int:
    from pybench.bench import compare

    try:
        res = compare.compare(args.a, args.b, labels=(args.label_a, args.label_b))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(res.markdown())
    if args.html:
        try:
            Path(args.html).write_text(res.html())
        except OSError as e:
            raise UsageError(f"--html {args.html}: cannot write the page there ({e.strerror or e})") from None
        print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK


@COMMANDS.register("compare")
def add(sub: argparse._SubParsersAction) -> None:
    cmp_ = sub.add_parser("compare", help="the same cells from two runs (e.g. two machines): ratio table",
                          description="Match cells by id and show B/A ratios of latency, throughput and memory.")
    cmp_.add_argument("a", help="run folder A (the reference)")
    cmp_.add_argument("b", help="run folder B")
    cmp_.add_argument("--label-a", default="A")
    cmp_.add_argument("--label-b", default="B")
    cmp_.add_argument("--html", metavar="FILE", help="also write an HTML page with the ratio plot")
    cmp_.set_defaults(func=main)
