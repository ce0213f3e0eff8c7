"""`pybench ops-bench`: the fused ops vs eager PyTorch, with bandwidth."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pybench.cli._common import COMMANDS, EXIT_FAILED, EXIT_OK, EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure
    from pybench.bench import opsbench

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"pybench ops-bench: --device {args.device} asked for, but no CUDA GPU is visible here; "
              "use --device cpu", file=sys.stderr)
        return EXIT_USAGE
    sizes = args.sizes or ("all" if args.device.startswith("cuda") else "layers")
    pool = {"layers": opsbench.cases(), "large": opsbench.large_cases(), "all": opsbench.cases(large=True)}[sizes]
    selected = [c for c in pool if not args.op or c.op in args.op]
    env = measure.environment().to_dict()
    print(f"# pybench ops-bench on {args.device}: {env.get('cpu_model')} ({env.get('torch_threads')} threads), "
          f"{', '.join(g.get('name', '?') for g in env.get('gpus') or []) or 'no GPU'}; torch {env.get('torch')}; "
          f"ops backend: {env.get('pybench_backend')}", flush=True)
    bw = opsbench.bandwidth(args.device, repeats=args.repeats)
    rows = opsbench.run(args.device, repeats=args.repeats, selected=selected, copy_gbs=bw["copy_gbs"],
                        progress=lambda what: print(f"  timing {what} ...", file=sys.stderr, flush=True))
    print(opsbench.table(rows, bw))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "bandwidth": bw,
                                               "rows": [r.to_dict() for r in rows]}, indent=2))
        print(f"\nwrote {args.json}")
    missed = [r for r in rows if not r.ratio_met or r.bandwidth_met is False]
    if missed and args.strict:
        print(f"{len(missed)} case(s) missed their speedup or bandwidth target", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


@COMMANDS.register("ops-bench")
def add(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("ops-bench", help="fused ops vs eager PyTorch on real layer sizes, with bandwidth",
                           description="Fused ops vs eager PyTorch on ResNet-50 / VGG-16 layer sizes; the fused "
                           "GB/s is shown next to the copy and sum bandwidth measured in the same run.")
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per case; the median is reported")
    bench.add_argument("--op", action="append", choices=["channel_stats", "activation_stats", "channel_gather"],
                       help="only this op (repeatable)")
    bench.add_argument("--sizes", choices=["layers", "large", "all"], help="layers: ResNet-50 / VGG-16 layer "
                       "sizes; large: tensors of 256 MB and more in fp32 / fp16 / bf16, judged on bandwidth; all: "
                       "both (default: all on cuda, layers on cpu)")
    bench.add_argument("--json", metavar="FILE", help="also write the rows and the environment as JSON")
    bench.add_argument("--strict", action="store_true", help="exit 1 if any case misses its speedup target (or, "
                       "at 256 MB and more, 85 %% of the copy bandwidth)")
    bench.set_defaults(func=main)
