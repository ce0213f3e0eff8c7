"""`pybench lut MODEL`: measure a model's latency table on this machine, save it, draw its staircases."""

from __future__ import annotations

import argparse
import sys

from pybench.cli._common import COMMANDS, EXIT_OK, UsageError, add_model_args, input_size, model_of


def main(args: argparse.Namespace) -> int:
    import torch

    from pybench.bench.lut import latency_table
    from pybench.prune import LatencyTable

    if args.plot and not args.out and not args.table:
        raise UsageError("--plot draws a table: give --out FILE (measure and save one) or --table FILE (draw a saved "
                         "one)")
    if args.table:  # draw (or check) a saved table: nothing is measured
        try:
            table = LatencyTable.load(args.table)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
    else:
        model, name = model_of(args)
        x = torch.randn(1, *input_size(args, name))
        try:
            table = latency_table(model, x, device=args.device, backend=args.backend, dtype=args.dtype,
                                  batch_size=args.batch_size, align=args.align, max_points=args.points,
                                  max_time_s=args.point_time,
                                  progress=(lambda s: print(s, file=sys.stderr)) if args.verbose else None)
        except (ValueError, KeyError) as e:
            raise UsageError(str(e).strip("'\"")) from None
        print(f"dense {table.dense_ms:.3f} ms; {len(table.layers)} layers ({table.layers_ms:.3f} ms alone); "
              f"{len(table.model['groups'])} groups; half model measured at "
              f"{1 / table.meta['half_speedup']:.3f} of dense")
        if args.out:
            try:
                table.save(args.out)
            except OSError as e:
                raise UsageError(f"--out {args.out}: cannot write there ({e})") from None
            print(f"wrote {args.out}")
    if args.plot:
        from pybench.bench.lut_plot import plot_staircases

        try:
            drawn = plot_staircases(table, args.plot)
        except (OSError, ValueError) as e:
            raise UsageError(f"--plot {args.plot}: {e}") from None
        print(f"wrote {args.plot} ({len(drawn)} groups)")
    return EXIT_OK



@COMMANDS.register("lut")
def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lut", help="measure a latency table (per-layer cost vs channels) on this machine",
                       description="Time every prunable layer of a model alone at a sweep of channel counts on the "
                       "target device / backend / dtype / batch size, paired against the dense layer, and save the "
                       "table that `pb.prune(..., latency_budget=, lut=)` plans with.")
    add_model_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="eager", help="eager (default), inductor, onnxruntime, openvino, ...")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--align", type=int, default=8, help="channel step swept (default 8)")
    p.add_argument("--points", type=int, default=8, help="aligned counts per dimension (default 8)")
    p.add_argument("--point-time", type=float, default=1.0, help="seconds at most per paired point (default 1)")
    p.add_argument("--out", help="write the table here (JSON)")
    p.add_argument("--table", help="a saved table to draw instead of measuring")
    p.add_argument("--plot", help="draw the groups' staircases here (PNG / SVG / PDF)")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per layer measured")
    p.set_defaults(func=main)
