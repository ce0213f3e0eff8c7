"""pb.measure.latency agrees with torch.utils.benchmark.Timer within 3 % (CPU resnet18, batch 8).

The machine is shared, so the two are interleaved in short rounds (alternating which goes first) and the figure is
the ratio of their medians over rounds (median of per-round medians); the median of the per-round ratios is
reported too. Both run with the same torch thread count, 1 by default: on a 2-core machine shared with other
processes, a 2-thread forward waits at every intra-op barrier for whichever thread was descheduled, which turns
other processes' load into 2x swings. Set PYBENCH_BENCH_THREADS to change it. Run:

    python -m pytest benchmarks/test_bench_latency_agreement.py -q -s
"""

from __future__ import annotations

import os
import statistics

import pytest
import torch
import torchvision
from torch.utils.benchmark import Timer

import pybench as pb

ROUNDS = 15
CALLS = 4  # timed calls per round, each side
TOLERANCE = 0.03


@pytest.mark.slow
def test_latency_agrees_with_torch_utils_benchmark(benchmark) -> None:
    threads = int(os.environ.get("PYBENCH_BENCH_THREADS", "1"))
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(8, 3, 224, 224)
    timer = Timer("with torch.inference_mode(): model(x)", globals={"torch": torch, "model": model, "x": x},
                  num_threads=threads)
    per_call = timer.timeit(1).median  # one warm call, also sizes Timer's rounds below
    ours: list[float] = []
    theirs: list[float] = []

    def pybench_round() -> None:
        ours.append(pb.measure.latency(model, x, warmup=0, iters=CALLS).p50_ms)  # its input check warms up

    def timer_round() -> None:
        # blocks of one call (the stmt takes far longer than Timer's minimum block), about CALLS of them
        theirs.append(timer.blocked_autorange(min_run_time=CALLS * per_call * 0.95).median * 1e3)

    def interleaved() -> None:
        for r in range(ROUNDS):
            first, second = (pybench_round, timer_round) if r % 2 == 0 else (timer_round, pybench_round)
            first()
            second()

    load_before = os.getloadavg()[0]
    try:
        benchmark.pedantic(interleaved, rounds=1, iterations=1)
    finally:
        torch.set_num_threads(saved_threads)
    ratio = statistics.median(ours) / statistics.median(theirs)
    paired = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    benchmark.extra_info.update({
        "pybench_p50_ms_per_round": ours, "timer_median_ms_per_round": theirs,
        "pybench_median_ms": statistics.median(ours), "timer_median_ms": statistics.median(theirs),
        "ratio_of_medians": ratio, "median_paired_ratio": paired, "threads": threads,
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    })
    print(f"\npybench median of p50s {statistics.median(ours):.1f} ms, Timer median of medians "
          f"{statistics.median(theirs):.1f} ms, ratio {ratio:.4f}, median paired ratio {paired:.4f} "
          f"({ROUNDS} interleaved rounds of {CALLS} calls, batch 8, {threads} thread(s), "
          f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f})")
    assert abs(ratio - 1) < TOLERANCE, f"latency disagrees with torch.utils.benchmark.Timer: ratio {ratio:.3f}"
