"""Peak memory of one forward pass, and the bytes held by parameters and buffers.

CUDA: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` after ``reset_peak_memory_stats``.
CPU (default ``"mem_tracker"``): the peak of live tensor bytes during the forward, from torch's dispatch-level
tracker (``torch.distributed._tools.mem_tracker.MemTracker``): exact, and blind to what the process's allocator
keeps or returns, so a pruned model is never "bigger" because the heap happened to grow. The process's RSS is
still there as an option: ``"clear_refs+VmHWM"`` (Linux lets the peak be reset: write "5" to
/proc/self/clear_refs, read VmHWM from /proc/self/status) or ``"psutil-sampling"`` (a thread that can miss short
peaks). ``method`` says which was used.
"""

from __future__ import annotations

import gc
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import torch
from torch import nn

from pybench.measure import _common as C

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass
class MemoryResult:
    """Bytes. ``peak_bytes`` is the growth over what was in use just before the forward (activations, workspaces,
    outputs); ``peak_total_bytes`` the absolute peak (CUDA: allocated by torch; CPU mem_tracker: live tensors,
    parameters + buffers + inputs + activations; CPU RSS methods: the process's RSS). ``input_bytes`` and
    ``activation_peak_bytes`` (activations and temporaries at the peak) are set by the mem_tracker method."""

    device: str
    dtype: str
    batch_size: int
    method: str
    param_bytes: int
    buffer_bytes: int
    peak_bytes: int | None = None
    peak_total_bytes: int | None = None
    baseline_bytes: int | None = None
    reserved_peak_bytes: int | None = None
    input_bytes: int | None = None
    activation_peak_bytes: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def param_buffer_bytes(model: nn.Module) -> tuple[int, int]:
    """(parameter bytes, buffer bytes) of ``model``, each shared tensor counted once."""
    return C.tensor_bytes(model.parameters()), C.tensor_bytes(model.buffers())


def _status_kib(field: str) -> int:
    with open(_STATUS) as f:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    if m is None:
        raise OSError(f"{field} not in {_STATUS}")
    return int(m.group(1)) * 1024


def can_reset_peak_rss() -> bool:
    """True where the kernel lets this process reset its peak RSS (Linux /proc/self/clear_refs)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


class _RssSampler:
    def __init__(self, interval_s: float = 0.001) -> None:
        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pybench-rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def tracked_peak(model: nn.Module, inputs: Any, fn: Any) -> tuple[int, int]:
    """Run ``fn()`` under torch's MemTracker; (peak live tensor bytes of the whole run, activation + temporary
    bytes at that peak). ``model``'s parameters and buffers and the ``inputs`` count from the start."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, *C._tensors(inputs))
    with tracker:
        fn()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()), {})
    acts = sum(v for k, v in peak.items() if getattr(k, "name", None) in ("ACT", "TEMP"))
    return int(peak.get("Total", 0)), int(acts)


def cpu_peak(fn: Any, method: str | None = None) -> tuple[int, int, str]:
    """Run ``fn()`` and return (baseline RSS, peak RSS, method) in bytes."""
    method = method or ("clear_refs+VmHWM" if can_reset_peak_rss() else "psutil-sampling")
    C.trim_heap()  # hand freed pages back first, or reuse of the allocator's free lists would hide the growth
    if method == "clear_refs+VmHWM":
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")  # VmHWM := current RSS
        baseline = _status_kib("VmRSS")
        fn()
        return baseline, _status_kib("VmHWM"), method
    with _RssSampler() as s:
        baseline = s.peak
        fn()
    return baseline, s.peak, method


def memory(model: nn.Module, example_inputs: C.Inputs, device: str | torch.device = "cpu",
           dtype: str | torch.dtype = torch.float32, batch_size: int | None = None, channels_last: bool = False,
           inference_mode: bool = True, cpu_method: str | None = None) -> MemoryResult:
    """Peak memory of one forward of ``model(example_inputs)`` (after one unmeasured warm-up call), plus parameter
    and buffer bytes of the model in ``dtype``.

    Args mirror :func:`pybench.measure.latency`; ``cpu_method``: "mem_tracker" (the default: live tensor bytes),
    or the process's RSS by "clear_refs+VmHWM" or "psutil-sampling".
    An out-of-memory is caught, memory released, and returned as ``error``; bad device / dtype / inputs raise
    ValueError.
    """
    dev = C.resolve_device(device)
    dt = C.resolve_dtype(dtype, dev)
    if cpu_method not in (None, "mem_tracker", "clear_refs+VmHWM", "psutil-sampling"):
        raise ValueError(f"cpu_method={cpu_method!r}: expected None, 'mem_tracker', 'clear_refs+VmHWM' or "
                         "'psutil-sampling'")
    if cpu_method == "clear_refs+VmHWM" and not can_reset_peak_rss():
        raise ValueError("cpu_method='clear_refs+VmHWM' is not possible here (no writable /proc/self/clear_refs); "
                         "use None or 'psutil-sampling'")
    name = type(model).__name__
    n = batch_size if batch_size is not None else C.batch_size_of(example_inputs)
    method = "cuda.max_memory_allocated" if dev.type == "cuda" else (cpu_method or "mem_tracker")
    result = MemoryResult(device=str(dev), dtype=C.dtype_name(dt), batch_size=n, method=method,
                          param_bytes=0, buffer_bytes=0)
    m: Any = None
    x: Any = None
    try:
        with C.on_device(dev):
            x = C.prepare_inputs(example_inputs, dev, dt, batch_size, channels_last)
            m = C.prepare_model(model, dev, dt, channels_last)
            result.param_bytes, result.buffer_bytes = param_buffer_bytes(m)
            out = C.check_call(m, x, dev, dt, inference_mode, name)  # warm-up: one-time allocations are no peak
            del out

            def forward() -> None:
                with C.grad_mode(inference_mode):
                    C.call(m, x)  # the output is dropped here, after it counted towards the peak
                C.synchronize(dev)

            if dev.type == "cuda":
                C.release_memory(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                result.baseline_bytes = torch.cuda.memory_allocated(dev)
                forward()
                result.peak_total_bytes = torch.cuda.max_memory_allocated(dev)
                result.reserved_peak_bytes = torch.cuda.max_memory_reserved(dev)
            elif method == "mem_tracker":
                result.input_bytes = C.tensor_bytes(C._tensors(x))
                result.baseline_bytes = result.param_bytes + result.buffer_bytes + result.input_bytes
                result.peak_total_bytes, result.activation_peak_bytes = tracked_peak(m, x, forward)
                result.peak_total_bytes = max(result.peak_total_bytes, result.baseline_bytes)
            else:
                gc.collect()
                result.baseline_bytes, result.peak_total_bytes, _ = cpu_peak(forward, method)
            result.peak_bytes = max(0, result.peak_total_bytes - result.baseline_bytes)
    except Exception as e:
        if not C.is_oom(e):
            raise
        result.error = C.oom_message("memory", e, dev)
    if result.error is not None:
        m = x = None  # outside the except block, so the traceback no longer holds the tensors
        C.release_memory(dev)
    return result
