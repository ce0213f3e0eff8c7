"""`pybench reproduce NAME`: one of the seed papers' experiments at CPU scale, over seeds, beside the paper."""

from __future__ import annotations

import argparse

from pybench.cli._common import COMMANDS, EXIT_OK, UsageError


def main(args: argparse.Namespace) -> int:
    from pybench.bench import reproduce

    if args.name not in reproduce.names():
        raise UsageError(f"unknown reproduction {args.name!r}; known: {', '.join(reproduce.names())}")
    if args.seeds < 3:
        raise UsageError(f"--seeds must be >= 3 (a mean +- std and a paired test over seeds need them), got "
                         f"{args.seeds}")
    try:
        rep = reproduce.run(args.name, seeds=args.seeds, out=args.out, progress=not args.no_progress)
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot write there ({e.strerror or e})") from None
    print(rep.markdown())
    print(f"wrote {args.out}/{args.name}.md and {args.name}.json")
    return EXIT_OK


@COMMANDS.register("reproduce")
def add(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reproduce", help="run a seed paper's experiment at CPU scale, beside the paper's numbers",
                       description="Run one of the seed papers' experiments at CPU scale over several seeds and "
                       "write its table (NAME.md, NAME.json) beside the paper's figures.")
    r.add_argument("name", help="the reproduction: xor (Sándor et al. Table 1)")
    r.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1 (default 10; at least 3)")
    r.add_argument("--out", default="results/reproductions", help="folder for NAME.md / NAME.json "
                   "(default results/reproductions)")
    r.add_argument("--no-progress", action="store_true", help="no per-seed progress lines")
    r.set_defaults(func=main)
