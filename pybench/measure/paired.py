"""Paired timing: a pruned model and its dense baseline timed alternately in one process, with a 95 % interval.

A ratio of two medians taken minutes apart mostly measures what else the machine was doing. Here the two models
run in short alternating blocks (dense, pruned, pruned, dense, ...: the ABBA order cancels a linear drift), each
block long enough that the timer's own cost stays under 1 % of it, so a disturbance hits both sides of a pair
alike. Each pair gives a ratio ``dense block / pruned block``; the speedup is the median of the pairs' ratios and
its interval a percentile bootstrap over pairs. Timing goes on until the interval's relative half-width is at most
``target_ci`` or ``max_time_s`` is spent; warm-up goes on until block times are steady.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pybench.measure import _common as C
from pybench.measure.telemetry import telemetry

__all__ = ["PairedResult", "paired_latency", "speedup_interval"]

CI_METHOD = "percentile bootstrap (2000 resamples) over paired blocks of the median dense/pruned ratio"
_BOOTSTRAP = 2000
_MIN_PAIRS = 16  # fewer pairs give an interval narrower than the run-to-run spread
_TIMER_SHARE = 0.01  # the timer's cost per block, at most this share of the block


@dataclass
class PairedResult:
    """Dense vs pruned latency, paired. ``speedup`` is dense / pruned (median of the paired blocks' ratios) with
    ``speedup_ci_low`` / ``speedup_ci_high`` its 95 % interval (:data:`CI_METHOD`); ``target_met`` says whether
    the interval's relative half-width reached ``target_ci`` before ``max_time_s``. ``dense_ms`` / ``pruned_ms``
    are the per-call times of each block, in order (pair i = block i of each)."""

    device: str
    dtype: str
    batch_size: int
    threads: int
    timer: str
    block_calls: int
    pairs: int
    warmup_blocks: int
    steady: bool
    target_ci: float
    max_time_s: float
    target_met: bool
    speedup: float | None = None
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    ci_half_width: float | None = None
    dense_p50_ms: float | None = None
    pruned_p50_ms: float | None = None
    elapsed_s: float = 0.0
    ci_method: str = CI_METHOD
    dense_ms: list[float] = field(default_factory=list)
    pruned_ms: list[float] = field(default_factory=list)
    cpu_affinity: list[int] = field(default_factory=list)  # the CPUs this process may run on while timing
    pinned: bool = False  # cpu_affinity was set for the timing (else it is the process's own)
    channels_last: bool = False
    # CUDA: the GPU's clocks, power, temperature and throttle reasons just before and just after the timing
    gpu_clocks: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def speedup_interval(dense: np.ndarray | list[float], pruned: np.ndarray | list[float],
                     seed: int = 0) -> tuple[float, float, float]:
    """(speedup, low, high): the median of ``dense[i] / pruned[i]`` and its 95 % percentile-bootstrap interval
    over the pairs (resampled with a fixed seed, so the same samples give the same interval)."""
    d, p = np.asarray(dense, dtype=np.float64), np.asarray(pruned, dtype=np.float64)
    if d.shape != p.shape or d.ndim != 1 or d.size == 0:
        raise ValueError(f"dense and pruned must be paired 1-d samples of equal length, got {d.shape} and {p.shape}")
    if (d <= 0).any() or (p <= 0).any():
        raise ValueError("block times must be > 0")
    log_ratio = np.log(d / p)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, log_ratio.size, size=(_BOOTSTRAP, log_ratio.size))
    boots = np.median(log_ratio[idx], axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return float(np.exp(np.median(log_ratio))), float(np.exp(low)), float(np.exp(high))


def _timer_cost() -> float:
    """Seconds one perf_counter pair costs here (the overhead a block must dwarf)."""
    t0 = time.perf_counter()
    for _ in range(1000):
        time.perf_counter()
    return (time.perf_counter() - t0) / 1000


def _steady(times: list[float], window: int = 4, tolerance: float = 0.05) -> bool:
    """The last ``window`` blocks' median within ``tolerance`` of the ``window`` before them."""
    if len(times) < 2 * window:
        return False
    recent, before = np.median(times[-window:]), np.median(times[-2 * window:-window])
    return bool(abs(recent - before) <= tolerance * before)


def paired_latency(dense: nn.Module, pruned: nn.Module, example_inputs: C.Inputs, device: str | torch.device = "cpu",
                   dtype: str | torch.dtype = torch.float32, batch_size: int | None = None, *,
                   target_ci: float = 0.02, max_time_s: float = 30.0, min_pairs: int = _MIN_PAIRS,
                   max_pairs: int = 2000, block_s: float | None = None, max_warmup_s: float | None = None,
                   threads: int | None = None, cpu_affinity: list[int] | None = None, channels_last: bool = False,
                   inference_mode: bool = True, clock: C.Clock | None = None,
                   wrap: C.Wrap | None = None, pruned_inputs: C.Inputs | None = None) -> PairedResult:
    """Time ``dense`` and ``pruned`` on the same input, alternately, until the speedup's 95 % interval is within
    ``target_ci`` (relative half-width) or ``max_time_s`` is spent.

    Args:
        dense, pruned: the two models (copied, put in eval mode, moved and cast; the callers' are untouched).
        example_inputs, device, dtype, batch_size, threads, channels_last, inference_mode: as
            :func:`pybench.measure.latency`.
        target_ci: relative half-width of the interval to reach, in (0, 1).
        max_time_s: time budget of warm-up and timing together, > 0.
        min_pairs / max_pairs: the least and most pairs of blocks timed.
        block_s: seconds per block (default: 100x the timer's cost and at least 1 ms; at least one call).
        max_warmup_s: warm-up budget (default a quarter of ``max_time_s``).
        cpu_affinity: pin the process to these CPUs while timing (restored afterwards); default: as it is.
        clock: ``fn(call, n) -> seconds`` for n calls; the default is CUDA events or perf_counter. Tests pass a
            fake one.
        wrap: as :func:`pybench.measure.latency`: each model is timed through ``wrap(model, inputs)`` (an
            inference backend); preparing both is not part of ``max_time_s``.
        pruned_inputs: the pruned side's own inputs when they differ from ``example_inputs`` (a layer timed with
            fewer input channels, by the latency tables); same batch size.

    Returns:
        PairedResult; on out-of-memory its statistics are None and ``error`` says so (memory is released).
    """
    if not (isinstance(target_ci, (int, float)) and 0 < target_ci < 1):
        raise ValueError(f"target_ci={target_ci!r}: expected a relative half-width in (0, 1), e.g. 0.02")
    if not (isinstance(max_time_s, (int, float)) and max_time_s > 0 and math.isfinite(max_time_s)):
        raise ValueError(f"max_time_s={max_time_s!r}: expected seconds > 0")
    if not (isinstance(min_pairs, int) and isinstance(max_pairs, int) and 2 <= min_pairs <= max_pairs):
        raise ValueError(f"min_pairs={min_pairs!r}, max_pairs={max_pairs!r}: expected 2 <= min_pairs <= max_pairs")
    dev = C.resolve_device(device)
    dt = C.resolve_dtype(dtype, dev)
    n = batch_size if batch_size is not None else C.batch_size_of(example_inputs)
    block_clock, timer = C.block_clock(dev) if clock is None else (clock, "injected")
    if dev.type == "cuda" and clock is None:
        timer += " (device synchronised before each block)"
    result = PairedResult(device=str(dev), dtype=C.dtype_name(dt), batch_size=n,
                          threads=threads or torch.get_num_threads(), timer=timer, block_calls=1, pairs=0,
                          warmup_blocks=0, steady=False, target_ci=float(target_ci), max_time_s=float(max_time_s),
                          target_met=False, pinned=bool(cpu_affinity), channels_last=channels_last)
    x: Any = None
    xs: list[Any] = []
    models: list[Any] = []
    calls: list[Any] = []
    fns: list[Any] = []
    d_s: list[float] = []
    p_s: list[float] = []
    t_start = time.perf_counter()
    try:
        with (C.on_device(dev), C.num_threads(threads), C.cpu_affinity(cpu_affinity) as cpus,
              C.grad_mode(inference_mode)):
            result.cpu_affinity = cpus
            x = C.prepare_inputs(example_inputs, dev, dt, batch_size, channels_last)
            xs = [x, x if pruned_inputs is None else C.prepare_inputs(pruned_inputs, dev, dt, batch_size,
                                                                     channels_last)]
            models = [C.prepare_model(m, dev, dt, channels_last) for m in (dense, pruned)]
            for m, xi, name in zip(models, xs, ("dense", "pruned"), strict=True):
                C.check_call(m, xi, dev, dt, inference_mode, f"{name} {type(m).__name__}")
            fns = [m if wrap is None else wrap(m, xi) for m, xi in zip(models, xs, strict=True)]
            calls = [lambda f=f, xi=xi: C.call(f, xi) for f, xi in zip(fns, xs, strict=True)]
            for call in calls:  # a backend that compiles (or recompiles) on its first call does it here, untimed
                call()
            t_start = time.perf_counter()  # the budget is for timing, not for a backend's compile / export
            before = telemetry(dev).to_dict() if dev.type == "cuda" else None
            with C.gc_paused():
                _time_pairs(result, calls, block_clock, d_s, p_s, t_start, min_pairs, max_pairs, block_s,
                            max_time_s / 4 if max_warmup_s is None else max_warmup_s)
            if before is not None:
                result.gpu_clocks = {"before": before, "after": telemetry(dev).to_dict()}
    except Exception as e:
        if not C.is_oom(e):
            raise
        result.error = C.oom_message("paired latency", e, dev)
    if result.error is not None:
        models, calls, fns, x, xs = [], [], [], None, []  # outside the except block: the traceback holds no tensors
        C.release_memory(dev)
        return result
    s, lo, hi = speedup_interval(d_s, p_s)
    result.pairs = len(d_s)
    result.speedup, result.speedup_ci_low, result.speedup_ci_high = s, lo, hi
    result.ci_half_width = (hi - lo) / 2 / s
    result.target_met = bool(result.ci_half_width <= target_ci)
    result.dense_ms = [v * 1e3 for v in d_s]
    result.pruned_ms = [v * 1e3 for v in p_s]
    result.dense_p50_ms = float(np.median(result.dense_ms))
    result.pruned_p50_ms = float(np.median(result.pruned_ms))
    result.elapsed_s = time.perf_counter() - t_start
    return result


def _time_pairs(result: PairedResult, calls: list[Callable[[], Any]], block_clock: C.Clock, d_s: list[float],
                p_s: list[float], t_start: float, min_pairs: int, max_pairs: int, block_s: float | None,
                warm_budget: float) -> None:
    """Size the blocks, warm up until steady, then time ABBA pairs into ``d_s`` / ``p_s`` (per-call seconds)
    until the interval reaches ``result.target_ci`` or ``result.max_time_s`` is spent."""
    # block length: the slower model's warm call (the fastest of a few: the first calls pay one-time costs),
    # repeated until the block dwarfs the timer's cost
    for call in calls:
        block_clock(call, 2)
    one = max(max(min(block_clock(call, 1) for _ in range(5)) for call in calls), 1e-9)
    want = block_s if block_s is not None else max(_timer_cost() / _TIMER_SHARE, 1e-3)
    k = result.block_calls = max(1, math.ceil(want / one))
    warm: list[float] = []
    while not _steady(warm) and time.perf_counter() - t_start < warm_budget:
        warm.append(block_clock(calls[0], k) + block_clock(calls[1], k))
    result.warmup_blocks, result.steady = len(warm), _steady(warm)
    while len(d_s) < max_pairs:
        if len(d_s) % 2 == 0:  # ABBA: dense first in even pairs, pruned first in odd ones
            d, p = block_clock(calls[0], k), block_clock(calls[1], k)
        else:
            p, d = block_clock(calls[1], k), block_clock(calls[0], k)
        d_s.append(d / k)
        p_s.append(p / k)
        if len(d_s) >= min_pairs and len(d_s) % 4 == 0:
            s, lo, hi = speedup_interval(d_s, p_s)
            if (hi - lo) / 2 / s <= result.target_ci:
                return
        if len(d_s) >= min_pairs and time.perf_counter() - t_start > result.max_time_s:
            return
