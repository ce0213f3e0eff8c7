"""`pybench prune MODEL`: prune a model by a criterion and schedule, and save it."""

from __future__ import annotations

import argparse

from pybench.bench.config import PruneSettings
from pybench.cli._common import COMMANDS, EXIT_OK, UsageError, add_model_args, input_size, model_of, prune_or_refuse


def main(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure

    model, name = model_of(args)
    x = torch.randn(1, *input_size(args, name))
    settings = PruneSettings(scope=args.scope, round_to=args.round_to, ignore=tuple(args.ignore or ()),
                             calibration_batches=0)
    pruned = prune_or_refuse(model, x, args.criterion, args.schedule, args.ratio, settings, seed=args.seed)
    before, after = measure.flops(model, x), measure.flops(pruned, x)
    print(f"params {before.params:,} -> {after.params:,} ({after.params / before.params:.1%} kept); "
          f"MACs {before.total_macs:,} -> {after.total_macs:,} ({after.total_macs / before.total_macs:.1%} kept)")
    from pybench.bench.pruning import pins_of

    pins = pins_of(model, x)
    print(f"pinned: {pins['pinned']:,} of {pins['channels']:,} channels cannot be pruned"
          + (":" if pins["reasons"] else ""))
    for reason, n in pins["reasons"]:
        print(f"  {n:>7,}  {reason}")
    if args.output:
        import pybench as pb

        try:
            pb.save(pruned, args.output)
        except ValueError as e:
            raise UsageError(f"--output {args.output}: {e}") from None
        except (OSError, RuntimeError) as e:  # torch.save reports a missing folder as a RuntimeError
            raise UsageError(f"--output {args.output}: cannot write the model there ({e})") from None
        print(f"wrote {args.output}")
    return EXIT_OK


@COMMANDS.register("prune")
def add(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("prune", help="prune a model and save it", description="Prune a zoo model or a saved model "
                        "by a criterion at a ratio and save the smaller model.")
    add_model_args(pr)
    pr.add_argument("--schedule", default="one_shot", help="one_shot (default), iterative, layerwise_alpha, "
                    "gradual_global")
    pr.add_argument("--scope", default="local", choices=["local", "global"])
    pr.add_argument("--round-to", type=int, default=1, help="keep a multiple of this many channels")
    pr.add_argument("--ignore", action="append", help="module name never pruned (repeatable)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("-o", "--output", help="output file")
    pr.set_defaults(func=main)
