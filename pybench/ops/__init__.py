"""Python face of the fused ops in ``pybench._C``, and their pure-PyTorch reference.

Three ops live under ``torch.ops.pybench`` (schemas in csrc/ops.cpp, mirrored in ``SCHEMAS`` below):

- ``channel_stats(w, dim) -> [C, 3]``: per index of ``dim``: sum|w|, sum w^2, sum w, in one read of ``w``.
  fp32 result (fp64 for fp64 input); fp16 / bf16 inputs accumulate in fp32 or better.
- ``activation_stats(x, state=None) -> [C, 4]``: per channel (dim 1, NCHW or channels_last): count, mean,
  M2 (sum of squared deviations, Welford) and zero count, merged into ``state`` with Chan's formula so that
  many batches give the statistics of their concatenation. The result has ``state``'s dtype, else fp64
  (an fp32 count is exact only up to 2**24 elements per channel).
- ``channel_gather(w, out_idx, in_idx)``: ``w[out_idx][:, in_idx]`` in one pass, contiguous. Either index may
  be None (keep that dim whole). Indices are int32 / int64 on ``w``'s device, each in ``[0, size)``.
  Duplicate indices are allowed and copy the channel twice (gather semantics, like ``index_select``).

Two batched forms take a list of tensors and answer a list, one dispatch for a whole model's weights (score and
surgery would otherwise pay the per-call overhead once per tensor, which is most of their time on small models):

- ``channel_stats_list(ws, dim) -> [channel_stats(w, dim) for w in ws]``;
- ``channel_gather_list(ws, out_idx, in_idx) -> [channel_gather(w, o, i) for w, o, i in zip(...)]``.

Their elements follow the single ops' rules and messages; all ``ws`` of one call share a device (the Python faces
below split a list that spans devices into one call per device).

Every op always works: where the extension is missing (a source checkout on PYTHONPATH) or was built without
CUDA, the reference below is registered in its place, with one warning. ``backend()`` says which runs where.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

__all__ = [
    "SCHEMAS",
    "activation_stats",
    "activation_summary",
    "backend",
    "channel_gather",
    "channel_gather_list",
    "channel_stats",
    "channel_stats_list",
    "merge_activation_stats",
    "ref_activation_stats",
    "ref_channel_gather",
    "ref_channel_gather_list",
    "ref_channel_stats",
    "ref_channel_stats_list",
]

SCHEMAS: dict[str, str] = {
    "channel_stats": "channel_stats(Tensor w, int dim) -> Tensor",
    "activation_stats": "activation_stats(Tensor x, Tensor? state=None) -> Tensor",
    "channel_gather": "channel_gather(Tensor w, Tensor? out_idx, Tensor? in_idx) -> Tensor",
    "channel_stats_list": "channel_stats_list(Tensor[] ws, int dim) -> Tensor[]",
    "channel_gather_list": "channel_gather_list(Tensor[] ws, Tensor?[] out_idx, Tensor?[] in_idx) -> Tensor[]",
}

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)


# ---------------------------------------------------------------------------------------------------------------
# Input checks: the same rules and messages as csrc/ops.cpp, so the reference fails exactly like the kernels.
# ---------------------------------------------------------------------------------------------------------------
def _check_float(op: str, arg: str, t: torch.Tensor) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {arg} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                        f"got {t.dtype}")


def _check_dim(op: str, w: torch.Tensor, dim: int) -> int:
    if w.dim() == 0:
        raise ValueError(f"{op}: w must have at least 1 dimension, got a 0-d tensor")
    if not -w.dim() <= dim < w.dim():
        raise IndexError(f"{op}: dim {dim} is out of range for w of rank {w.dim()} "
                         f"(expected {-w.dim()}..{w.dim() - 1})")
    return dim % w.dim()


def _check_state(x: torch.Tensor, state: torch.Tensor | None) -> None:
    if state is None:
        return
    channels = x.shape[1]
    if state.dim() != 2 or state.shape[0] != channels or state.shape[1] != 4:
        raise ValueError(f"activation_stats: state must have shape [C, 4] = [{channels}, 4] "
                         f"(count, mean, M2, zeros), got {list(state.shape)}")
    if state.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"activation_stats: state must be float32 or float64, got {state.dtype}")
    if state.device != x.device:
        raise ValueError(f"activation_stats: state is on {state.device} but x is on {x.device}; "
                         "keep the running state on x's device")


def _check_activation(x: torch.Tensor, state: torch.Tensor | None) -> None:
    _check_float("activation_stats", "x", x)
    if x.dim() < 2:
        raise ValueError(f"activation_stats: x must have shape (N, C, ...) with at least 2 dimensions, "
                         f"got shape {list(x.shape)}")
    _check_state(x, state)


def _check_index(w: torch.Tensor, idx: torch.Tensor | None, arg: str, dim: int) -> None:
    if idx is None:
        return
    if idx.dtype not in _INDEX_DTYPES:
        raise TypeError(f"channel_gather: {arg} must be an int32 or int64 tensor, got {idx.dtype}")
    if idx.dim() != 1:
        raise ValueError(f"channel_gather: {arg} must be 1-D, got shape {list(idx.shape)}")
    if idx.device != w.device:
        raise ValueError(f"channel_gather: {arg} is on {idx.device} but w is on {w.device}; "
                         f"move {arg} to w's device")
    if idx.numel() and idx.device.type != "meta" and not isinstance(idx, torch._subclasses.FakeTensor):
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= w.shape[dim]:
            bad = lo if lo < 0 else hi
            raise IndexError(f"channel_gather: {arg} holds {bad}, out of range for dim {dim} of w "
                             f"(size {w.shape[dim]}; valid 0..{w.shape[dim] - 1})")


def _check_gather(w: torch.Tensor, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> None:
    _check_float("channel_gather", "w", w)
    if w.dim() == 0:
        raise ValueError("channel_gather: w must have at least 1 dimension, got a 0-d tensor")
    if in_idx is not None and w.dim() < 2:
        raise ValueError(f"channel_gather: in_idx needs w of rank >= 2 (dim 1), got rank {w.dim()}")
    _check_index(w, out_idx, "out_idx", 0)
    _check_index(w, in_idx, "in_idx", 1)


def _check_same_device(op: str, ws: Sequence[torch.Tensor]) -> None:
    for k, w in enumerate(ws[1:], 1):
        if w.device != ws[0].device:
            raise ValueError(f"{op}: ws[{k}] is on {w.device} but ws[0] is on {ws[0].device}; "
                             "one call takes tensors of one device")


def _check_lengths(ws: Sequence[torch.Tensor], out_idx: Sequence[torch.Tensor | None],
                   in_idx: Sequence[torch.Tensor | None]) -> None:
    if not len(out_idx) == len(in_idx) == len(ws):
        raise ValueError(f"channel_gather_list: ws, out_idx and in_idx must have the same length, got {len(ws)}, "
                         f"{len(out_idx)} and {len(in_idx)}")


def _check_gather_list(ws: Sequence[torch.Tensor], out_idx: Sequence[torch.Tensor | None],
                       in_idx: Sequence[torch.Tensor | None]) -> None:
    _check_lengths(ws, out_idx, in_idx)
    _check_same_device("channel_gather_list", ws)


# ---------------------------------------------------------------------------------------------------------------
# Pure-PyTorch reference
# ---------------------------------------------------------------------------------------------------------------
def _stats_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def ref_channel_stats(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Reference of ``channel_stats``: [C, 3] = sum|w|, sum w^2, sum w per index of ``dim``."""
    _check_float("channel_stats", "w", w)
    dim = _check_dim("channel_stats", w, dim)
    channels = w.shape[dim]
    rows = w.movedim(dim, 0).reshape(channels, w.numel() // channels if channels else 0).to(_stats_dtype(w))
    return torch.stack([rows.abs().sum(1), rows.pow(2).sum(1), rows.sum(1)], dim=1)


def merge_activation_stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Chan et al.'s exact merge of two [C, 4] (count, mean, M2, zeros) statistics; the result has ``a``'s dtype."""
    b = b.to(a.dtype)
    na, nb = a[:, 0], b[:, 0]
    n = na + nb
    safe_n = torch.where(n > 0, n, torch.ones_like(n))
    delta = b[:, 1] - a[:, 1]
    mean = torch.where(n > 0, a[:, 1] + delta * nb / safe_n, torch.zeros_like(n))
    m2 = a[:, 2] + b[:, 2] + delta * delta * na * nb / safe_n
    return torch.stack([n, mean, m2, a[:, 3] + b[:, 3]], dim=1)


def ref_activation_stats(x: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of ``activation_stats``: two-pass statistics in fp64, then Chan's merge into ``state``."""
    _check_activation(x, state)
    channels = x.shape[1]
    rows = x.movedim(1, -1).reshape(-1, channels).to(torch.float64)
    count = torch.full((channels,), float(rows.shape[0]), dtype=torch.float64, device=x.device)
    if rows.shape[0]:
        mean = rows.mean(0)
        m2 = (rows - mean).pow(2).sum(0)
    else:
        mean = m2 = torch.zeros(channels, dtype=torch.float64, device=x.device)
    zeros = (rows == 0).sum(0).to(torch.float64)
    batch = torch.stack([count, mean, m2, zeros], dim=1)
    if state is None:
        return batch
    return merge_activation_stats(state, batch)


def ref_channel_gather(w: torch.Tensor, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> torch.Tensor:
    """Reference of ``channel_gather``: two ``index_select`` calls (a plain copy when both indices are None)."""
    _check_gather(w, out_idx, in_idx)
    if out_idx is None and in_idx is None:
        return w.clone(memory_format=torch.contiguous_format)
    if out_idx is not None:
        w = w.index_select(0, out_idx.long())
    if in_idx is not None:
        w = w.index_select(1, in_idx.long())
    return w.contiguous()


def ref_channel_stats_list(ws: Sequence[torch.Tensor], dim: int) -> list[torch.Tensor]:
    """Reference of ``channel_stats_list``: ``channel_stats`` of each tensor."""
    _check_same_device("channel_stats_list", ws)
    return [ref_channel_stats(w, dim) for w in ws]


def ref_channel_gather_list(ws: Sequence[torch.Tensor], out_idx: Sequence[torch.Tensor | None] | None = None,
                            in_idx: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """Reference of ``channel_gather_list``: ``channel_gather`` of each (tensor, out_idx, in_idx)."""
    out_idx = [None] * len(ws) if out_idx is None else out_idx
    in_idx = [None] * len(ws) if in_idx is None else in_idx
    _check_gather_list(ws, out_idx, in_idx)
    return [ref_channel_gather(w, o, i) for w, o, i in zip(ws, out_idx, in_idx, strict=True)]


def activation_summary(state: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean, population std and APoZ (fraction of zeros) from an ``activation_stats`` state."""
    count = state[:, 0].clamp_min(1)
    return {"mean": state[:, 1], "std": (state[:, 2] / count).clamp_min(0).sqrt(), "apoz": state[:, 3] / count}


_REFERENCE = {
    "channel_stats": ref_channel_stats,
    "activation_stats": ref_activation_stats,
    "channel_gather": ref_channel_gather,
    "channel_stats_list": ref_channel_stats_list,
    "channel_gather_list": ref_channel_gather_list,
}


# ---------------------------------------------------------------------------------------------------------------
# Registration: the extension where it exists, the reference wherever it does not.
# ---------------------------------------------------------------------------------------------------------------
def _load_extension() -> str | None:
    """Import pybench._C (which registers the ops). Returns why it failed, or None."""
    try:
        from pybench import _C  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def _has_schema(qualname: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(qualname, "")
    except RuntimeError:
        return False
    return True


_EXTENSION_ERROR = _load_extension()
_LIB: torch.library.Library | None = None  # kept alive: dropping it unregisters what it holds
_NATIVE: dict[str, str] = {}  # dispatch key -> who runs it natively

if _EXTENSION_ERROR is not None:
    warnings.warn(
        f"pybench._C is not available ({_EXTENSION_ERROR}); the fused ops run on their pure-PyTorch reference, "
        "which is correct but slower. Build it with: pip install --no-build-isolation -e . -c constraints.txt",
        RuntimeWarning,
        stacklevel=2,
    )
    _LIB = torch.library.Library("pybench", "DEF")
    for _name, _schema in SCHEMAS.items():
        _LIB.define(_schema)
        _LIB.impl(_name, _REFERENCE[_name], "CompositeExplicitAutograd")
else:
    # An extension built before an op existed lacks its schema: define it here on the reference (rebuild for speed).
    _MISSING = [n for n in SCHEMAS if not _has_schema(f"pybench::{n}")]
    if _MISSING:
        warnings.warn(f"pybench._C predates {', '.join(_MISSING)}; they run on the pure-PyTorch reference. Rebuild "
                      "it with: pip install --no-build-isolation -e . -c constraints.txt", RuntimeWarning, stacklevel=2)
        _DEF_LIB = torch.library.Library("pybench", "FRAGMENT")
        for _name in _MISSING:
            _DEF_LIB.define(SCHEMAS[_name])
            _DEF_LIB.impl(_name, _REFERENCE[_name], "CompositeExplicitAutograd")
    for _key in ("CPU", "CUDA"):
        _native = [n for n in SCHEMAS if n not in _MISSING]
        if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"pybench::{n}", _key) for n in _native):
            _NATIVE[_key] = "pybench._C (C++)" if _key == "CPU" else "pybench._C (CUDA)"
        else:  # e.g. a CPU-only build: CUDA tensors take the reference instead of failing to dispatch
            _LIB = _LIB or torch.library.Library("pybench", "IMPL")
            for _name in _native:
                _LIB.impl(_name, _REFERENCE[_name], _key)


def _fake_channel_stats(w: torch.Tensor, dim: int) -> torch.Tensor:
    _check_float("channel_stats", "w", w)
    dim = _check_dim("channel_stats", w, dim)
    return w.new_empty((w.shape[dim], 3), dtype=_stats_dtype(w))


def _fake_activation_stats(x: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
    _check_activation(x, state)
    dtype = state.dtype if state is not None else torch.float64
    return x.new_empty((x.shape[1], 4), dtype=dtype)


def _fake_channel_gather(w: torch.Tensor, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> torch.Tensor:
    _check_gather(w, out_idx, in_idx)  # range checks skip meta / fake indices: their values are unknown
    shape = list(w.shape)
    if out_idx is not None:
        shape[0] = out_idx.shape[0]
    if in_idx is not None:
        shape[1] = in_idx.shape[0]
    return w.new_empty(shape)


def _fake_channel_stats_list(ws: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
    _check_same_device("channel_stats_list", ws)
    return [_fake_channel_stats(w, dim) for w in ws]


def _fake_channel_gather_list(ws: list[torch.Tensor], out_idx: list[torch.Tensor | None],
                              in_idx: list[torch.Tensor | None]) -> list[torch.Tensor]:
    _check_gather_list(ws, out_idx, in_idx)
    return [_fake_channel_gather(w, o, i) for w, o, i in zip(ws, out_idx, in_idx, strict=True)]


torch.library.register_fake("pybench::channel_stats", _fake_channel_stats)
torch.library.register_fake("pybench::channel_stats_list", _fake_channel_stats_list)
torch.library.register_fake("pybench::channel_gather_list", _fake_channel_gather_list)
torch.library.register_fake("pybench::activation_stats", _fake_activation_stats)
torch.library.register_fake("pybench::channel_gather", _fake_channel_gather)


def backend(device: str | torch.device | None = None) -> dict[str, str] | str:
    """Which implementation runs the ops: ``{"cpu": ..., "cuda": ...}``, or the entry for one device type."""
    table = {
        "cpu": _NATIVE.get("CPU", "reference (pure PyTorch)"),
        "cuda": _NATIVE.get("CUDA", "reference (pure PyTorch)"),
    }
    if device is None:
        return table
    kind = torch.device(device).type
    return table.get(kind, "reference (pure PyTorch)")


# ---------------------------------------------------------------------------------------------------------------
# The public face
# ---------------------------------------------------------------------------------------------------------------
def channel_stats(w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """[C, 3] fp32 (fp64 for fp64 ``w``): sum|w|, sum w^2, sum w per index of ``dim``, in one read."""
    return torch.ops.pybench.channel_stats(w, dim)


def activation_stats(x: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
    """[C, 4] count, mean, M2, zeros per channel of ``x`` (dim 1), merged into ``state`` when given."""
    return torch.ops.pybench.activation_stats(x, state)


def channel_gather(w: torch.Tensor, out_idx: torch.Tensor | None = None,
                   in_idx: torch.Tensor | None = None) -> torch.Tensor:
    """``w[out_idx][:, in_idx]`` as a new contiguous tensor; a None index keeps that dim whole."""
    return torch.ops.pybench.channel_gather(w, out_idx, in_idx)


def _per_device(ws: Sequence[torch.Tensor]) -> list[list[int]] | None:
    """Positions of ``ws`` per device, in order of first appearance; None when they share one (the usual case)."""
    dev = ws[0].device
    if all(w.device == dev for w in ws):
        return None
    parts: dict[torch.device, list[int]] = {}
    for k, w in enumerate(ws):
        parts.setdefault(w.device, []).append(k)
    return list(parts.values())


def channel_stats_list(ws: Sequence[torch.Tensor], dim: int = 0) -> list[torch.Tensor]:
    """``[channel_stats(w, dim) for w in ws]`` in one call per device."""
    ws = list(ws)
    if not ws:
        return []
    parts = _per_device(ws)
    if parts is None:
        return torch.ops.pybench.channel_stats_list(ws, dim)
    out: list[torch.Tensor] = [None] * len(ws)  # type: ignore[list-item]
    for pos in parts:
        for k, r in zip(pos, torch.ops.pybench.channel_stats_list([ws[k] for k in pos], dim), strict=True):
            out[k] = r
    return out


def channel_gather_list(ws: Sequence[torch.Tensor], out_idx: Sequence[torch.Tensor | None] | None = None,
                        in_idx: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """``[channel_gather(w, o, i) for w, o, i in zip(ws, out_idx, in_idx)]`` in one call per device (each index on
    its tensor's device, as for ``channel_gather``). A None list, like a None index, keeps that dim whole for
    every tensor."""
    ws = list(ws)
    out_idx = [None] * len(ws) if out_idx is None else list(out_idx)
    in_idx = [None] * len(ws) if in_idx is None else list(in_idx)
    if not ws:
        _check_lengths(ws, out_idx, in_idx)
        return []
    parts = _per_device(ws)
    if parts is None:
        return torch.ops.pybench.channel_gather_list(ws, out_idx, in_idx)
    _check_lengths(ws, out_idx, in_idx)
    out: list[torch.Tensor] = [None] * len(ws)  # type: ignore[list-item]
    for pos in parts:
        got = torch.ops.pybench.channel_gather_list([ws[k] for k in pos], [out_idx[k] for k in pos],
                                                    [in_idx[k] for k in pos])
        for k, r in zip(pos, got, strict=True):
            out[k] = r
    return out
