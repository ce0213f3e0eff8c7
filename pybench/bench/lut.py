"""Measuring latency tables: ``pb.latency_table(model, example_inputs, device=, backend=, dtype=, batch_size=)``.

Every layer the trace slices (convolutions, linears, norms) is timed alone on the target, on an input of the shape
it sees in the model: dense once, then at a sweep of channel counts -- every multiple of ``align`` (thinned to
``max_points``), plus ``between`` counts just below a step (where the hardware's tiles are ragged) and the least
count -- for its output channels and for its input channels. Each count is timed *paired* against the dense layer
(:func:`pybench.measure.paired_latency`: alternating blocks, the median ratio), so a busy machine moves both
sides alike. Layers of the same configuration and input shape (repeated blocks) are measured once. The whole model
is timed dense too: what the layers do not account for (activations, additions, pooling) is its remainder. The
result is a :class:`pybench.prune.lut.LatencyTable`, which :func:`pybench.plan` uses with ``latency_budget=``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import pybench
from pybench.measure import _common as C
from pybench.measure import latency, paired_latency
from pybench.measure.environment import environment
from pybench.prune import (
    PRUNERS,
    LatencyTable,
    LayerCost,
    LayerDim,
    apply,
    fit_floor,
    graph_signature,
    plan,
    shrink_module,
    trace,
)
from pybench.prune.criteria import score

__all__ = ["latency_table", "sample_counts"]

Progress = Callable[[str], None]


def sample_counts(n: int, multiple: int = 1, align: int = 8, max_points: int = 8, between: int = 2) -> list[int]:
    """The channel counts a dimension of ``n`` is timed at (ascending, ``n`` last): multiples of ``align``
    (and of ``multiple``, a grouped layer's group count), at most ``max_points`` of them evenly spread, ``between``
    counts one ``multiple`` below a step, and the least count."""
    step = align * multiple // math.gcd(align, multiple)
    aligned = list(range(step, n, step))
    if len(aligned) > max_points:
        aligned = [aligned[i] for i in np.unique(np.linspace(0, len(aligned) - 1, max_points).round().astype(int))]
    below = [a - multiple for a in aligned[1::max(1, len(aligned) // max(between, 1))][:between] if a - multiple > 0]
    counts = {multiple, n, *aligned, *below}
    return sorted(c for c in counts if 0 < c <= n and c % multiple == 0)


def _spread(n: int, count: int, parts: int) -> torch.Tensor:
    """``count`` of ``n`` indices, the same number from each of ``parts`` equal partitions (a grouped conv's)."""
    per = n // parts
    k = count // parts
    return (torch.arange(parts).repeat_interleave(k) * per + torch.arange(k).repeat(parts)).to(torch.int64)


def _composition(graph: Any, name: str, role: str) -> tuple[int, int, dict[int, int]] | None:
    """(size, fixed indices, {group: indices}) of a module's ``role`` slot, or None when it has none."""
    lab = graph.slots.get(("module", name, role))
    if lab is None:
        return None
    grp = np.where(lab >= 0, graph.unit_group[np.maximum(lab, 0)], -1)
    ids, counts = np.unique(grp[grp >= 0], return_counts=True)
    return int(lab.size), int((grp < 0).sum()), {int(g): int(c) for g, c in zip(ids, counts, strict=True)}


def _record_inputs(model: nn.Module, modules: dict[str, nn.Module], names: list[str],
                   inputs: tuple) -> dict[str, tuple[torch.Size, int]]:
    """(input shape at batch 1, calls per forward) of each named module (of ``modules``, the model's), from one
    real forward on the CPU."""
    seen: dict[str, list] = {}
    handles = []
    for name in names:
        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            if name in seen:
                seen[name][1] += 1
            elif args and isinstance(args[0], torch.Tensor):
                seen[name] = [args[0].shape, 1]
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*[x[:1] for x in inputs])
    finally:
        for h in handles:
            h.remove()
    return {k: (v[0], v[1]) for k, v in seen.items()}


def _layer_kind(m: nn.Module) -> tuple[bool, int, int]:
    """(tied: one count for in and out, in-partitions, out-partitions) of a layer."""
    if isinstance(m, nn.modules.conv._ConvNd):
        groups = m.groups
        depthwise = groups == m.in_channels and m.in_channels == m.out_channels
        return depthwise, (1 if depthwise else groups), (1 if depthwise else groups)
    return not isinstance(m, nn.Linear), 1, 1


def latency_table(model: nn.Module, example_inputs: Any, device: str = "cpu", backend: str = "eager",
                  dtype: str | torch.dtype = torch.float32, batch_size: int | None = None, *, align: int = 8,
                  max_points: int = 8, between: int = 2, target_ci: float = 0.03, max_time_s: float = 1.0,
                  threads: int | None = None, progress: Progress | None = None) -> LatencyTable:
    """Measure the latency table of ``model`` on ``device`` / ``backend`` / ``dtype`` / ``batch_size``.

    Args:
        model: the dense network (not modified).
        example_inputs: a tensor or tuple of tensors; dim 0 is replaced by ``batch_size`` when given.
        device, dtype, threads: as :func:`pybench.measure.latency`.
        backend: an inference backend name (``eager``, ``inductor``, ``onnxruntime``, ``openvino``...; each
            layer variant is prepared by it, which costs an export per point on exporting backends).
        align: the alignment step swept (channels a multiple of it); 8 suits AVX2 fp32 and fp16 tensor cores.
        max_points, between: how many aligned counts and just-below-a-step counts per dimension.
        target_ci, max_time_s: each paired point's interval target and time budget.
        progress: called with a line per layer measured.

    Returns:
        a :class:`~pybench.prune.lut.LatencyTable`; ``.save(path)`` writes it, ``LatencyTable.load`` reads it.
    """
    from pybench.bench import backends as _backends

    if not isinstance(align, int) or align < 1:
        raise ValueError(f"align={align!r}: expected a positive int (channels per hardware step, e.g. 8)")
    if not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points={max_points!r}: expected a positive int")
    dev = C.resolve_device(device)
    dt = C.resolve_dtype(dtype, dev)
    why = _backends.unavailable(backend, dev.type, C.dtype_name(dt))
    if why:
        raise ValueError(why)
    wrap = None if _backends.parse(backend)[0] == "eager" else _backends.create(backend).prepare
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    n = batch_size if batch_size is not None else C.batch_size_of(inputs)
    model = copy.deepcopy(model).eval()
    graph = trace(model, inputs)
    modules = dict(model.named_modules())
    names = [k for k in graph.module_types if PRUNERS.for_type(type(modules[k])) is not None]
    shapes = _record_inputs(model, modules, names, inputs)
    timing = {"device": dev, "dtype": dt, "batch_size": n, "threads": threads}
    memo: dict[tuple, float] = {}
    layers: list[LayerCost] = []
    for name in names:
        if name not in shapes:
            continue
        m, (shape, calls) = modules[name], shapes[name]
        x = torch.randn(1, *shape[1:], generator=torch.Generator().manual_seed(0))
        sig = (repr(m), tuple(shape[1:]))
        if sig not in memo:
            memo[sig] = latency(m, x, iters=30, min_time=0.2, wrap=wrap, **timing).p50_ms
        tied, parts_in, parts_out = _layer_kind(m)
        out_c, in_c = _composition(graph, name, "out"), _composition(graph, name, "in")
        dims: dict[str, LayerDim | None] = {"out": None, "inp": None}
        for role, comp, parts in (("out", out_c, parts_out), ("inp", None if tied else in_c, parts_in)):
            if comp is None or not comp[2]:
                continue  # no group holds these channels: they never change
            size = comp[0]
            counts = sample_counts(size, parts, align, max_points, between)
            ratios = []
            for c in counts:
                key = (*sig, role, tied, c)
                if key not in memo:
                    memo[key] = _ratio(m, x, role, tied, parts, c, size, target_ci, max_time_s, wrap, timing)
                ratios.append(memo[key])
            dims[role] = LayerDim(size, comp[1], comp[2], counts, ratios)
        layer = LayerCost(name, type(m).__name__, memo[sig] * calls, 0, dims["out"], dims["inp"], tied)
        if dims["out"] is not None and dims["inp"] is not None:  # both cut together: the fixed share
            for co in dims["out"].counts[:-1]:
                ci = max(parts_in, round(co / dims["out"].size * dims["inp"].size / parts_in) * parts_in)
                key = (*sig, "joint", ci, co)
                if key not in memo:
                    memo[key] = _ratio(m, x, "joint", False, (parts_in, parts_out), (ci, co),
                                       (dims["inp"].size, dims["out"].size), target_ci, max_time_s, wrap, timing)
                layer.joint.append([ci, co, memo[key]])
            layer.floor = fit_floor(layer)
        out_shape = _out_shape(m, x)
        per_channel = int(np.prod(out_shape[2:])) if len(out_shape) > 2 else 1
        layer.per_channel = per_channel * n
        layers.append(layer)
        if progress is not None:
            progress(f"{name} ({type(m).__name__}): {memo[sig]:.3f} ms, "
                     f"{sum(len(d.counts) for d in dims.values() if d)} counts")
    dense = latency(model, inputs, iters=50, min_time=0.5, wrap=wrap, **timing).p50_ms
    fp, sizes = graph_signature(graph)
    table = LatencyTable({}, {"fingerprint": fp, "groups": sizes}, dense, sum(lay.ms for lay in layers), layers)
    # the unmeasured ops: fixed by the dense model and every group at half, timed paired on the whole model
    half = plan(graph, score(model, graph, "l1"), ratio=0.5)
    counts = {g.index: int(k.numel()) for g, k in half.keep.items()}
    q = paired_latency(model, apply(model, half), inputs, target_ci=0.02, max_time_s=max(10 * max_time_s, 5.0),
                       wrap=wrap, **timing)
    if q.speedup is None:
        raise RuntimeError(f"latency table: timing the half model failed: {q.error}")
    (s0, v0), (s1, v1) = table.totals({}), table.totals(counts)
    l1 = dense / q.speedup
    b = ((dense - s0) - (l1 - s1)) / (v0 - v1) if v0 != v1 else 0.0
    env = environment()
    hardware = env.cpu_model if dev.type == "cpu" else next((g["name"] for g in env.gpus), None)
    key = {"device": dev.type, "backend": backend, "dtype": C.dtype_name(dt), "batch_size": n,
           "pybench": pybench.__version__, "torch": torch.__version__, "hardware": hardware,
           "threads": threads or torch.get_num_threads()}
    return LatencyTable(key, {"fingerprint": fp, "groups": sizes, "class": type(model).__name__,
                              "input_shape": [list(t.shape[1:]) for t in inputs]},
                        dense, table.layers_ms, layers, dense - s0 - b * v0, b,
                        {"half_speedup": q.speedup, "align": align, "max_points": max_points, "between": between,
                         "target_ci": target_ci, "utc_time": env.utc_time})


def _out_shape(m: nn.Module, x: torch.Tensor) -> torch.Size:
    with torch.no_grad():
        return m(x).shape


def _ratio(m: nn.Module, x: torch.Tensor, role: str, tied: bool, parts: Any, count: Any, size: Any,
           target_ci: float, max_time_s: float, wrap: Any, timing: dict) -> float:
    """Time of ``m`` with ``count`` channels on ``role`` (both when ``tied``; ``"joint"``: (in, out) counts,
    sizes and partitions) relative to dense, paired."""
    if count == size:
        return 1.0
    if role == "joint":
        i_idx, o_idx = _spread(size[0], count[0], parts[0]), _spread(size[1], count[1], parts[1])
        variant, xv = shrink_module(m, o_idx, i_idx), x[:, i_idx]
        return _paired(m, variant, x, xv, target_ci, max_time_s, wrap, timing, f"{count} channels")
    idx = _spread(size, count, parts)
    if tied:
        variant, xv = shrink_module(m, idx, idx), x[:, idx]
    elif role == "out":
        variant, xv = shrink_module(m, idx, None), x
    else:
        variant, xv = shrink_module(m, None, idx), x[:, idx]
    return _paired(m, variant, x, xv, target_ci, max_time_s, wrap, timing, f"{count} {role} channels")


def _paired(m: nn.Module, variant: nn.Module, x: torch.Tensor, xv: torch.Tensor, target_ci: float, max_time_s: float,
            wrap: Any, timing: dict, what: str) -> float:
    r = paired_latency(m, variant, x, pruned_inputs=xv.contiguous(), target_ci=target_ci, max_time_s=max_time_s,
                       min_pairs=8, wrap=wrap, **timing)
    if r.speedup is None:
        raise RuntimeError(f"latency table: timing {type(m).__name__} at {what} failed: {r.error}")
    return 1.0 / r.speedup
