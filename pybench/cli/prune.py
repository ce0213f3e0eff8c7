"""`pybench prune MODEL`: prune a model by a criterion and schedule, and save it."""

from __future__ import annotations

import argparse
from typing import Any

from pybench.bench.config import PruneSettings
from pybench.cli._common import COMMANDS, EXIT_OK, UsageError, add_model_args, input_size, model_of, prune_or_refuse


def main(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure

    model, name = model_of(args)
    x = torch.randn(1, *input_size(args, name))
    settings = PruneSettings(scope=args.scope, round_to=args.round_to, ignore=tuple(args.ignore or ()),
                             calibration_batches=0)
    if args.latency_budget is None:
        if args.lut or args.rounds is not None:
            raise UsageError("--lut and --rounds are used with --latency-budget B (a fraction of dense latency)")
        pruned = prune_or_refuse(model, x, args.criterion, args.schedule, args.ratio, settings, seed=args.seed)
    else:
        pruned = _to_budget(model, x, args)
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


def _to_budget(model: Any, x: Any, args: argparse.Namespace) -> Any:
    """``--latency-budget B --lut T.json``: the model pruned until its measured latency is B x dense on the table's
    target (pb.prune_to_latency); prints each round's predicted and measured latency."""
    import pybench as pb
    from pybench.prune import LatencyTable, LutMismatchError

    if not args.lut:
        raise UsageError("--latency-budget needs --lut T.json, a latency table of this model measured on the target "
                         "(pybench lut MODEL --out T.json)")
    if args.schedule != "one_shot":
        raise UsageError(f"--latency-budget plans one cut: use --schedule one_shot, not {args.schedule!r}")
    try:
        table = LatencyTable.load(args.lut)
    except (OSError, ValueError) as e:
        raise UsageError(f"--lut {args.lut}: {e}") from None
    rounds = 3 if args.rounds is None else args.rounds
    try:
        pruned, _, fit = pb.prune_to_latency(model, x, args.latency_budget, table, criterion=args.criterion,
                                             round_to=args.round_to, ignore=tuple(args.ignore or ()),
                                             rounds=rounds, seed=args.seed)
    except (LutMismatchError, ValueError, TypeError) as e:
        raise UsageError(f"--latency-budget {args.latency_budget:g} --lut {args.lut}: {e}") from None
    for i, r in enumerate(fit.rounds):
        mark = " <- kept" if i == fit.chosen else ""
        print(f"plan {i + 1}: budget {r.planned_budget:.3f}, predicted {r.predicted:.3f}, measured {r.measured:.3f} "
              f"[{r.measured_low:.3f}, {r.measured_high:.3f}] of dense latency{mark}")
    if not fit.met:
        print(f"note: measured {fit.measured:.3f} is more than {fit.tolerance:.0%} from the budget "
              f"{fit.budget:g} after {len(fit.rounds)} plan(s); raise --rounds or re-measure the table")
    return pruned


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
    pr.add_argument("--latency-budget", type=float, metavar="B", help="instead of --ratio: prune to B x the dense "
                    "latency measured on --lut's target (plans corrected by paired measurements)")
    pr.add_argument("--lut", metavar="T.json", help="the model's latency table (pybench lut MODEL --out T.json)")
    pr.add_argument("--rounds", type=int, default=None, help="with --latency-budget: plans at most (default 3; "
                    "1: the table's plan, measured)")
    pr.add_argument("-o", "--output", help="output file")
    pr.set_defaults(func=main)
