"""Paired dense-vs-pruned speedups stay put on a loaded machine; the old unpaired ratio does not.

resnet18 and mobilenet_v2 at L1 0.5, CPU, batch 1, one torch thread, while a competing busy process spins on the
other core (PYBENCH_BENCH_LOAD=0 to measure quiet). Each model: REPEATS paired measurements
(``pb.measure.paired_latency``) and, in the same run, the unpaired ratio of two ``pb.measure.latency`` medians
taken one after the other (the way separate cells were compared before). The target: the paired speedups' spread
(max - min) / median is at most 5 %. The table goes to results/reference/<machine>/paired.md. Run:

    python -m pytest benchmarks/test_bench_paired.py -q -s
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import statistics
from pathlib import Path

import pytest
import torch
import torchvision

import pybench as pb

REPEATS = 5
SPREAD = 0.05
OUT = Path(__file__).resolve().parents[1] / "results" / "reference"


def _spin() -> None:  # the competing process: one core kept busy
    while True:
        pass


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_paired_speedup_spread_under_load(benchmark, name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    pruned, _ = pb.prune(model, x, ratio=0.5)
    loaded = os.environ.get("PYBENCH_BENCH_LOAD", "1") != "0"
    spinner = mp.Process(target=_spin, daemon=True) if loaded else None
    rows: list[dict] = []

    def measure() -> None:
        for _ in range(REPEATS):
            r = pb.measure.paired_latency(model, pruned, x, threads=1, target_ci=0.02, max_time_s=20)
            d = pb.measure.latency(model, x, threads=1, warmup=3, iters=20).p50_ms
            p = pb.measure.latency(pruned, x, threads=1, warmup=3, iters=20).p50_ms
            rows.append({"paired": r.speedup, "low": r.speedup_ci_low, "high": r.speedup_ci_high,
                         "met": r.target_met, "pairs": r.pairs, "unpaired": d / p})

    if spinner:
        spinner.start()
    try:
        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        if spinner:
            spinner.terminate()
    paired, unpaired = [r["paired"] for r in rows], [r["unpaired"] for r in rows]
    table = [f"## {name} at L1 0.5, CPU batch 1, 1 thread, {'one busy competing process' if loaded else 'quiet'}",
             "", "| run | paired speedup | 95 % interval | target met | pairs | unpaired ratio |",
             "|---|---|---|---|---|---|"]
    table += [f"| {i + 1} | {r['paired']:.3f}x | [{r['low']:.3f}, {r['high']:.3f}] | {r['met']} | {r['pairs']} | "
              f"{r['unpaired']:.3f}x |" for i, r in enumerate(rows)]
    table += ["", f"spread (max - min) / median: paired {_spread(paired):.1%}, unpaired {_spread(unpaired):.1%}", ""]
    text = "\n".join(table)
    print("\n" + text)
    folder = OUT / os.environ.get("PYBENCH_MACHINE", f"cpu-{platform.machine()}-{os.cpu_count()}core")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "paired.md", "a") as f:
        f.write(text + "\n")
    benchmark.extra_info.update(name=name, loaded=loaded, paired=paired, unpaired=unpaired)
    assert _spread(paired) <= SPREAD, text
