"""Shared input handling for the instruments: device, dtype, example inputs, model preparation, error triage.

Every instrument accepts the same ``device`` / ``dtype`` / ``example_inputs`` arguments and must fail the same way on
bad ones, so the checks live here once.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pybench import _gc

Inputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
}


# what kernels say when they lack a dtype ("cdist" not implemented for 'Half', linalg's "Low precision dtypes")
_DTYPE_FAILURES = ("not implemented for 'Half'", "not implemented for 'BFloat16'", "Low precision dtypes",
                   "Unsupported dtype", "doesn't handle types other than")


class MeasureInputError(ValueError):
    """The model cannot run on the given inputs / device / dtype; the message names what and how to fix it."""


def resolve_device(device: str | torch.device | int | None) -> torch.device:
    """Turn ``device`` into a ``torch.device`` that exists here, or raise a ``ValueError`` saying why not."""
    if device is None:
        device = "cpu"
    if isinstance(device, int):
        device = f"cuda:{device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device name; expected 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"device={device!r}: only 'cpu' and 'cuda[:N]' are supported by pybench.measure")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} is not available here: torch.cuda.is_available() is False "
                         "(no GPU, no driver, or a CPU-only torch build); use device='cpu'")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(f"device={device!r} is not available here: {count} CUDA device(s) visible "
                         f"(indices 0..{count - 1}); check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Turn ``dtype`` into a floating ``torch.dtype`` the device can run, or raise a ``ValueError``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        try:
            dtype = _DTYPE_NAMES[dtype.lower()]
        except KeyError:
            raise ValueError(f"dtype={dtype!r} is not known; expected one of {sorted(_DTYPE_NAMES)} "
                             "or a torch floating dtype") from None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r}: expected a floating torch dtype (torch.float32, torch.float16, "
                         "torch.bfloat16)")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype=bfloat16 cannot run on {device} ({torch.cuda.get_device_name(device)}): "
                         "the GPU has no bf16 support; use dtype=torch.float16 or torch.float32")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _map_tensors(obj: Any, fn: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by ``tensors``, a tensor that appears twice counted once."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen.setdefault(id(t), t.numel() * t.element_size())
    return sum(seen.values())


def input_shapes(inputs: Any) -> str:
    """A short description of the tensors in ``inputs``: ``[8, 3, 224, 224] float32``, comma separated."""
    shapes = [f"{list(t.shape)} {dtype_name(t.dtype)}" for t in _tensors(inputs)]
    return ", ".join(shapes) if shapes else "(no tensors)"


def batch_size_of(inputs: Any) -> int:
    """The leading dim of the first tensor input (1 for a 0-d tensor): the number of items one call processes."""
    tensors = _tensors(inputs)
    if not tensors:
        raise ValueError("example_inputs holds no tensor; pass a Tensor, a tuple/list of tensors or a dict of them")
    return int(tensors[0].shape[0]) if tensors[0].dim() > 0 else 1


def prepare_inputs(inputs: Inputs, device: torch.device, dtype: torch.dtype, batch_size: int | None = None,
                   channels_last: bool = False) -> Any:
    """Copy ``inputs`` to ``device``; floating tensors take ``dtype``, 4-d ones ``channels_last`` when asked.

    ``batch_size`` resizes dim 0 of every tensor: the items are repeated (or cut) so a batch-1 example can stand for
    any batch.
    """
    n = batch_size_of(inputs)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int (or None to keep the inputs' batch)")

    def convert(t: torch.Tensor) -> torch.Tensor:
        if batch_size is not None and batch_size != n and t.dim() > 0:
            if t.shape[0] != n:
                raise ValueError(f"batch_size={batch_size}: the input tensors disagree on dim 0 "
                                 f"({input_shapes(inputs)}); give inputs that share their batch dim")
            reps = -(-batch_size // n)
            t = t.repeat(reps, *([1] * (t.dim() - 1)))[:batch_size]
        t = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.contiguous() if not (channels_last and t.dim() == 4) else t

    return _map_tensors(inputs, convert)


def on_device_or_copy(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` itself when every parameter and buffer is already on ``device``, else a copy moved there (the
    caller's model stays where it is)."""
    dev = torch.device(device)
    if all(t.device == dev for t in [*model.parameters(), *model.buffers()]):
        return model
    return copy.deepcopy(model).to(dev)


def prepare_model(model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device`` in ``dtype``; the caller's model is never modified."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    try:
        model = copy.deepcopy(model).eval()
    except Exception as e:
        raise TypeError(f"model: {type(model).__name__} cannot be deep-copied ({type(e).__name__}: {e}); "
                        "pybench.measure measures a copy so the caller's model is untouched - pass a plain "
                        "nn.Module (compile inside the measurement with compile=True)") from e
    model = model.to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def call(model: nn.Module | Any, inputs: Any) -> Any:
    """``model(*inputs)`` / ``model(**inputs)`` / ``model(inputs)`` by the inputs' container."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def grad_mode(inference_mode: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.inference_mode() if inference_mode else torch.no_grad()


def is_oom(e: BaseException) -> bool:
    """True for CUDA out-of-memory and for the CPU allocator's failure to allocate."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, (RuntimeError, MemoryError)) and (
        isinstance(e, MemoryError) or "out of memory" in msg or "can't allocate memory" in msg
        or "DefaultCPUAllocator" in msg)


def release_memory(device: torch.device | None = None) -> None:
    """Give cached memory back (after an OOM, before a memory measurement)."""
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    trim_heap()


def trim_heap() -> None:
    """Ask glibc to hand freed heap pages back to the OS, so RSS reflects live memory (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def oom_message(what: str, e: BaseException, device: torch.device) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"out of memory during {what} on {device}: {first}"


def check_call(model: nn.Module, inputs: Any, device: torch.device, dtype: torch.dtype, inference_mode: bool,
               name: str | None = None) -> Any:
    """Run one forward and translate failures into clear errors; OOM errors pass through for the caller to report.

    A dtype the device's kernels do not implement raises ``MeasureInputError`` naming the dtype; any other failure
    raises it naming the model and the input shapes (the usual cause: inputs that do not fit the model).
    """
    name = name or type(model).__name__
    try:
        with grad_mode(inference_mode):
            return call(model, inputs)
    except Exception as e:
        if is_oom(e):
            raise
        msg = str(e)
        if dtype != torch.float32 and any(s in msg for s in _DTYPE_FAILURES):
            raise MeasureInputError(
                f"dtype={dtype_name(dtype)} cannot run {name} on {device}: {msg.splitlines()[0]}; "
                "choose a dtype this device supports (torch.float32 always works)") from e
        raise MeasureInputError(
            f"model {name} cannot run on inputs of shape {input_shapes(inputs)} ({device}): "
            f"{type(e).__name__}: {msg.splitlines()[0] if msg else ''}; pass example_inputs the model accepts "
            "(e.g. torch.randn(1, 3, 224, 224) for an ImageNet model, 1x3x32x32 for a CIFAR one)") from e


def on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Make ``device`` the current CUDA device (streams, events and graphs use the current one)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Collect, then keep Python's garbage collector off while timing (as timeit and torch.utils.benchmark do)."""
    with _gc.paused(collect=True):
        yield


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block (None: leave it), restoring it afterwards."""
    saved = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def pin_cpus(cpus: Sequence[int], what: str = "cpu_affinity") -> set[int]:
    """Pin this process to ``cpus``; returns the CPUs it could run on before. ValueError (naming ``what`` and the
    CPUs allowed) when the OS cannot pin or a CPU is not this process's to use."""
    if not hasattr(os, "sched_getaffinity"):
        raise ValueError(f"{what}={list(cpus)}: this OS cannot pin a process; drop the option")
    saved = os.sched_getaffinity(0)
    if not set(cpus) <= saved:
        raise ValueError(f"{what}={list(cpus)}: this process may only run on CPUs {sorted(saved)}; pick CPUs from "
                         "that list or drop the option")
    os.sched_setaffinity(0, set(cpus))
    return saved


@contextlib.contextmanager
def cpu_affinity(cpus: Sequence[int] | None) -> Iterator[list[int]]:
    """Pin this process to ``cpus`` for the block (None: leave it), restoring the old set afterwards; yields the
    CPUs the process may run on (empty where the OS cannot say)."""
    if not cpus:
        yield sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        return
    saved = pin_cpus(cpus)
    try:
        yield sorted(os.sched_getaffinity(0))
    finally:
        os.sched_setaffinity(0, saved)


Clock = Callable[[Callable[[], Any], int], float]


# an inference backend's hook: (eval-mode model on its device and dtype, inputs there) -> what to call instead
Wrap = Callable[[nn.Module, Any], Callable[..., Any]]


def block_clock(device: torch.device) -> tuple[Clock, str]:
    """(fn(call, n) -> seconds that n calls of ``call`` took, the timer's name): CUDA events around the block,
    the device synchronised before it so no earlier work is counted, or perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_block(call: Callable[[], Any], n: int) -> float:
            torch.cuda.synchronize(device)
            start.record()
            for _ in range(n):
                call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return cuda_block, "cuda_events"

    def cpu_block(call: Callable[[], Any], n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        return time.perf_counter() - t0

    return cpu_block, "perf_counter"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
