"""`pybench profile MODEL`: op-level profile, dense vs pruned."""

from __future__ import annotations

import argparse
import sys

from pybench.bench.config import PruneSettings
from pybench.cli._common import (
    COMMANDS,
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_model_args,
    input_size,
    model_of,
    prune_or_refuse,
)


def main(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure

    model, name = model_of(args)
    x = torch.randn(1, *input_size(args, name))
    pruned = prune_or_refuse(model, x, args.criterion, "one_shot", args.ratio, PruneSettings(calibration_batches=0))
    try:
        res = measure.profile(model, pruned, x, device=args.device, dtype=args.dtype, iters=args.iters,
                              out_dir=args.out, batch_size=args.batch_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if res.error:
        print(f"pybench profile: {res.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"# {args.model}: dense {res.dense_total_ms:.3f} ms vs pruned ({args.criterion} @ {args.ratio}) "
          f"{res.pruned_total_ms:.3f} ms per forward ({res.metric}), batch {args.batch_size}, {res.dtype}, "
          f"{res.device}")
    print(res.table(top=args.top))
    for label, path in res.traces.items():
        print(f"trace {label}: {path}")
    return EXIT_OK


@COMMANDS.register("profile")
def add(sub: argparse._SubParsersAction) -> None:
    pf = sub.add_parser("profile", help="op-level profile of a model, dense vs pruned",
                        description="torch.profiler time per op type, dense vs pruned, and chrome traces.")
    add_model_args(pf)
    pf.add_argument("--device", default="cpu")
    pf.add_argument("--dtype", default="float32")
    pf.add_argument("--batch-size", type=int, default=1)
    pf.add_argument("--iters", type=int, default=10)
    pf.add_argument("--top", type=int, default=20, help="rows shown")
    pf.add_argument("--out", help="folder for the chrome traces")
    pf.set_defaults(func=main)
