"""`pybench report`: the Markdown and HTML report of run folders."""

from __future__ import annotations

import argparse
import sys

from pybench.cli._common import COMMANDS, EXIT_OK, UsageError


def main(args: argparse.Namespace) -> int:
    import warnings

    from pybench.bench import report
    from pybench.bench.results import CorruptRecordsWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CorruptRecordsWarning)
            md, html = report.write(args.runs, out_dir=args.out, title=args.title)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot write the report there ({e.strerror or e})") from None
    for w in caught:
        if issubclass(w.category, CorruptRecordsWarning):
            print(f"pybench report: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if not args.quiet:
        print(md.read_text())
    print(f"wrote {md} and {html}", file=sys.stderr)
    return EXIT_OK


@COMMANDS.register("report")
def add(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="Markdown + HTML report of one or more run folders",
                         description="Per model, pruned vs dense: latency speedup, memory saved, MACs and params "
                         "removed, accuracy change; realised vs theoretical speedup and accuracy vs MACs kept plots.")
    rep.add_argument("runs", nargs="+", help="run folders (or a folder holding several)")
    rep.add_argument("--out", help="where report.md and report.html go (default: the first run folder)")
    rep.add_argument("--title", help="report title")
    rep.add_argument("--quiet", action="store_true", help="do not print the Markdown")
    rep.set_defaults(func=main)
