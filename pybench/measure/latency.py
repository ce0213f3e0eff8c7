"""Latency and throughput of a forward: warm-up, then timed calls (CUDA events on GPU, perf_counter on CPU)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pybench.measure import _common as C
from pybench.measure.telemetry import EnergyMeter, EnergyResult


@dataclass
class LatencyResult:
    """Per-call latency of ``model(inputs)`` in milliseconds, and throughput in items per second.

    ``throughput`` is ``batch_size / p50`` (the median call, robust to the stragglers a shared machine produces).
    ``samples_ms`` holds every timed call in order. When the measurement failed (out of memory), every statistic is
    None and ``error`` says why.
    """

    device: str
    dtype: str
    batch_size: int
    warmup: int
    iters: int
    timer: str
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    throughput_basis: str = "batch_size / p50"
    total_s: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    channels_last: bool = False
    compile: str | None = None
    cuda_graphs: bool = False
    inference_mode: bool = True
    threads: int = 1
    energy: EnergyResult | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (floats, ints, strings, None, lists; ``energy`` as a nested dict)."""
        return asdict(self)


def summarize(samples_s: list[float], batch_size: int) -> dict[str, float]:
    """Statistics of per-call times given in seconds: ms fields and throughput (items/s from the median)."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "throughput": float(batch_size / (p50 / 1e3)) if p50 > 0 else None,
        "total_s": float(a.sum() / 1e3),
    }


def _time_loop(fn: Callable[[], Any], device: torch.device, iters: int, min_time: float | None,
               max_iters: int) -> list[float]:
    """Per-call seconds: at least ``iters`` calls, and more until their sum reaches ``min_time`` (at most max_iters).
    On CUDA each call is synchronised, so calls never overlap."""
    clock, _ = C.block_clock(device)
    samples: list[float] = []
    total = 0.0
    while len(samples) < max_iters and (len(samples) < iters or (min_time is not None and total < min_time)):
        s = clock(fn, 1)
        samples.append(s)
        total += s
    return samples


def _cuda_graph(model: nn.Module, x: Any, device: torch.device, inference_mode: bool) -> Callable[[], Any]:
    """Capture one forward into a CUDA graph (static inputs) and return its replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), C.grad_mode(inference_mode):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graph requires
            C.call(model, x)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with C.grad_mode(inference_mode), torch.cuda.graph(graph):
        C.call(model, x)
    return graph.replay


def latency(model: nn.Module, example_inputs: C.Inputs, device: str | torch.device = "cpu",
            dtype: str | torch.dtype = torch.float32, warmup: int = 10, iters: int = 50,
            min_time: float | None = None, batch_size: int | None = None, channels_last: bool = False,
            compile: bool | str = False, cuda_graphs: bool = False, inference_mode: bool = True,
            energy: bool = False, max_iters: int = 100_000, threads: int | None = None,
            wrap: C.Wrap | None = None) -> LatencyResult:
    """Time ``model(example_inputs)`` on ``device`` in ``dtype``.

    Args:
        model: the module; it is copied (eval mode, moved, cast), the caller's model is not modified.
        example_inputs: a Tensor, a tuple/list of them (positional args) or a dict (keyword args).
        device: "cpu", "cuda" or "cuda:N"; raises ValueError when it is not available here.
        dtype: torch.float32 / float16 / bfloat16 (or "fp32", "fp16", "bf16"); floating inputs are cast to it.
        warmup: untimed calls before timing (one more untimed call always checks that the inputs fit).
        iters: the least number of timed calls.
        min_time: when given, timing goes on until the timed calls add up to this many seconds.
        batch_size: resize the inputs' dim 0 to this (items repeated); default: the inputs' own batch.
        channels_last: model and 4-d inputs in channels_last memory format.
        compile: True or a torch.compile mode ("default", "reduce-overhead", "max-autotune"); compiled in warm-up.
        cuda_graphs: capture the forward in a CUDA graph and time its replay (CUDA only, static inputs).
        inference_mode: run under torch.inference_mode (else torch.no_grad).
        energy: also measure GPU energy over the timed loop (pybench.measure.telemetry.EnergyMeter).
        max_iters: cap on timed calls when ``min_time`` is given.
        threads: torch's intra-op thread count for the measurement (restored afterwards); default: leave it.
            It matters on CPU: on a loaded 2-core machine a 2-thread forward can be 10x slower than a 1-thread one.
        wrap: ``fn(prepared model, prepared inputs) -> callable`` timed instead of the model (an inference
            backend: an ONNX Runtime session, a compiled engine); it runs after the eager call checked the inputs.

    Returns:
        LatencyResult; on out-of-memory its statistics are None and ``error`` says so (memory is released).

    Raises:
        ValueError: a device or dtype that is not usable here, bad option values, or (MeasureInputError) inputs
            that do not fit the model.
    """
    dev = C.resolve_device(device)
    dt = C.resolve_dtype(dtype, dev)
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r}: expected an int >= 0")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters={iters!r}: expected an int >= 1")
    if min_time is not None and not min_time > 0:
        raise ValueError(f"min_time={min_time!r}: expected seconds > 0, or None to time exactly `iters` calls")
    if cuda_graphs and dev.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device, got device={str(dev)!r}; drop cuda_graphs on CPU")
    if cuda_graphs and compile:
        raise ValueError("cuda_graphs=True with compile: use compile='reduce-overhead' (torch.compile's own CUDA "
                         "graphs) and cuda_graphs=False")
    if wrap is not None and (compile or cuda_graphs):
        raise ValueError("wrap with compile or cuda_graphs: the wrapper is the backend; give one of them")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r}: expected an int >= 1, or None to keep torch.get_num_threads()")
    compile_mode = None if not compile else ("default" if compile is True else str(compile))
    name = type(model).__name__

    n = batch_size if batch_size is not None else C.batch_size_of(example_inputs)
    result = LatencyResult(device=str(dev), dtype=C.dtype_name(dt), batch_size=n, warmup=warmup, iters=0,
                           timer="cuda_events" if dev.type == "cuda" else "perf_counter",
                           channels_last=channels_last, compile=compile_mode, cuda_graphs=cuda_graphs,
                           inference_mode=inference_mode, threads=threads or torch.get_num_threads())
    x: Any = None
    m: Any = None
    fn: Any = None
    meter = EnergyMeter(dev) if energy else None
    samples: list[float] = []
    try:
        with C.on_device(dev), C.num_threads(threads):
            x = C.prepare_inputs(example_inputs, dev, dt, batch_size, channels_last)
            m = C.prepare_model(model, dev, dt, channels_last)
            C.check_call(m, x, dev, dt, inference_mode, name)  # clear errors for misfit inputs / dtypes first
            if compile_mode is not None:
                m = torch.compile(m, mode=None if compile_mode == "default" else compile_mode)
            with C.grad_mode(inference_mode):
                if wrap is not None:  # under the grad mode it will run in (a compiled graph guards on it)
                    m = wrap(m, x)
                for _ in range(warmup):
                    C.call(m, x)
                C.synchronize(dev)
                if cuda_graphs:
                    fn = _cuda_graph(m, x, dev, inference_mode)
                else:
                    def fn() -> Any:
                        return C.call(m, x)
                with C.gc_paused():  # a collection pause is the interpreter's, not the model's
                    if meter is not None:
                        meter.start()
                    samples = _time_loop(fn, dev, iters, min_time, max_iters)
    except Exception as e:
        if not C.is_oom(e):
            raise
        result.error = C.oom_message("latency", e, dev)
    finally:
        if meter is not None and meter.result is None:
            result.energy = meter.stop(items=n * len(samples))
    if result.error is not None:
        m = fn = x = None  # outside the except block: the traceback's frames (and their tensors) are gone
        C.release_memory(dev)
        return result
    result.iters = len(samples)
    result.samples_ms = [s * 1e3 for s in samples]
    for k, v in summarize(samples, n).items():
        setattr(result, k, v)
    return result
