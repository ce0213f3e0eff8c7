"""The measuring side of a worker: one cell's latency percentiles and throughput, peak memory, accuracy and
energy, from repeats of pybench.measure, with the spread of the repeats as their noise; and for a pruned cell its
speedup over its own dense model, timed paired in the same process (:func:`measure_speedup`)."""

from __future__ import annotations

import statistics
from typing import Any

from pybench.bench.config import Cell
from pybench.bench.dense import example_input


def _noise(values: list[float]) -> float | None:
    """Relative spread of the repeats, (max - min) / median; None with one repeat (noise unknown)."""
    if len(values) < 2:
        return None
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med else None


def measure_cell(model: Any, cell: Cell, accuracy: dict[str, Any] | None,
                 prepared: Any = None) -> tuple[dict, dict]:
    """(metrics, details) of one cell: latency percentiles and throughput, peak memory, accuracy, energy.

    ``prepared`` (a :class:`pybench.bench.backends.Prepared`) runs the model through the cell's backend: its
    preparation time and output error against eager float32 join the metrics. Peak memory is the allocator's view
    of eager PyTorch, so a non-eager backend's cell leaves it out (and says so)."""
    from pybench import measure

    met = cell.metrics
    eager = cell.backend == "eager"
    wrap = None if eager else prepared
    collect = set(met.collect)
    x = example_input(cell, batch=1)
    bs, dev, dt = cell.batch_size, cell.device, cell.dtype
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if "latency" in collect or "energy" in collect:
        runs = []
        energy = "energy" in collect and dev.startswith("cuda")
        for _ in range(met.repeats):
            r = measure.latency(model, x, device=dev, dtype=dt, warmup=met.warmup, iters=met.iters,
                                min_time=met.min_time or None, batch_size=bs, channels_last=met.channels_last,
                                energy=energy, wrap=wrap)
            if r.error:
                raise RuntimeError(r.error)
            runs.append(r)
        import numpy as np

        p50s = [r.p50_ms for r in runs]
        pooled = np.concatenate([r.samples_ms for r in runs])
        p50 = statistics.median(p50s)
        metrics.update(latency_p50_ms=p50, latency_p90_ms=float(np.percentile(pooled, 90)),
                       latency_p99_ms=float(np.percentile(pooled, 99)), latency_mean_ms=float(pooled.mean()),
                       latency_min_ms=float(pooled.min()), throughput=bs / p50 * 1e3, latency_noise=_noise(p50s))
        details["latency_repeats_p50_ms"] = p50s
        details["latency"] = {k: v for k, v in runs[0].to_dict().items() if k != "samples_ms"}
        if dev.startswith("cuda"):  # clocks, power, temperature and throttle reasons right after the timed loops
            details["gpu_telemetry"] = measure.telemetry(dev).to_dict()
        if energy:
            per_item = [r.energy.energy_per_item_j for r in runs
                        if r.energy is not None and r.energy.energy_per_item_j is not None]
            if per_item:
                metrics["energy_j_per_item"] = statistics.median(per_item)
            details["energy"] = [r.energy.to_dict() for r in runs if r.energy is not None]
    if wrap is not None:
        entry = next(iter(prepared.entries.values()), None)  # the cell's own model, prepared first
        if entry is not None:
            metrics.update(prepare_s=entry.prepare_s, backend_max_abs_error=entry.max_abs_error,
                           backend_max_rel_error=entry.max_rel_error)
        details["backend"] = prepared.describe()
    if "memory" in collect and not eager:
        details["memory_skipped"] = (f"peak memory is measured on eager PyTorch's allocator; backend "
                                     f"{cell.backend!r} manages its own")
    elif "memory" in collect:
        mems = []
        for _ in range(met.repeats):
            m = measure.memory(model, x, device=dev, dtype=dt, batch_size=bs, channels_last=met.channels_last)
            if m.error:
                raise RuntimeError(m.error)
            mems.append(m)
        peaks = [float(m.peak_bytes) for m in mems]
        metrics.update(peak_memory_bytes=statistics.median(peaks), memory_noise=_noise(peaks),
                       param_bytes=mems[0].param_bytes, buffer_bytes=mems[0].buffer_bytes)
        details["memory"] = mems[0].to_dict()
    if "accuracy" in collect and accuracy is not None:
        metrics.update(top1=accuracy["top1"], top5=accuracy["top5"], loss=accuracy["loss"],
                       accuracy_samples=accuracy["samples"])
    return metrics, details


def measure_speedup(dense: Any, pruned: Any, cell: Cell, prepared: Any = None) -> tuple[dict, dict]:
    """(metrics, details) of a pruned cell's paired timing against ``dense``, the dense model its group was pruned
    from (same input, batch size, dtype, device and threads): ``speedup`` with its 95 % interval, and whether the
    interval reached ``[metrics] target_ci`` within ``max_time_s``; the paired block times go in details."""
    from pybench import measure

    met = cell.metrics
    r = measure.paired_latency(dense, pruned, example_input(cell, batch=1), device=cell.device, dtype=cell.dtype,
                               batch_size=cell.batch_size, target_ci=met.target_ci, max_time_s=met.max_time_s,
                               channels_last=met.channels_last,
                               wrap=None if cell.backend == "eager" else prepared)
    if r.error:
        raise RuntimeError(r.error)
    metrics = {"speedup": r.speedup, "speedup_ci_low": r.speedup_ci_low, "speedup_ci_high": r.speedup_ci_high,
               "speedup_target_met": r.target_met, "dense_latency_paired_p50_ms": r.dense_p50_ms,
               "latency_paired_p50_ms": r.pruned_p50_ms}
    if prepared is not None and cell.backend != "eager" and len(prepared.entries) > 1:
        metrics["dense_prepare_s"] = list(prepared.entries.values())[-1].prepare_s  # the dense model's, after
    return metrics, {"paired": r.to_dict()}
