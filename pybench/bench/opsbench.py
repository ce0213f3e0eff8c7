"""Fused ops vs eager PyTorch on real layer sizes, with the machine's copy and sum bandwidth measured in the same run.

Used by ``pybench ops-bench`` and benchmarks/test_bench_ops.py. Eager baselines are the ones the fused ops replace:
``abs().sum + pow(2).sum + sum`` for channel_stats, ``var_mean + (x == 0).sum`` for activation_stats, two
``index_select`` for channel_gather. Fused and eager runs are interleaved so that load from other processes falls on
both alike; each figure is the median of ``repeats`` runs.

Two sets of cases: real layer sizes (:func:`cases`), and with ``large=True`` also tensors of 256 MB and more in
fp32 / fp16 / bf16, NCHW and channels_last, where a memory-bound op should move its bytes at >= 85 % of the copy
bandwidth on a GPU (:data:`BANDWIDTH_TARGET`; judged against a plain copy measured in the same run). On CUDA each sample
times back-to-back calls between two CUDA events (enough calls to last :data:`CUDA_SAMPLE_S`), so launch and
synchronisation overhead stay out of the GB/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from pybench import ops

__all__ = ["OpCase", "BenchRow", "bandwidth", "cases", "run", "table"]

MB = 1e6
LARGE_MB = 256  # a case whose input is at least this big is judged on bandwidth
BANDWIDTH_TARGET = 0.85  # share of the copy bandwidth a memory-bound op should reach on large tensors
CUDA_SAMPLE_S = 2e-3  # a CUDA sample lasts at least this long (several calls between two events)


@dataclass(frozen=True)
class OpCase:
    """One benchmark: a fused call, its eager equivalent, and the bytes the fused op must move at least once."""

    op: str
    layer: str
    shape: tuple[int, ...]
    make: Callable[[torch.device], dict[str, torch.Tensor]]
    fused: Callable[..., object]
    eager: Callable[..., object]
    target_ratio: float  # fused must be this many times faster than eager
    dtype: torch.dtype = torch.float32

    def moved_bytes(self, args: dict[str, torch.Tensor]) -> int:
        x = args["x"]
        if self.op == "channel_gather":  # read what is kept, write it once
            kept = x.numel() * x.element_size() * args["out_idx"].numel() * args["in_idx"].numel()
            return 2 * kept // (x.shape[0] * x.shape[1])
        return x.numel() * x.element_size()


@dataclass
class BenchRow:
    """One timed case. ``copy_share`` is fused GB/s over the run's copy GB/s; ``bandwidth_met`` is None where the
    case is not judged on bandwidth (smaller than :data:`LARGE_MB`, or not on a GPU)."""

    op: str
    layer: str
    shape: str
    mbytes: float
    eager_ms: float
    fused_ms: float
    ratio: float
    fused_gbs: float
    target_ratio: float
    ratio_met: bool
    dtype: str = "float32"
    calls_per_sample: int = 1
    copy_share: float | None = None
    bandwidth_met: bool | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _weight(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Callable[[torch.device], dict]:
    return lambda device: {"x": torch.randn(shape, device=device, dtype=dtype)}


def _activation(shape: tuple[int, ...], channels_last: bool = False,
                dtype: torch.dtype = torch.float32) -> Callable[[torch.device], dict]:
    def make(device: torch.device) -> dict[str, torch.Tensor]:
        x = torch.relu(torch.randn(shape, device=device, dtype=dtype))
        return {"x": x.contiguous(memory_format=torch.channels_last) if channels_last else x}

    return make


def _gather(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Callable[[torch.device], dict]:
    def make(device: torch.device) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        keep_out = torch.randperm(shape[0], generator=g)[: shape[0] // 2].sort().values
        keep_in = torch.randperm(shape[1], generator=g)[: shape[1] // 2].sort().values
        return {"x": torch.randn(shape, device=device, dtype=dtype), "out_idx": keep_out.to(device),
                "in_idx": keep_in.to(device)}

    return make


def _eager_channel_stats(x: torch.Tensor) -> object:
    dims = tuple(range(1, x.dim()))
    return x.abs().sum(dims), x.pow(2).sum(dims), x.sum(dims)


def _eager_activation_stats(x: torch.Tensor) -> object:
    dims = (0, *range(2, x.dim()))
    return torch.var_mean(x, dims), (x == 0).sum(dims)


def _fused_gather(x: torch.Tensor, out_idx: torch.Tensor, in_idx: torch.Tensor) -> torch.Tensor:
    return ops.channel_gather(x, out_idx, in_idx)


def _eager_gather(x: torch.Tensor, out_idx: torch.Tensor, in_idx: torch.Tensor) -> torch.Tensor:
    return x.index_select(0, out_idx).index_select(1, in_idx)


def _stats0(x: torch.Tensor) -> torch.Tensor:
    return ops.channel_stats(x, 0)


def _stats1(x: torch.Tensor) -> torch.Tensor:
    return ops.channel_stats(x, 1)


def _eager_channel_stats1(x: torch.Tensor) -> object:
    dims = (0, *range(2, x.dim()))
    return x.abs().sum(dims), x.pow(2).sum(dims), x.sum(dims)


def large_cases() -> list[OpCase]:
    """Inputs of 256 MB and more (>> any GPU's L2): every op in fp32 / fp16 / bf16, activations NCHW and
    channels_last. These are the cases judged against :data:`BANDWIDTH_TARGET`."""
    cs, act, gather = "channel_stats", "activation_stats", "channel_gather"
    half = (torch.float16, torch.bfloat16)
    out = [OpCase(cs, "16384x4096 per row (dim 0)", (16384, 4096), _weight((16384, 4096)), _stats0,
                  _eager_channel_stats, 5.0),
           OpCase(cs, "4096x16384 per column (dim 1)", (4096, 16384), _weight((4096, 16384)), _stats1,
                  _eager_channel_stats1, 5.0)]
    out += [OpCase(cs, "16384x8192 per row (dim 0)", (16384, 8192), _weight((16384, 8192), dt), _stats0,
                   _eager_channel_stats, 5.0, dt) for dt in half]
    for dt in (torch.float32, *half):
        shape = (64, 256, 112, 112) if dt == torch.float32 else (128, 256, 112, 112)  # 822 MB either way
        out += [OpCase(act, "b64/b128 256x112x112", shape, _activation(shape, dtype=dt),
                       ops.activation_stats, _eager_activation_stats, 10.0, dt),
                OpCase(act, "same, channels_last", shape, _activation(shape, True, dt),
                       ops.activation_stats, _eager_activation_stats, 10.0, dt)]
    out += [OpCase(gather, "4096x4096x3x3 keep 1/2 x 1/2", (4096, 4096, 3, 3), _gather((4096, 4096, 3, 3)),
                   _fused_gather, _eager_gather, 1.5),
            OpCase(gather, "8192x8192x3x3 keep 1/2 x 1/2", (8192, 8192, 3, 3),
                   _gather((8192, 8192, 3, 3), torch.float16), _fused_gather, _eager_gather, 1.5, torch.float16),
            OpCase(gather, "16384x16384 keep 1/2 x 1/2", (16384, 16384), _gather((16384, 16384)),
                   _fused_gather, _eager_gather, 1.5)]
    return out


def cases(large: bool = False) -> list[OpCase]:
    """The layer sizes of issue 2: ResNet-50 and VGG-16 weights, batch-64 activations (plus :func:`large_cases`
    with ``large=True``)."""
    cs, act, gather = "channel_stats", "activation_stats", "channel_gather"
    return [
        OpCase(cs, "resnet50 layer4 conv2", (512, 512, 3, 3), _weight((512, 512, 3, 3)),
               _stats0, _eager_channel_stats, 5.0),
        OpCase(cs, "resnet50 layer4 conv3", (2048, 512, 1, 1), _weight((2048, 512, 1, 1)),
               _stats0, _eager_channel_stats, 5.0),
        OpCase(cs, "2048x512x3x3 (FACTS.md)", (2048, 512, 3, 3), _weight((2048, 512, 3, 3)),
               _stats0, _eager_channel_stats, 5.0),
        OpCase(cs, "vgg16 fc1", (4096, 25088), _weight((4096, 25088)),
               _stats0, _eager_channel_stats, 5.0),
        OpCase(act, "resnet50 layer1 out, b64", (64, 256, 56, 56), _activation((64, 256, 56, 56)),
               lambda x: ops.activation_stats(x), _eager_activation_stats, 10.0),
        OpCase(act, "same, channels_last", (64, 256, 56, 56), _activation((64, 256, 56, 56), True),
               lambda x: ops.activation_stats(x), _eager_activation_stats, 10.0),
        OpCase(act, "resnet50 layer4 out, b64", (64, 2048, 7, 7), _activation((64, 2048, 7, 7)),
               lambda x: ops.activation_stats(x), _eager_activation_stats, 10.0),
        OpCase(gather, "2048x512x3x3 keep 1/2 x 1/2", (2048, 512, 3, 3), _gather((2048, 512, 3, 3)),
               _fused_gather, _eager_gather, 1.5),
        OpCase(gather, "vgg16 fc1 keep 1/2 x 1/2", (4096, 25088), _gather((4096, 25088)),
               _fused_gather, _eager_gather, 1.5),
    ] + (large_cases() if large else [])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Seconds per call over ``calls`` back-to-back calls: CUDA events on a GPU, perf_counter around a
    synchronised span elsewhere."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    start_s = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start_s) / calls


def _calls_per_sample(fns: tuple[Callable[[], object], ...], device: torch.device) -> int:
    """1 on the CPU; on CUDA enough calls that a sample of the faster function lasts CUDA_SAMPLE_S (<= 1000)."""
    if device.type != "cuda":
        return 1
    once = min(_time_calls(fn, device, 1) for fn in fns)
    return max(1, min(1000, int(CUDA_SAMPLE_S / max(once, 1e-7)) + 1))


def _interleaved(a: Callable[[], object], b: Callable[[], object], device: torch.device,
                 repeats: int) -> tuple[float, float, int]:
    """(median seconds per call of a, of b, calls per sample), a and b timed alternately."""
    a(), b()  # warm-up: allocator, first-touch, kernel selection
    calls = _calls_per_sample((a, b), device)
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_time_calls(a, device, calls))
        tb.append(_time_calls(b, device, calls))
    return statistics.median(ta), statistics.median(tb), calls


def bandwidth(device: str | torch.device = "cpu", mbytes: int = 256, repeats: int = 5) -> dict[str, float]:
    """GB/s of a plain copy (read + write counted) and a plain sum (read) over ``mbytes`` of fp32."""
    device = torch.device(device)
    x = torch.rand(int(mbytes * MB) // 4, device=device)
    out = torch.empty_like(x)
    copy_s, sum_s, _ = _interleaved(lambda: out.copy_(x), lambda: x.sum(), device, repeats)
    nbytes = x.numel() * 4
    return {"copy_gbs": 2 * nbytes / copy_s / 1e9, "sum_gbs": nbytes / sum_s / 1e9, "mbytes": nbytes / MB}


def run(device: str | torch.device = "cpu", repeats: int = 5, selected: list[OpCase] | None = None,
        progress: Callable[[str], None] | None = None, copy_gbs: float | None = None) -> list[BenchRow]:
    """Times every case (fused vs eager, interleaved); returns one row per case. With ``copy_gbs`` (the copy
    bandwidth of :func:`bandwidth`, same run) each row carries its share of it, and on CUDA cases of LARGE_MB and
    more are judged against BANDWIDTH_TARGET (a CPU's kernels are judged on their ratio to eager only)."""
    device = torch.device(device)
    rows = []
    for case in selected or cases():
        if progress is not None:
            progress(f"{case.op} {case.layer} {_dtype_name(case.dtype)}")
        args = case.make(device)
        eager_s, fused_s, calls = _interleaved(lambda a=args, c=case: c.eager(**a),
                                               lambda a=args, c=case: c.fused(**a), device, repeats)
        moved = case.moved_bytes(args)
        mbytes = args["x"].numel() * args["x"].element_size() / MB
        gbs = moved / fused_s / 1e9
        share = gbs / copy_gbs if copy_gbs else None
        rows.append(BenchRow(op=case.op, layer=case.layer, shape="x".join(map(str, case.shape)),
                             mbytes=round(mbytes, 1), eager_ms=eager_s * 1e3, fused_ms=fused_s * 1e3,
                             ratio=eager_s / fused_s, fused_gbs=gbs, target_ratio=case.target_ratio,
                             ratio_met=eager_s / fused_s >= case.target_ratio, dtype=_dtype_name(case.dtype),
                             calls_per_sample=calls, copy_share=share,
                             bandwidth_met=bandwidth_verdict(share, mbytes, device)))
        del args
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next large case gets the memory back
    return rows


def bandwidth_verdict(copy_share: float | None, mbytes: float, device: torch.device) -> bool | None:
    """Whether a case met BANDWIDTH_TARGET; None where it is not judged (no copy figure, under LARGE_MB, or not a
    GPU)."""
    if copy_share is None or mbytes < LARGE_MB or device.type != "cuda":
        return None
    return copy_share >= BANDWIDTH_TARGET


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def table(rows: list[BenchRow], bw: dict[str, float], tablefmt: str = "github") -> str:
    """The benchmark as a table, each fused GB/s also as a share of the measured copy and sum bandwidth."""
    from tabulate import tabulate

    def judged(r: BenchRow) -> str:
        if r.bandwidth_met is None:
            return ""
        return f">= {BANDWIDTH_TARGET:.0%} " + ("yes" if r.bandwidth_met else "NO")

    body = [
        [r.op, r.layer, r.shape, r.dtype, f"{r.mbytes:.1f}", f"{r.eager_ms:.3f}", f"{r.fused_ms:.3f}",
         f"{r.ratio:.1f}x", f">= {r.target_ratio:g}x " + ("yes" if r.ratio_met else "NO"), f"{r.fused_gbs:.1f}",
         f"{100 * r.fused_gbs / bw['copy_gbs']:.0f} %", judged(r), f"{100 * r.fused_gbs / bw['sum_gbs']:.0f} %"]
        for r in rows
    ]
    head = ["op", "layer", "shape", "dtype", "MB", "eager ms", "fused ms", "speedup", "target", "fused GB/s",
            "of copy", f"copy target (>= {LARGE_MB} MB)", "of sum"]
    note = (f"copy {bw['copy_gbs']:.1f} GB/s (read + write), sum {bw['sum_gbs']:.1f} GB/s (read), "
            f"over {bw['mbytes']:.0f} MB fp32, measured in this run")
    return tabulate(body, head, tablefmt=tablefmt) + "\n\n" + note
