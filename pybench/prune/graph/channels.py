"""Channel descriptors: which global channel id each position of a tensor carries.

A tracked tensor value is described by an int64 numpy array ``D`` with the tensor's rank, each of its dims either
the tensor's size or 1 (broadcast). ``D[pos]`` is the global id of the prunable channel that position belongs to,
or -1 (untracked: never pruned). ``None`` means the whole value is untracked. Most values vary along one axis only
(the channel axis), but reshapes such as ShuffleNet's ``view(b, g, c/g, h, w)`` may spread the ids over two axes for
a while; carrying a whole (broadcast) array keeps every reshape, permute, slice and split exact without special
cases.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compress", "vary_axes", "along", "reshape", "expand_to"]


def compress(d: np.ndarray | None) -> np.ndarray | None:
    """Smallest array equal to ``d`` under broadcasting (size 1 along constant axes); None if all untracked."""
    if d is None:
        return None
    for ax in range(d.ndim):
        if d.shape[ax] > 1:
            first = d[(slice(None),) * ax + (slice(0, 1),)]
            if d.strides[ax] == 0 or (d == first).all():
                d = first
    if d.size == 0 or (d < 0).all():
        return None
    return np.ascontiguousarray(d)


def vary_axes(d: np.ndarray | None) -> list[int]:
    """Axes along which ``d`` (compressed) varies."""
    if d is None:
        return []
    return [ax for ax in range(d.ndim) if d.shape[ax] > 1]


def along(d: np.ndarray, axis: int, size: int) -> np.ndarray:
    """The 1-D ids along ``axis`` (length ``size``) when ``d`` varies along that axis only (or nowhere)."""
    flat = d.reshape(-1)
    if flat.size == size:
        return flat
    return np.broadcast_to(flat[:1], (size,))


def expand_to(d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast ``d`` to ``shape`` (prepending axes as needed); a view, no copy."""
    if d.ndim < len(shape):
        d = d.reshape((1,) * (len(shape) - d.ndim) + d.shape)
    return np.broadcast_to(d, shape)


def reshape(d: np.ndarray | None, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray | None:
    """Ids of ``x.reshape(out_shape)`` given the ids ``d`` of ``x`` (shape ``in_shape``)."""
    if d is None:
        return None
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    # The batch dim rarely takes part: work on the rest to keep the copy small.
    if in_shape and out_shape and in_shape[0] == out_shape[0] and d.shape[0] == 1:
        inner = reshape(d[0], in_shape[1:], out_shape[1:])
        return None if inner is None else inner.reshape((1,) + inner.shape)
    full = expand_to(d, in_shape)
    return compress(np.reshape(full, out_shape))
