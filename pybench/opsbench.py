"""Fused ops vs eager PyTorch on real layer sizes, with the machine's copy and sum bandwidth measured in the same run.

Used by ``pybench ops-bench`` and benchmarks/test_bench_ops.py. Eager baselines are the ones the fused ops replace:
``abs().sum + pow(2).sum + sum`` for channel_stats, ``var_mean + (x == 0).sum`` for activation_stats, two
``index_select`` for channel_gather. Fused and eager runs are interleaved so that load from other processes falls on
both alike; each figure is the median of ``repeats`` runs.
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

    def moved_bytes(self, args: dict[str, torch.Tensor]) -> int:
        x = args["x"]
        if self.op == "channel_gather":  # read what is kept, write it once
            kept = x.numel() * x.element_size() * args["out_idx"].numel() * args["in_idx"].numel()
            return 2 * kept // (x.shape[0] * x.shape[1])
        return x.numel() * x.element_size()


@dataclass
class BenchRow:
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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _weight(shape: tuple[int, ...]) -> Callable[[torch.device], dict[str, torch.Tensor]]:
    return lambda device: {"x": torch.randn(shape, device=device)}


def _activation(shape: tuple[int, ...], channels_last: bool = False) -> Callable[[torch.device], dict]:
    def make(device: torch.device) -> dict[str, torch.Tensor]:
        x = torch.relu(torch.randn(shape, device=device))
        return {"x": x.contiguous(memory_format=torch.channels_last) if channels_last else x}

    return make


def _gather(shape: tuple[int, ...]) -> Callable[[torch.device], dict[str, torch.Tensor]]:
    def make(device: torch.device) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        keep_out = torch.randperm(shape[0], generator=g)[: shape[0] // 2].sort().values
        keep_in = torch.randperm(shape[1], generator=g)[: shape[1] // 2].sort().values
        return {"x": torch.randn(shape, device=device), "out_idx": keep_out.to(device), "in_idx": keep_in.to(device)}

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


def cases() -> list[OpCase]:
    """The layer sizes of issue 2: ResNet-50 and VGG-16 weights, batch-64 activations."""
    cs, act, gather = "channel_stats", "activation_stats", "channel_gather"
    return [
        OpCase(cs, "resnet50 layer4 conv2", (512, 512, 3, 3), _weight((512, 512, 3, 3)),
               lambda x: ops.channel_stats(x, 0), _eager_channel_stats, 5.0),
        OpCase(cs, "resnet50 layer4 conv3", (2048, 512, 1, 1), _weight((2048, 512, 1, 1)),
               lambda x: ops.channel_stats(x, 0), _eager_channel_stats, 5.0),
        OpCase(cs, "2048x512x3x3 (FACTS.md)", (2048, 512, 3, 3), _weight((2048, 512, 3, 3)),
               lambda x: ops.channel_stats(x, 0), _eager_channel_stats, 5.0),
        OpCase(cs, "vgg16 fc1", (4096, 25088), _weight((4096, 25088)),
               lambda x: ops.channel_stats(x, 0), _eager_channel_stats, 5.0),
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
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved(a: Callable[[], object], b: Callable[[], object], device: torch.device,
                 repeats: int) -> tuple[float, float]:
    a(), b()  # warm-up: allocator, first-touch, kernel selection
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_time_once(a, device))
        tb.append(_time_once(b, device))
    return statistics.median(ta), statistics.median(tb)


def bandwidth(device: str | torch.device = "cpu", mbytes: int = 256, repeats: int = 5) -> dict[str, float]:
    """GB/s of a plain copy (read + write counted) and a plain sum (read) over ``mbytes`` of fp32."""
    device = torch.device(device)
    x = torch.rand(int(mbytes * MB) // 4, device=device)
    out = torch.empty_like(x)
    copy_s, sum_s = _interleaved(lambda: out.copy_(x), lambda: x.sum(), device, repeats)
    nbytes = x.numel() * 4
    return {"copy_gbs": 2 * nbytes / copy_s / 1e9, "sum_gbs": nbytes / sum_s / 1e9, "mbytes": nbytes / MB}


def run(device: str | torch.device = "cpu", repeats: int = 5, selected: list[OpCase] | None = None,
        progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Times every case (fused vs eager, interleaved); returns one row per case."""
    device = torch.device(device)
    rows = []
    for case in selected or cases():
        if progress is not None:
            progress(f"{case.op} {case.layer}")
        args = case.make(device)
        eager_s, fused_s = _interleaved(lambda a=args, c=case: c.eager(**a), lambda a=args, c=case: c.fused(**a),
                                        device, repeats)
        moved = case.moved_bytes(args)
        rows.append(BenchRow(op=case.op, layer=case.layer, shape="x".join(map(str, case.shape)),
                             mbytes=round(args["x"].numel() * args["x"].element_size() / MB, 1),
                             eager_ms=eager_s * 1e3, fused_ms=fused_s * 1e3, ratio=eager_s / fused_s,
                             fused_gbs=moved / fused_s / 1e9, target_ratio=case.target_ratio,
                             ratio_met=eager_s / fused_s >= case.target_ratio))
        del args
    return rows


def table(rows: list[BenchRow], bw: dict[str, float], tablefmt: str = "github") -> str:
    """The benchmark as a table, each fused GB/s also as a share of the measured copy and sum bandwidth."""
    from tabulate import tabulate

    body = [
        [r.op, r.layer, r.shape, f"{r.mbytes:.1f}", f"{r.eager_ms:.2f}", f"{r.fused_ms:.2f}", f"{r.ratio:.1f}x",
         f">= {r.target_ratio:g}x " + ("yes" if r.ratio_met else "NO"), f"{r.fused_gbs:.1f}",
         f"{100 * r.fused_gbs / bw['copy_gbs']:.0f} %", f"{100 * r.fused_gbs / bw['sum_gbs']:.0f} %"]
        for r in rows
    ]
    head = ["op", "layer", "shape", "MB", "eager ms", "fused ms", "speedup", "target", "fused GB/s", "of copy",
            "of sum"]
    note = (f"copy {bw['copy_gbs']:.1f} GB/s (read + write), sum {bw['sum_gbs']:.1f} GB/s (read), "
            f"over {bw['mbytes']:.0f} MB fp32, measured in this run")
    return tabulate(body, head, tablefmt=tablefmt) + "\n\n" + note
