"""`pybench check RUN --baseline B`: the regression gate (exit 1 on a regression)."""

from __future__ import annotations

import argparse

from pybench.cli._common import COMMANDS, EXIT_FAILED, EXIT_OK, UsageError


def _threshold(text: str) -> float:
    """``5%`` or a fraction below 1 (``0.05``); a bare ``5`` is refused rather than read as 500 %."""
    t = text.strip()
    pct = t.endswith("%")
    try:
        value = float(t[:-1]) / 100 if pct else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 5% or a fraction like 0.05, got {text!r}") \
            from None
    if not pct and value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} would mean {value:.0%}; write a percentage ({t}%) or a fraction "
                                         f"below 1 ({value / 100:g})")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a threshold between 0 and 100% (e.g. 5%), got {text!r}")
    return value


def main(args: argparse.Namespace) -> int:
    from pybench.bench import compare

    try:
        res = compare.check(args.run, args.baseline, threshold=args.threshold, metrics=args.metric,
                            allow_foreign_baseline=args.allow_foreign_baseline)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(res.markdown())
    return EXIT_FAILED if res.failed else EXIT_OK


@COMMANDS.register("check")
def add(sub: argparse._SubParsersAction) -> None:
    chk = sub.add_parser("check", help="regression gate: RUN vs --baseline, exit 1 on a regression",
                         description="Flag cells whose metric got worse than the baseline by more than the threshold. "
                         "Cells whose noise (spread of the repeats) exceeds the threshold are ignored, and listed.")
    chk.add_argument("run", help="run folder to check")
    chk.add_argument("--baseline", required=True, help="baseline run folder")
    chk.add_argument("--threshold", type=_threshold, default=0.05, help="relative change that counts (default 5%%)")
    chk.add_argument("--allow-foreign-baseline", action="store_true", help="compare against a baseline measured "
                     "on another machine (host, CPU or GPU differ); refused by default")
    chk.add_argument("--metric", action="append", help="metric(s) to check (default: latency_p50_ms, "
                     "peak_memory_bytes, top1, macs, speedup)")
    chk.set_defaults(func=main)
