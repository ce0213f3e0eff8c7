"""pb.measure.paired: dense and pruned timed alternately in one process, the speedup with a bootstrap interval.

The statistics are checked on a fake clock (each model's forward returns its own cost), so they are exact and no
test depends on how loaded the machine is; one real run checks the shape of the result only.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from pybench.measure.paired import paired_latency, speedup_interval


class Costly(nn.Module):
    """A forward whose output is the cost the fake clock charges for it."""

    def __init__(self, cost_s: float) -> None:
        super().__init__()
        self.cost_s = cost_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((1,), self.cost_s, dtype=torch.float64)


def fake_clock(noise: float = 0.0, drift: float = 0.0, seed: int = 0):
    """clock(call, n): n times the called model's cost, times (1 + drift * blocks so far) and random noise."""
    rng = np.random.default_rng(seed)
    blocks = [0]

    def clock(call, n: int) -> float:
        cost = float(call()[0])
        blocks[0] += 1
        return n * cost * (1 + drift * blocks[0]) * float(np.exp(rng.normal(0, noise)) if noise else 1.0)

    return clock


def test_interval_of_exact_pairs_is_the_ratio():
    assert speedup_interval([2.0] * 10, [1.0] * 10) == pytest.approx((2.0, 2.0, 2.0))


def test_interval_is_reproducible_and_brackets_the_median():
    rng = np.random.default_rng(1)
    d = 3.0 * np.exp(rng.normal(0, 0.1, 40))
    p = 1.0 * np.exp(rng.normal(0, 0.1, 40))
    s, lo, hi = speedup_interval(d, p)
    assert (s, lo, hi) == speedup_interval(d, p)  # fixed seed: the same samples give the same interval
    assert lo < s < hi and s == pytest.approx(float(np.exp(np.median(np.log(d / p)))))
    assert 2.5 < lo and hi < 3.6


def test_interval_refuses_unpaired_samples():
    with pytest.raises(ValueError, match="paired"):
        speedup_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        speedup_interval([1.0, 0.0], [1.0, 1.0])


def test_alternating_order_cancels_a_drifting_machine():
    # every block 1 % slower than the one before: timing dense always first would bias every pair low
    r = paired_latency(Costly(2e-3), Costly(1e-3), torch.zeros(1), clock=fake_clock(drift=0.01), target_ci=0.5,
                       min_pairs=40, max_pairs=40, block_s=1e-3)
    ratios = np.array(r.dense_ms) / np.array(r.pruned_ms)
    assert ratios[0::2].mean() < 2 < ratios[1::2].mean()  # dense-first pairs read low, pruned-first pairs high
    assert r.speedup == pytest.approx(2.0, abs=0.01)


def test_timing_stops_when_the_interval_is_tight():
    r = paired_latency(Costly(4e-3), Costly(1e-3), torch.zeros(1), clock=fake_clock(noise=0.02), target_ci=0.02,
                       max_pairs=400)
    assert r.target_met and r.pairs < 400 and r.ci_half_width <= 0.02
    assert r.speedup_ci_low <= 4.0 <= r.speedup_ci_high and r.speedup == pytest.approx(4.0, rel=0.02)
    assert r.steady and r.warmup_blocks >= 8 and r.timer == "injected"
    assert len(r.dense_ms) == len(r.pruned_ms) == r.pairs
    json.dumps(r.to_dict())


def test_a_noisy_machine_is_reported_as_not_meeting_the_target():
    r = paired_latency(Costly(2e-3), Costly(1e-3), torch.zeros(1), clock=fake_clock(noise=0.5), target_ci=0.01,
                       min_pairs=8, max_pairs=16)
    assert not r.target_met and r.pairs == 16 and r.ci_half_width > 0.01
    assert r.speedup_ci_low < r.speedup < r.speedup_ci_high


def test_blocks_hold_enough_calls_to_dwarf_the_timer():
    r = paired_latency(Costly(1e-5), Costly(1e-5), torch.zeros(1), clock=fake_clock(), block_s=1e-3,
                       target_ci=0.5, min_pairs=4)
    assert r.block_calls == 100  # 1 ms blocks of a 10 us forward


def test_real_models_give_a_complete_result():
    dense = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
    pruned = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3))
    r = paired_latency(dense, pruned, torch.randn(1, 3, 16, 16), threads=1, max_time_s=2, target_ci=0.05)
    assert r.timer == "perf_counter" and r.threads == 1 and r.pairs >= 8 and r.block_calls >= 1
    assert r.cpu_affinity and all(isinstance(c, int) for c in r.cpu_affinity)
    assert r.speedup > 0 and r.speedup_ci_low <= r.speedup <= r.speedup_ci_high
    assert all(v > 0 for v in r.dense_ms + r.pruned_ms)


@pytest.mark.parametrize("kw, message", [
    ({"target_ci": 0}, "target_ci=0"), ({"target_ci": 1.0}, "target_ci=1.0"),
    ({"max_time_s": 0}, "max_time_s=0"), ({"max_time_s": float("inf")}, "max_time_s=inf"),
    ({"min_pairs": 1}, "min_pairs=1"),
])
def test_bad_arguments_name_the_key(kw, message):
    with pytest.raises(ValueError, match=message):
        paired_latency(nn.Identity(), nn.Identity(), torch.zeros(1), **kw)


def test_inputs_that_fit_one_model_only_are_refused():
    with pytest.raises(ValueError, match="pruned"):
        paired_latency(nn.Linear(4, 2), nn.Linear(3, 2), torch.zeros(1, 4))


class RunsOutOfMemory(nn.Module):
    """Fits the input check, then runs out of memory on every later forward (as a larger batch would)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x


def test_out_of_memory_is_an_error_not_a_speedup():
    r = paired_latency(nn.Identity(), RunsOutOfMemory(), torch.zeros(1, 4), max_time_s=1)
    assert r.error is not None and "out of memory" in r.error
    assert r.speedup is None and r.pairs == 0 and r.dense_ms == []


def test_pinning_holds_the_process_to_the_cpus_while_timing_only():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this OS")
    before = os.sched_getaffinity(0)
    cpu = min(before)
    seen = []

    def clock(call, n):
        seen.append(os.sched_getaffinity(0))
        return n * float(call()[0])

    r = paired_latency(Costly(2e-3), Costly(1e-3), torch.zeros(1), clock=clock, cpu_affinity=[cpu],
                       target_ci=0.5, min_pairs=4)
    assert r.pinned and r.cpu_affinity == [cpu] and all(s == {cpu} for s in seen)
    assert os.sched_getaffinity(0) == before  # restored
    unpinned = paired_latency(Costly(2e-3), Costly(1e-3), torch.zeros(1), clock=fake_clock(), target_ci=0.5,
                              min_pairs=4)
    assert not unpinned.pinned and unpinned.cpu_affinity == sorted(before)
    with pytest.raises(ValueError, match="may only run on CPUs"):
        paired_latency(nn.Identity(), nn.Identity(), torch.zeros(1), cpu_affinity=[max(before) + 1000])


def test_channels_last_times_both_models_in_that_layout():
    layouts = []

    class Layout(nn.Conv2d):
        def forward(self, x):
            layouts.append(x.is_contiguous(memory_format=torch.channels_last))
            return super().forward(x)

    r = paired_latency(Layout(3, 4, 3), Layout(3, 2, 3), torch.randn(1, 3, 8, 8), channels_last=True,
                       max_time_s=0.5, target_ci=0.5, min_pairs=4)
    assert r.channels_last and layouts and all(layouts)
