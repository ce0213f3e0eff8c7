"""`pybench zoo`: the model names pybench.zoo.create accepts."""

from __future__ import annotations

import argparse

from pybench.cli._common import COMMANDS, EXIT_OK


def main(args: argparse.Namespace) -> int:
    from pybench import zoo

    for name in zoo.names():
        print(name)
    return EXIT_OK


@COMMANDS.register("zoo")
def add(sub: argparse._SubParsersAction) -> None:
    z = sub.add_parser("zoo", help="list the model names pybench.zoo.create accepts",
                       description="List the model names pybench.zoo.create accepts.")
    z.set_defaults(func=main)
