"""`pybench merge`: join the run folders of `run --shard` into one run."""

from __future__ import annotations

import argparse
import sys

from pybench.cli._common import COMMANDS, EXIT_OK, UsageError


def main(args: argparse.Namespace) -> int:
    from pybench.bench import shard

    try:
        res = shard.merge(args.shards, args.out, require_complete=args.require_complete)
    except (shard.MergeError, ValueError) as e:
        raise UsageError(str(e)) from None
    for w in res.warnings:
        print(f"pybench merge: warning: {w}", file=sys.stderr)
    print(res.summary())
    return EXIT_OK


@COMMANDS.register("merge")
def add(sub: argparse._SubParsersAction) -> None:
    mg = sub.add_parser("merge", help="join the run folders of `run --shard` into one run",
                        description="Join shard run folders of one suite into one run folder (refuses shards of "
                        "different suites and cells configured differently).")
    mg.add_argument("shards", nargs="+", help="the shards' run folders")
    mg.add_argument("--out", required=True, help="the merged run folder (new)")
    mg.add_argument("--require-complete", action="store_true", help="fail if some cell of the suite has no record")
    mg.set_defaults(func=main)
