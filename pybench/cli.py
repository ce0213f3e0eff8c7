"""The ``pybench`` command: a thin shell over the library.

Exit codes: 0 success; 1 the command ran but a check it makes failed (e.g. a benchmark target missed with
``--strict``); 2 bad usage or bad input (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _ops_bench(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure, opsbench

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"pybench ops-bench: --device {args.device} asked for, but no CUDA GPU is visible here; "
              "use --device cpu", file=sys.stderr)
        return EXIT_USAGE
    selected = [c for c in opsbench.cases() if not args.op or c.op in args.op]
    env = measure.environment().to_dict()
    print(f"# pybench ops-bench on {args.device}: {env.get('cpu_model')} ({env.get('torch_threads')} threads), "
          f"{', '.join(g.get('name', '?') for g in env.get('gpus') or []) or 'no GPU'}; torch {env.get('torch')}; "
          f"ops backend: {env.get('pybench_backend')}", flush=True)
    bw = opsbench.bandwidth(args.device, repeats=args.repeats)
    rows = opsbench.run(args.device, repeats=args.repeats, selected=selected,
                        progress=lambda what: print(f"  timing {what} ...", file=sys.stderr, flush=True))
    print(opsbench.table(rows, bw))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "bandwidth": bw,
                                               "rows": [r.to_dict() for r in rows]}, indent=2))
        print(f"\nwrote {args.json}")
    missed = [r for r in rows if not r.ratio_met]
    if missed and args.strict:
        print(f"{len(missed)} case(s) missed their speedup target", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _zoo(args: argparse.Namespace) -> int:
    from pybench import zoo

    for name in zoo.names():
        print(name)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pybench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("ops-bench", help="fused ops vs eager PyTorch on real layer sizes, with bandwidth",
                           description="Fused ops vs eager PyTorch on ResNet-50 / VGG-16 layer sizes; the fused "
                           "GB/s is shown next to the copy and sum bandwidth measured in the same run.")
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per case; the median is reported")
    bench.add_argument("--op", action="append", choices=["channel_stats", "activation_stats", "channel_gather"],
                       help="only this op (repeatable)")
    bench.add_argument("--json", metavar="FILE", help="also write the rows and the environment as JSON")
    bench.add_argument("--strict", action="store_true", help="exit 1 if any case misses its speedup target")
    bench.set_defaults(func=_ops_bench)

    zoo = sub.add_parser("zoo", help="list the model names pybench.zoo.create accepts")
    zoo.set_defaults(func=_zoo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pybench`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        print("pybench: --repeats must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
