"""Op-level profile of a dense and a pruned model under torch.profiler: time per op type side by side, and chrome
traces (open in chrome://tracing or https://ui.perfetto.dev) written to a folder."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from pybench.measure import _common as C


@dataclass
class ProfileResult:
    """``rows``: one per op type, sorted by the dense model's time: ``op``, ``dense_ms``, ``pruned_ms`` (per forward),
    ``ratio`` (pruned / dense, None where the dense model spends nothing), ``dense_calls``, ``pruned_calls`` (per
    forward). ``metric`` says which time: self CPU time on CPU, self device (kernel) time on CUDA, so rows add up
    to the totals without counting nested ops twice."""

    device: str
    dtype: str
    iters: int
    metric: str
    dense_total_ms: float | None = None
    pruned_total_ms: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    traces: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_dataframe(self) -> Any:
        """The op table as a pandas DataFrame indexed by op."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("op") if self.rows else pd.DataFrame()

    def table(self, top: int | None = 20, tablefmt: str = "github") -> str:
        """The op table as text (tabulate), the ``top`` most expensive ops of the dense model."""
        from tabulate import tabulate

        rows = self.rows[:top] if top else self.rows
        return tabulate(rows, headers="keys", tablefmt=tablefmt, floatfmt=".3f")


def _op_times(model: nn.Module, x: Any, dev: torch.device, iters: int, inference_mode: bool,
              trace: Path) -> dict[str, tuple[float, float]]:
    """{op key: (ms per forward, calls per forward)} of ``iters`` profiled forwards; writes the chrome trace."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch_profile(activities=acts) as prof, C.grad_mode(inference_mode):
        for _ in range(iters):
            C.call(model, x)
        C.synchronize(dev)
    prof.export_chrome_trace(str(trace))
    out: dict[str, tuple[float, float]] = {}
    for ev in prof.key_averages():
        us = ev.self_device_time_total if dev.type == "cuda" else ev.self_cpu_time_total
        if us > 0:
            out[ev.key] = (us / 1e3 / iters, ev.count / iters)
    return out


def profile(dense: nn.Module, pruned: nn.Module, example_inputs: C.Inputs, device: str | torch.device = "cpu",
            dtype: str | torch.dtype = torch.float32, warmup: int = 3, iters: int = 10,
            out_dir: str | Path | None = None, batch_size: int | None = None, channels_last: bool = False,
            inference_mode: bool = True,
            labels: tuple[str, str] = ("dense", "pruned"), wrap: C.Wrap | None = None) -> ProfileResult:
    """Profile ``iters`` forwards of each model (after ``warmup``) and compare time per op type.

    Chrome traces go to ``out_dir/<label>.json`` (a new temporary folder when ``out_dir`` is None). Both models get
    the same inputs; bad device / dtype / inputs raise ValueError, an out-of-memory is returned as ``error``.
    ``wrap`` profiles each model through an inference backend, as in :func:`pybench.measure.latency`.
    """
    dev = C.resolve_device(device)
    dt = C.resolve_dtype(dtype, dev)
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters={iters!r}: expected an int >= 1")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r}: expected an int >= 0")
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="pybench-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    x = C.prepare_inputs(example_inputs, dev, dt, batch_size, channels_last)
    result = ProfileResult(device=str(dev), dtype=C.dtype_name(dt), iters=iters,
                           metric="self device time" if dev.type == "cuda" else "self CPU time")
    times: list[dict[str, tuple[float, float]]] = []
    try:
        for label, model in zip(labels, (dense, pruned), strict=True):
            m: Any = None
            with C.on_device(dev):
                m = C.prepare_model(model, dev, dt, channels_last)
                C.check_call(m, x, dev, dt, inference_mode, f"{type(model).__name__} ({label})")
                with C.grad_mode(inference_mode):
                    if wrap is not None:
                        m = wrap(m, x)
                    for _ in range(warmup):
                        C.call(m, x)
                trace = folder / f"{label}.json"
                times.append(_op_times(m, x, dev, iters, inference_mode, trace))
            result.traces[label] = str(trace)
            m = None
    except Exception as e:
        if not C.is_oom(e):
            raise
        result.error = C.oom_message("profile", e, dev)
    if result.error is not None:
        m = x = None  # outside the except block, so the traceback no longer holds the tensors
        C.release_memory(dev)
        return result
    d, p = times
    for op in sorted(set(d) | set(p), key=lambda k: (-d.get(k, (0.0, 0.0))[0], -p.get(k, (0.0, 0.0))[0])):
        dm, dc = d.get(op, (0.0, 0.0))
        pm, pc = p.get(op, (0.0, 0.0))
        result.rows.append({"op": op, "dense_ms": dm, "pruned_ms": pm, "ratio": pm / dm if dm > 0 else None,
                            "dense_calls": dc, "pruned_calls": pc})
    result.dense_total_ms = sum(v[0] for v in d.values())
    result.pruned_total_ms = sum(v[0] for v in p.values())
    return result
