"""How each traced operation moves, merges or consumes channels (used by :mod:`pybench.graph`).

Every rule gets the tracing context, the fx node, the node's inputs as meta tensors (shapes only) and as channel
descriptors (see :mod:`pybench._channels`), and returns the output's descriptor. Rules record four things in the
context: *slots* (a module or parameter dimension whose indices carry channel ids: what surgery slices), *unions*
(ids that must be removed together: residual adds, products, shared modules), *pins* (ids that must never be
removed, with the reason) and *blocks* (ids to prune in equal numbers per partition: grouped convs, GroupNorm).
An operation no rule knows pins the channels it reads: the result is less pruning, never a wrong model.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pybench._channels import along, compress, expand_to, reshape, vary_axes

Rule = Callable[..., Any]

# ---------------------------------------------------------------------------------------------------------------
# The context a trace fills in.
# ---------------------------------------------------------------------------------------------------------------


class TraceContext:
    """Mutable state of one trace: id spaces, slots, unions, pins, blocks."""

    def __init__(self) -> None:
        self.n_ids = 0
        self.spaces: list[tuple[str, int, int]] = []  # (owner, first id, size)
        self._space_of: dict[str, np.ndarray] = {}
        self.slots: dict[tuple, np.ndarray] = {}  # (kind, name, role/dim) -> ids per index
        self.slot_module: dict[tuple, nn.Module | None] = {}
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.pins: list[tuple[np.ndarray, str]] = []
        self.blocks: list[tuple[np.ndarray, int, str]] = []
        self.reducers: dict[str, str] = {}  # module name -> kind of channel-mixing normalisation (for mask)
        self.frozen: dict[str, str] = {}  # parameter name -> op that reads it and no rule understands
        self.param_of: dict[Any, str] = {}  # get_attr node -> parameter qualified name
        # where python ints came from: size()/shape node -> per-axis ids; int node -> ("direct" | "derived", ids)
        self.prov: dict[Any, Any] = {}
        self.node: Any = None  # the fx node a rule is looking at

    def space(self, owner: str, size: int) -> np.ndarray:
        """The ids of ``owner``'s output channels (the same ids on every call of a shared module)."""
        ids = self._space_of.get(owner)
        if ids is None:
            ids = np.arange(self.n_ids, self.n_ids + size, dtype=np.int64)
            self.spaces.append((owner, self.n_ids, size))
            self.n_ids += size
            self._space_of[owner] = ids
        return ids

    def union(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Ids at equal positions of ``a`` and ``b`` are one channel; a tracked id facing an untracked one is pinned."""
        a, b = np.broadcast_arrays(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))
        both = (a >= 0) & (b >= 0)
        if both.any():
            self.edges.append((a[both], b[both]))
        lone = (a >= 0) != (b >= 0)
        if lone.any():
            self.pin(np.where(a >= 0, a, b)[lone], reason)

    def pin(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is None:
            return
        ids = np.asarray(ids).reshape(-1)
        ids = ids[ids >= 0]
        if ids.size:
            self.pins.append((ids, reason))

    def pin_all(self, descriptors: Any, reason: str) -> None:
        for d in _flatten(descriptors):
            self.pin(d, reason)

    def slot(self, key: tuple, ids: np.ndarray, module: nn.Module | None = None) -> None:
        """Record that index i of ``key`` (a module role or a parameter dim) carries channel ``ids[i]``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        old = self.slots.get(key)
        if old is None:
            self.slots[key] = ids
            self.slot_module[key] = module
        else:  # a shared module or parameter used twice: both uses must agree
            self.union(old, ids, f"{key[1]} is used twice with different channels")

    def block(self, ids: np.ndarray, parts: int, reason: str) -> None:
        self.blocks.append((np.asarray(ids, dtype=np.int64).reshape(-1), parts, reason))


def _flatten(x: Any) -> list[np.ndarray]:
    if x is None:
        return []
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, (tuple, list)):
        return [d for item in x for d in _flatten(item)]
    if isinstance(x, dict):
        return [d for item in x.values() for d in _flatten(item)]
    return []


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


# ---------------------------------------------------------------------------------------------------------------
# Building blocks shared by the rules.
# ---------------------------------------------------------------------------------------------------------------


def identity(ctx: TraceContext, where: str, ins: list, ds: list, out: Any) -> Any:
    """Element-wise unary op: the channels pass through."""
    d = ds[0] if ds else None
    if d is None or not isinstance(out, torch.Tensor):
        return None
    if d.ndim != out.ndim:
        return None
    return d


def require_constant(ctx: TraceContext, d: np.ndarray | None, axes: list[int], reason: str) -> bool:
    """Pin ``d``'s ids when they vary along ``axes`` (an op that mixes those positions); True when they do not."""
    if d is None:
        return True
    if any(d.shape[a] > 1 for a in axes):
        ctx.pin(d, reason)
        return False
    return True


def elementwise(ctx: TraceContext, where: str, operands: list[tuple[Any, np.ndarray | None, str | None]],
                out: Any) -> np.ndarray | None:
    """Broadcasting n-ary op (add, mul, where, cat along another axis...): aligned channels merge into one."""
    if not isinstance(out, torch.Tensor):
        return None
    nd = out.ndim
    items = []
    for value, d, param in operands:
        if not isinstance(value, torch.Tensor):
            continue  # python scalar
        shape = (1,) * (nd - value.ndim) + _shape(value)
        if d is not None:
            d = d.reshape((1,) * (nd - d.ndim) + d.shape)
        items.append((shape, d, param, value.ndim))
    tracked = [d for _, d, _, _ in items if d is not None]
    if not tracked:
        return None
    try:
        dshape = np.broadcast_shapes(*[d.shape for d in tracked])
    except ValueError:
        ctx.pin_all(tracked, f"{where}: operands with incompatible channel layouts")
        return None
    vary = [ax for ax in range(nd) if dshape[ax] > 1]
    if len(vary) == 0:  # single-channel tensors broadcast onto others: keep them
        ctx.pin_all(tracked, f"{where}: a single tracked channel is broadcast")
        return None
    if len(vary) > 1:
        ctx.pin_all(tracked, f"{where}: channels spread over several axes meet in an element-wise op")
        return None
    ax = vary[0]
    n = dshape[ax]
    ref = next(along(d, ax, n) for d in tracked if d.shape[ax] == n)
    ok = True
    for shape, d, param, rank in items:
        if shape[ax] == 1:
            if d is not None:  # a tracked single channel broadcast onto n channels
                ctx.pin(d, f"{where}: a single tracked channel is broadcast")
            continue
        if d is None:
            if param is not None:
                pdim = ax - (nd - rank)  # broadcasting right-aligns the parameter
                ctx.slot(("param", param, pdim), ref)
            else:
                ok = False
            continue
        if d.shape[ax] != n:
            ok = False
            continue
        ctx.union(ref, along(d, ax, n), f"{where}: merges channels")
    if not ok:
        ctx.pin(ref, f"{where}: a tracked channel meets an untracked tensor of the same size")
        return None
    res = np.full(tuple(n if a == ax else 1 for a in range(nd)), -1, dtype=np.int64)
    res.reshape(-1)[:] = ref
    return res


# ---------------------------------------------------------------------------------------------------------------
# Module rules: (ctx, name, module, x_meta, d, out_meta) -> descriptor of the output.
# ---------------------------------------------------------------------------------------------------------------


def _channel_ids(ctx: TraceContext, where: str, d: np.ndarray | None, axis: int, size: int) -> np.ndarray | None:
    """The 1-D ids on ``axis`` of an input that must carry channels only there; pins and returns None otherwise."""
    if d is None:
        return None
    if any(d.shape[a] > 1 for a in range(d.ndim) if a != axis):
        ctx.pin(d, f"{where}: its input channels are mixed with another axis")
        return None
    return along(d, axis, size)


def _at_axis(ids: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    return ids.reshape(tuple(ids.size if a == axis else 1 for a in range(ndim)))


def conv_rule(ctx: TraceContext, name: str, m: nn.Module, x: torch.Tensor, d: np.ndarray | None,
              out: torch.Tensor) -> np.ndarray | None:
    cin, cout, g = m.in_channels, m.out_channels, m.groups
    where = f"{name} ({type(m).__name__})"
    in_ids = _channel_ids(ctx, where, d, 1, cin)
    if g == 1:
        if in_ids is not None:
            ctx.slot(("module", name, "in"), in_ids, m)
        out_ids = ctx.space(name, cout)
        ctx.slot(("module", name, "out"), out_ids, m)
        return _at_axis(out_ids, 1, out.ndim)
    if in_ids is None:  # grouped conv on untracked channels: its outputs follow its inputs, so keep them
        return None
    if cin == cout:  # depthwise, or grouped with equal widths: output channel i reads input channel i's group
        ctx.slot(("module", name, "in"), in_ids, m)
        ctx.slot(("module", name, "out"), in_ids, m)
        if g != cin:
            ctx.block(in_ids, g, f"{where}: grouped convolution with {g} groups")
        return _at_axis(in_ids, 1, out.ndim)
    if g == cin and cout % cin == 0:  # depthwise with a channel multiplier
        out_ids = np.repeat(in_ids, cout // cin)
        ctx.slot(("module", name, "in"), in_ids, m)
        ctx.slot(("module", name, "out"), out_ids, m)
        return _at_axis(out_ids, 1, out.ndim)
    ctx.pin(in_ids, f"{where}: grouped convolution with groups={g}, in={cin}, out={cout} is not supported")
    return None


def linear_rule(ctx: TraceContext, name: str, m: nn.Module, x: torch.Tensor, d: np.ndarray | None,
                out: torch.Tensor) -> np.ndarray | None:
    nd = out.ndim
    last = nd - 1
    where = f"{name} (Linear)"
    if d is not None and d.shape[last] > 1:
        in_ids = _channel_ids(ctx, where, d, last, m.in_features)
        if in_ids is not None:
            ctx.slot(("module", name, "in"), in_ids, m)
        d = None
    out_ids = ctx.space(name, m.out_features)
    if d is not None:  # channels on another axis pass through a linear over the last one; its outputs stay whole
        return d
    ctx.slot(("module", name, "out"), out_ids, m)
    return _at_axis(out_ids, last, nd)


def per_channel_rule(axis_from_end: int | None = None, axis: int = 1, reducer: str | None = None,
                     parts_attr: str | None = None) -> Rule:
    """Norm layers and the like whose parameters are indexed by the channel (BN, GN, LN, PReLU, InstanceNorm)."""

    def rule(ctx: TraceContext, name: str, m: nn.Module, x: torch.Tensor, d: np.ndarray | None,
             out: torch.Tensor) -> np.ndarray | None:
        if d is None:
            return None
        ax = out.ndim - axis_from_end if axis_from_end is not None else axis
        where = f"{name} ({type(m).__name__})"
        if d.shape[ax] == 1:
            if reducer is not None and m is not None:
                # normalised over axes the channels do not live on? then channel-wise elements pass through
                norm_axes = _norm_axes(m, out.ndim, reducer)
                if not require_constant(ctx, d, norm_axes, f"{where}: normalises across channels"):
                    return None
            return d
        n = out.shape[ax]
        ids = _channel_ids(ctx, where, d, ax, n)
        if ids is None:
            return None
        if not _has_channel_params(m, n):
            if reducer is not None:
                ctx.pin(ids, f"{where}: normalises across channels it cannot be told about")
                return None
            return d
        ctx.slot(("module", name, "out"), ids, m)
        if reducer is not None:
            ctx.reducers[name] = reducer
        if parts_attr is not None and getattr(m, parts_attr) > 1:
            ctx.block(ids, getattr(m, parts_attr), f"{where}: {parts_attr}={getattr(m, parts_attr)}")
        return d

    return rule


def _has_channel_params(m: nn.Module, n: int) -> bool:
    if isinstance(m, nn.LayerNorm):
        return len(m.normalized_shape) == 1
    if isinstance(m, nn.PReLU):
        return m.num_parameters == n
    return True


def _norm_axes(m: nn.Module, ndim: int, kind: str) -> list[int]:
    if kind == "layer_norm":
        return list(range(ndim - len(m.normalized_shape), ndim))
    return [1]


def layer_norm_rule(ctx: TraceContext, name: str, m: nn.Module, x: torch.Tensor, d: np.ndarray | None,
                    out: torch.Tensor) -> np.ndarray | None:
    if _is_layer_norm_2d(m):
        return per_channel_rule(axis=1, reducer="layer_norm_2d")(ctx, name, m, x, d, out)
    k = len(m.normalized_shape)
    where = f"{name} (LayerNorm)"
    if d is None:
        return None
    norm_axes = list(range(out.ndim - k, out.ndim))
    if k > 1:
        if not require_constant(ctx, d, norm_axes, f"{where}: normalises over several axes including channels"):
            return None
        return d
    return per_channel_rule(axis_from_end=1, reducer="layer_norm")(ctx, name, m, x, d, out)


def _is_layer_norm_2d(m: nn.Module) -> bool:
    # torchvision's ConvNeXt LayerNorm2d: permute to channels-last, LayerNorm over C, permute back
    return isinstance(m, nn.LayerNorm) and type(m).__name__ == "LayerNorm2d"


def spatial_rule(ctx: TraceContext, name: str, m: nn.Module, x: torch.Tensor, d: np.ndarray | None,
                 out: torch.Tensor) -> np.ndarray | None:
    """Pooling / upsampling: mixes positions along the spatial axes (2..), never across channels."""
    if d is None:
        return None
    if not require_constant(ctx, d, list(range(2, d.ndim)), f"{name} ({type(m).__name__}): pools over channels"):
        return None
    if out.ndim != d.ndim:
        return reshape(d, _shape(x), _shape(out)) if x.numel() == out.numel() else None
    return d


def flatten_module_rule(ctx: TraceContext, name: str, m: nn.Module, x: torch.Tensor, d: np.ndarray | None,
                        out: torch.Tensor) -> np.ndarray | None:
    return reshape(d, _shape(x), _shape(out))


def unflatten_module_rule(ctx, name, m, x, d, out):
    return reshape(d, _shape(x), _shape(out))


def shuffle_module_rule(ctx: TraceContext, name: str, m: nn.Module, x: torch.Tensor, d: np.ndarray | None,
                        out: torch.Tensor) -> np.ndarray | None:
    if d is None:
        return None
    n, c = x.shape[0], x.shape[1]
    g = m.groups
    s = _shape(x)
    if len(vary_axes(d)) != 1 or d.shape[1] != c or c % g:
        ctx.pin(d, f"{name} (ChannelShuffle): channels spread over several axes")
        return None
    grid = along(d, 1, c).reshape(g, c // g)
    for row in grid[1:]:  # the shuffle is redone on what is left: remove whole columns (one channel per group)
        ctx.union(grid[0], row, f"{name} (ChannelShuffle): shuffles channels")
    mid = reshape(d, s, (n, g, c // g) + s[2:])
    if mid is None:
        return None
    mid = np.swapaxes(expand_to(mid, (n, g, c // g) + s[2:]), 1, 2)
    return reshape(compress(mid), (n, c // g, g) + s[2:], s)


def softmax_module_rule(ctx, name, m, x, d, out):
    if d is None:
        return None
    dim = m.dim if m.dim is not None else 1
    if not require_constant(ctx, d, [dim % d.ndim], f"{name} (Softmax): normalises across channels"):
        return None
    return d


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.AlphaDropout, nn.SELU, nn.CELU, nn.Softplus, nn.Hardtanh, nn.Tanhshrink)

MODULE_RULES: list[tuple[type | tuple[type, ...], Rule]] = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), conv_rule),
    (nn.Linear, linear_rule),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm), per_channel_rule(axis=1)),
    ((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), per_channel_rule(axis=1)),
    (nn.GroupNorm, per_channel_rule(axis=1, reducer="group_norm", parts_attr="num_groups")),
    (nn.LayerNorm, layer_norm_rule),
    (nn.PReLU, per_channel_rule(axis=1)),
    (_ACTIVATIONS, lambda ctx, n, m, x, d, o: identity(ctx, n, [x], [d], o)),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
      nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
      nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d,
      nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d), spatial_rule),
    (nn.Flatten, flatten_module_rule),
    (nn.Unflatten, unflatten_module_rule),
    (nn.ChannelShuffle, shuffle_module_rule),
    ((nn.Softmax, nn.LogSoftmax), softmax_module_rule),
]


def module_rule(m: nn.Module) -> Rule | None:
    for types, rule in MODULE_RULES:
        if isinstance(m, types):
            return rule
    return None


# ---------------------------------------------------------------------------------------------------------------
# Function / method rules: (ctx, where, args, kwargs, arg_ds, kwarg_ds, out, params) -> descriptor.
# ``args`` hold meta tensors, ``arg_ds`` the descriptors at the same places, ``params`` the parameter names.
# ---------------------------------------------------------------------------------------------------------------


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def unary_fn(ctx, where, args, kwargs, ds, kds, out, params):
    return identity(ctx, where, [args[0]], [ds[0]], out)


def binary_fn(ctx, where, args, kwargs, ds, kds, out, params):
    operands = [(a, d, p) for a, d, p in zip(args, ds, params, strict=False)
                if isinstance(a, torch.Tensor) or isinstance(a, (int, float))]
    for key in ("other", "input"):
        if key in kwargs:
            operands.append((kwargs[key], kds.get(key), None))
    return elementwise(ctx, where, operands, out)


def where_fn(ctx, where, args, kwargs, ds, kds, out, params):
    return elementwise(ctx, where, list(zip(args, ds, params, strict=False)), out)


def reshape_fn(ctx, where, args, kwargs, ds, kds, out, params):
    x, d = args[0], ds[0]
    if not isinstance(out, torch.Tensor):
        return None
    res = reshape(d, _shape(x), _shape(out))
    node = ctx.node
    sizes = None
    if node is not None and node.op == "call_method" and node.target in ("view", "reshape", "expand"):
        sizes = node.args[1:]
    elif node is not None and node.op == "call_function" and node.target is torch.reshape:
        sizes = node.args[1:2]
    if sizes is not None:
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        if len(sizes) == out.ndim:
            _pin_foreign_sizes(ctx, where, res, _shape(out), sizes)
            if d is not None and res is not None and node.target != "expand":
                return _check_target_sizes(ctx, where, d, res, _shape(x), _shape(out), sizes)
    return res


def _pin_foreign_sizes(ctx, where, res, out_shape, sizes) -> None:
    """A size read from a tracked channel axis fixes that count where the reshaped tensor does not follow it."""
    for a, s in enumerate(sizes):
        p = ctx.prov.get(s) if not isinstance(s, (int, float)) else None
        if not isinstance(p, tuple) or not p or p[0] != "direct":
            continue
        here = None
        if res is not None and res.shape[a] > 1 and len(vary_axes(res)) == 1:
            here = along(res, a, out_shape[a])
        if here is None or here.size != p[1].size:
            ctx.pin(p[1], f"{where}: uses another tensor's channel count as a size")
        elif set(p[1].tolist()) != set(here.tolist()):
            ctx.union(p[1], here, f"{where}: reshapes to the channel count of another tensor")


def _aligned_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Dims of ``a`` and ``b`` grouped so that each group's products match (how a reshape maps dims)."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj, pa, pb = [], [], 1, 1
        if i < len(a):
            pa, i = a[i], i + 1
            gi.append(i - 1)
        if j < len(b):
            pb, j = b[j], j + 1
            gj.append(j - 1)
        while pa != pb and (i < len(a) or j < len(b)):
            if (pa < pb and i < len(a)) or j >= len(b):
                pa, i = pa * a[i], i + 1
                gi.append(i - 1)
            else:
                pb, j = pb * b[j], j + 1
                gj.append(j - 1)
        groups.append((gi, gj))
    return groups


def _check_target_sizes(ctx, where, d, res, in_shape, out_shape, sizes):
    """A reshape to explicit sizes stays valid after pruning only where the sizes follow the channel count."""
    import torch.fx as fx

    def is_dyn(s: Any) -> bool:
        return isinstance(s, fx.Node) or s == -1

    full_in = expand_to(d, in_shape)
    res_full = res
    for gi, gj in _aligned_groups(in_shape, out_shape):
        if not any(d.shape[a] > 1 for a in gi):
            continue
        tracked_out = [a for a in gj if res.shape[a] > 1]
        dyn = [a for a in gj if is_dyn(sizes[a])]
        if not dyn:
            ctx.pin(full_in, f"{where}: reshapes channels to fixed sizes")
            return None
        if len(gi) == 1 and len(gj) > 1:  # channels split into factors: only the dynamic factor may shrink
            if len(dyn) > 1:
                ctx.pin(full_in, f"{where}: splits channels into several dynamic factors")
                return None
            const = [a for a in gj if a not in dyn and out_shape[a] > 1]
            if const:
                g = expand_to(res_full, out_shape)
                g = np.moveaxis(g, const, list(range(len(const))))
                g = g.reshape(int(np.prod([out_shape[a] for a in const])), -1)
                for row in g[1:]:
                    ctx.union(g[0], row, f"{where}: splits channels into fixed-size factors")
        del tracked_out
    return res


def permute_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    dims = args[1:] if len(args) > 1 else (kwargs.get("dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return np.ascontiguousarray(np.transpose(d, [int(a) % d.ndim for a in dims]))


def transpose_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    a, b = _arg(args, kwargs, 1, "dim0"), _arg(args, kwargs, 2, "dim1")
    return np.ascontiguousarray(np.swapaxes(d, int(a), int(b)))


def movedim_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    return np.ascontiguousarray(np.moveaxis(d, _arg(args, kwargs, 1, "source"), _arg(args, kwargs, 2, "destination")))


def expand_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    return d.reshape((1,) * (out.ndim - d.ndim) + d.shape)


def repeat_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    reps = args[1:]
    if len(reps) == 1 and isinstance(reps[0], (tuple, list)):
        reps = tuple(reps[0])
    d = d.reshape((1,) * (len(reps) - d.ndim) + d.shape)
    reps = [int(r) if d.shape[i] > 1 else 1 for i, r in enumerate(reps)]
    return np.tile(d, reps)


def getitem_fn(ctx, where, args, kwargs, ds, kds, out, params):
    obj, idx = args[0], args[1]
    d = ds[0]
    if d is None:
        return None
    if isinstance(d, (tuple, list)):
        return d[idx]
    if not isinstance(obj, torch.Tensor):
        return None
    index = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, torch.Tensor) or isinstance(i, (list, tuple)) for i in index):
        ctx.pin(d, f"{where}: indexes channels with a tensor")
        return None
    full = expand_to(d, _shape(obj))
    return compress(full[index])


def cat_fn(ctx, where, args, kwargs, ds, kds, out, params):
    tensors = _arg(args, kwargs, 0, "tensors")
    tds = ds[0] if ds and ds[0] is not None else kds.get("tensors")
    tparams = params[0] if params and isinstance(params[0], (tuple, list)) else [None] * len(tensors)
    dim = int(_arg(args, kwargs, 1, "dim", 0)) % out.ndim
    if tds is None or all(d is None for d in tds):
        return None
    tracked = [d for d in tds if d is not None]
    if all(d.shape[dim] == 1 for d in tracked):
        # concatenated along an axis the channels do not live on (e.g. ViT's class token): channels align
        operands = []
        for t, d, p in zip(tensors, tds, tparams, strict=False):
            shape = list(t.shape)
            shape[dim] = 1
            operands.append((torch.empty(shape, device="meta"), d, p))
        shape = list(out.shape)
        shape[dim] = 1
        return elementwise(ctx, where, operands, torch.empty(shape, device="meta"))
    if any(len(vary_axes(d)) > 1 or (vary_axes(d) and vary_axes(d) != [dim]) for d in tracked):
        ctx.pin_all(tracked, f"{where}: concatenates channels spread over several axes")
        return None
    pieces = []
    for t, d in zip(tensors, tds, strict=False):
        n = t.shape[dim]
        pieces.append(np.full(n, -1, dtype=np.int64) if d is None else along(d, dim, n))
    return _at_axis(np.concatenate(pieces), dim, out.ndim)


def stack_fn(ctx, where, args, kwargs, ds, kds, out, params):
    tensors = _arg(args, kwargs, 0, "tensors")
    tds = ds[0]
    dim = int(_arg(args, kwargs, 1, "dim", 0)) % out.ndim
    if tds is None or all(d is None for d in tds):
        return None
    shape = list(out.shape)
    shape[dim] = 1
    operands = [(t.unsqueeze(dim), None if d is None else np.expand_dims(d, dim), None)
                for t, d in zip(tensors, tds, strict=False)]
    return elementwise(ctx, where, operands, torch.empty(shape, device="meta"))


def split_fn(ctx, where, args, kwargs, ds, kds, out, params):
    x, d = args[0], ds[0]
    if d is None:
        return None
    if not isinstance(out, (tuple, list)):
        return None
    if "unbind" in where:
        dim = int(_arg(args, kwargs, 1, "dim", 0)) % x.ndim
    else:
        dim = int(_arg(args, kwargs, 2, "dim", 0)) % x.ndim
    if d.shape[dim] > 1:
        if "chunk" in where and len(out) > 1:  # equal pieces of whatever is left: equal removal per piece
            if len(vary_axes(d)) > 1 or x.shape[dim] % len(out):
                ctx.pin(d, f"{where}: chunks channels spread over several axes")
                return tuple(None for _ in out)
            ctx.block(along(d, dim, x.shape[dim]), len(out), f"{where}: chunks channels")
        else:  # split sizes / unbind count are fixed numbers
            ctx.pin(d, f"{where}: splits channels at fixed sizes")
            return tuple(None for _ in out)
    if d.shape[dim] == 1:
        res = [d for _ in out]
    else:
        full = expand_to(d, _shape(x))
        bounds = np.cumsum([0] + [int(o.shape[dim]) if o.ndim == x.ndim else 1 for o in out])
        res = []
        for i, o in enumerate(out):
            piece = full[(slice(None),) * dim + (slice(bounds[i], bounds[i + 1]),)]
            if o.ndim != x.ndim:
                piece = piece.squeeze(dim)
            res.append(compress(piece))
    return tuple(res)


def reduce_fn(ctx, where, args, kwargs, ds, kds, out, params):
    x, d = args[0], ds[0]
    if d is None:
        return None
    dim = _arg(args, kwargs, 1, "dim")
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    if dim is None:
        axes = list(range(x.ndim))
    elif isinstance(dim, (tuple, list)):
        axes = [int(a) % x.ndim for a in dim]
    else:
        axes = [int(dim) % x.ndim]
    if not require_constant(ctx, d, axes, f"{where}: reduces over channels"):
        return None
    res = d if keepdim else np.squeeze(d, axis=tuple(axes))
    if isinstance(out, (tuple, list)):  # max/min with dim -> (values, indices)
        return (res, res)
    return res


def softmax_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    dim = int(_arg(args, kwargs, 1, "dim", -1)) % d.ndim
    if not require_constant(ctx, d, [dim], f"{where}: normalises across channels"):
        return None
    return d


def spatial_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    if not require_constant(ctx, d, list(range(2, d.ndim)), f"{where}: pools over channels"):
        return None
    return d if out.ndim == d.ndim else None


def layer_norm_fn(ctx, where, args, kwargs, ds, kds, out, params):
    ctx.pin_all(ds, f"{where}: functional layer_norm across channels")
    return None


def no_tensor_fn(ctx, where, args, kwargs, ds, kds, out, params):
    return None


def _stochastic_depth() -> Any:
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return stochastic_depth


_UNARY_FUNCS = [torch.relu, torch.sigmoid, torch.tanh, torch.abs, torch.neg, torch.exp, torch.clamp, torch.clip,
                torch.nn.functional.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
                F.leaky_relu, F.elu, F.mish, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                F.hardtanh, F.softplus, operator.neg, torch.square, torch.sqrt, torch.rsqrt,
                torch.erf, torch.log, torch.clone, torch.nan_to_num]

FUNCTION_RULES: dict[Any, Rule] = {f: unary_fn for f in _UNARY_FUNCS}
FUNCTION_RULES.update({
    torch.flatten: reshape_fn, torch.reshape: reshape_fn, torch.squeeze: reshape_fn, torch.unsqueeze: reshape_fn,
    torch.unflatten: reshape_fn,
    torch.permute: permute_fn, torch.transpose: transpose_fn, torch.movedim: movedim_fn, torch.swapaxes: transpose_fn,
    operator.add: binary_fn, operator.sub: binary_fn, operator.mul: binary_fn, operator.truediv: binary_fn,
    operator.iadd: binary_fn, operator.imul: binary_fn, torch.add: binary_fn, torch.sub: binary_fn,
    torch.mul: binary_fn, torch.div: binary_fn, torch.maximum: binary_fn, torch.minimum: binary_fn,
    torch.where: where_fn,
    operator.getitem: getitem_fn,
    torch.cat: cat_fn, torch.concat: cat_fn, torch.stack: stack_fn,
    torch.split: split_fn, torch.chunk: split_fn, torch.tensor_split: split_fn, torch.unbind: split_fn,
    torch.mean: reduce_fn, torch.sum: reduce_fn, torch.amax: reduce_fn, torch.amin: reduce_fn,
    F.softmax: softmax_fn, F.log_softmax: softmax_fn, torch.softmax: softmax_fn,
    F.adaptive_avg_pool2d: spatial_fn, F.adaptive_max_pool2d: spatial_fn, F.avg_pool2d: spatial_fn,
    F.max_pool2d: spatial_fn, F.adaptive_avg_pool1d: spatial_fn, F.interpolate: spatial_fn,
    F.layer_norm: layer_norm_fn,
    torch._assert: no_tensor_fn, getattr: no_tensor_fn, operator.floordiv: no_tensor_fn, len: no_tensor_fn,
})
if _stochastic_depth() is not None:
    FUNCTION_RULES[_stochastic_depth()] = unary_fn

METHOD_RULES: dict[str, Rule] = {name: unary_fn for name in (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clip", "contiguous", "clone", "detach",
    "float", "double", "half", "bfloat16", "to", "type_as", "abs", "neg", "exp", "sqrt", "square", "nan_to_num",
    "hardswish", "gelu", "silu", "requires_grad_")}
METHOD_RULES.update({
    "view": reshape_fn, "reshape": reshape_fn, "flatten": reshape_fn, "squeeze": reshape_fn, "unsqueeze": reshape_fn,
    "unflatten": reshape_fn, "view_as": reshape_fn, "reshape_as": reshape_fn,
    "permute": permute_fn, "transpose": transpose_fn, "movedim": movedim_fn, "swapaxes": transpose_fn,
    "expand": expand_fn, "expand_as": expand_fn, "repeat": repeat_fn,
    "add": binary_fn, "add_": binary_fn, "sub": binary_fn, "sub_": binary_fn, "mul": binary_fn, "mul_": binary_fn,
    "div": binary_fn, "div_": binary_fn,
    "split": split_fn, "chunk": split_fn, "tensor_split": split_fn, "unbind": split_fn,
    "mean": reduce_fn, "sum": reduce_fn, "amax": reduce_fn, "amin": reduce_fn, "max": reduce_fn, "min": reduce_fn,
    "softmax": softmax_fn, "log_softmax": softmax_fn,
    "size": no_tensor_fn, "dim": no_tensor_fn, "numel": no_tensor_fn,
})
