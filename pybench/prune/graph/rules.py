"""How each traced operation moves, merges or consumes channels (used by :mod:`pybench.prune.graph`).

Every rule gets the tracing context, the fx node, the node's inputs as meta tensors (shapes only) and as channel
descriptors (see :mod:`pybench.prune.graph.channels`), and returns the output's descriptor. Rules record four things in
the context: *slots* (a module or parameter dimension whose indices carry channel ids: what surgery slices), *unions*
(ids that must be removed together: residual adds, products, shared modules), *pins* (ids that must never be
removed, with the reason) and *blocks* (ids to prune in equal numbers per partition: grouped convs, GroupNorm).
An operation no rule knows pins the channels it reads: the result is less pruning, never a wrong model.

This module holds the trace context, the building blocks every rule shares and the module rules
(:data:`MODULE_RULES`, :func:`module_rule`); the function and method rules (``FUNCTION_RULES``,
``METHOD_RULES``) are in :mod:`pybench.prune.graph.fn_rules`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from pybench._registry import Registry
from pybench.prune import layers
from pybench.prune.graph.channels import along, compress, expand_to, reshape, vary_axes

Rule = Callable[..., Any]

# ---------------------------------------------------------------------------------------------------------------
# The context a trace fills in.
# ---------------------------------------------------------------------------------------------------------------


class TraceContext:
    """Mutable state of one trace: id spaces, slots, unions, pins, blocks."""

    def __init__(self, modules: dict[str, nn.Module] | None = None) -> None:
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
        self.modules = modules or {}  # the traced model's modules by name (functional rules find their owners)
        self.consumed: set[tuple] = set()  # ("param", name, dim) slots that read channels (mask zeroes them)
        # split sizes held by a module attribute, rewritten by surgery: (module, attribute, ids, part bounds, mode)
        self.resizes: list[tuple[str, str, np.ndarray, list[int], str]] = []  # mode: part / sizes / total

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


class SymInt(int):
    """A size read from a traced tensor (the eager tracer's stand-in for fx's size nodes). ``prov`` is
    ``("direct", ids)`` for a channel axis' size, ``("derived", ids)`` for arithmetic on one, else None; any SymInt
    is a dynamic size (it follows the tensor), unlike a literal int."""

    prov: Any

    def __new__(cls, value: int, prov: Any = None) -> SymInt:
        self = int.__new__(cls, value)
        self.prov = prov
        return self


def _sym_arith(fn: Callable, swap: bool) -> Callable:
    def op(self: SymInt, other: Any) -> Any:
        if not isinstance(other, (int, float)):
            return NotImplemented
        a, b = int(self), (int(other) if isinstance(other, int) else other)
        r = fn(b, a) if swap else fn(a, b)
        if not isinstance(r, int):
            return r
        prov = self.prov if self.prov is not None else getattr(other, "prov", None)
        return SymInt(r, ("derived", prov[1]) if prov is not None else None)
    return op


for _name, _fn in (("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
                   ("floordiv", lambda a, b: a // b), ("mod", lambda a, b: a % b),
                   ("truediv", lambda a, b: a / b)):
    setattr(SymInt, f"__{_name}__", _sym_arith(_fn, False))
    setattr(SymInt, f"__r{_name}__", _sym_arith(_fn, True))


def is_symbolic(size: Any) -> bool:
    """Whether a size given to a reshape follows the traced tensors (an fx node or a SymInt) or is a literal."""
    return isinstance(size, (SymInt, torch.fx.Node))


def size_provenance(ctx: TraceContext, size: Any) -> Any:
    """The channels a size given to a reshape counts (see :class:`SymInt`), or None."""
    if isinstance(size, SymInt):
        return size.prov
    if isinstance(size, (int, float)):
        return None
    return ctx.prov.get(size)


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


def nonunit(shape: Any) -> list[int]:
    """The sizes of ``shape`` other than 1 (what a view that adds or drops size-1 dims keeps)."""
    return [int(n) for n in shape if n != 1]


def arg_at(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` of a call, or its keyword ``name``, or ``default``."""
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


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


def couple_across(ctx: TraceContext, d: np.ndarray | None, axes: list[int], reason: str) -> np.ndarray | None:
    """For an op that mixes positions along ``axes`` only (softmax over SK's path axis, a sum over stacked branches):
    ``d`` with its ids at equal positions off ``axes`` made one channel, so that a channel goes from every position
    along ``axes`` at once and their count never changes (the op stays exact); the first slice along ``axes`` is
    returned (size 1 there). Channels that vary along ``axes`` alone (softmax over the channel axis itself), or that
    meet untracked positions there, are pinned: None."""
    d = compress(d)
    if d is None or not any(d.shape[a] > 1 for a in axes):
        return None if d is None else d[tuple(slice(0, 1) if a in axes else slice(None) for a in range(d.ndim))]
    off = [a for a in range(d.ndim) if a not in axes and d.shape[a] > 1]
    if not off or (d < 0).any():
        ctx.pin(d, reason)
        return None
    first = d[tuple(slice(0, 1) if a in axes else slice(None) for a in range(d.ndim))]
    ctx.union(np.broadcast_to(first, d.shape), d, reason)
    return first


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
            pdim = _param_dim(ctx, param, shape, rank, ax) if param is not None else None
            if pdim is not None:
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


def _param_dim(ctx: TraceContext, param: str, shape: tuple[int, ...], rank: int, ax: int) -> int | None:
    """The parameter's own dim that ``ax`` of ``shape`` indexes (``shape``: the operand of rank ``rank``,
    right-aligned to the op's rank): the operand may be the parameter or a view of it with size-1 dims added or
    dropped (``gamma.reshape(1, -1, 1, 1)``, a layer scale); None where it does not follow the parameter."""
    owner, _, attr = param.rpartition(".")
    m = ctx.modules.get(owner)
    t = None if m is None else m._parameters.get(attr, m._buffers.get(attr))
    if t is None:  # its shape is not at hand: the operand is the parameter, right-aligned
        return ax - (len(shape) - rank)
    if nonunit(shape) != nonunit(t.shape) or shape[ax] == 1:
        return None
    k = sum(1 for n in shape[:ax] if n != 1)
    return [i for i, n in enumerate(t.shape) if n != 1][k]


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
    if cin != cout and not (g == cin and cout % cin == 0):
        # grouped, in and out of different widths (ResNeSt's groups=2, out = 2 x in): inputs and outputs prune
        # apart, each the same number in every group
        if in_ids is not None:
            ctx.slot(("module", name, "in"), in_ids, m)
            ctx.block(in_ids, g, f"{where}: grouped convolution with {g} groups (inputs)")
        out_ids = ctx.space(name, cout)
        ctx.slot(("module", name, "out"), out_ids, m)
        ctx.block(out_ids, g, f"{where}: grouped convolution with {g} groups (outputs)")
        return _at_axis(out_ids, 1, out.ndim)
    if in_ids is None:  # grouped conv on untracked channels: its outputs follow its inputs, so keep them
        return None
    if cin == cout:  # depthwise, or grouped with equal widths: output channel i reads input channel i's group
        ctx.slot(("module", name, "in"), in_ids, m)
        ctx.slot(("module", name, "out"), in_ids, m)
        if g != cin:
            ctx.block(in_ids, g, f"{where}: grouped convolution with {g} groups")
        return _at_axis(in_ids, 1, out.ndim)
    # depthwise with a channel multiplier
    out_ids = np.repeat(in_ids, cout // cin)
    ctx.slot(("module", name, "in"), in_ids, m)
    ctx.slot(("module", name, "out"), out_ids, m)
    return _at_axis(out_ids, 1, out.ndim)


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
    if kind == "grn":
        return [m.channel_dim % ndim]
    return [1]


def is_grn(m: nn.Module) -> bool:
    """timm's GlobalResponseNorm (ConvNeXt-V2): known by its class name and attributes, so timm is not imported."""
    return type(m).__name__ == "GlobalResponseNorm" and all(
        hasattr(m, a) for a in ("weight", "bias", "eps", "channel_dim", "spatial_dim"))


def grn_rule(ctx: TraceContext, name: str, m: nn.Module, x: torch.Tensor, d: np.ndarray | None,
             out: torch.Tensor) -> np.ndarray | None:
    """GRN's mean over channels is a reducer, like LayerNorm's: pruned, it averages the kept channels, and pb.mask
    switches it to a variant that does the same; gamma / beta are its per-channel parameters."""
    return per_channel_rule(axis=m.channel_dim % out.ndim, reducer="grn")(ctx, name, m, x, d, out)


def named_leaf(m: nn.Module) -> bool:
    """Modules outside torch.nn that the tracers keep whole, because a rule knows them (their forward would pin)."""
    return is_grn(m)


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
    return couple_across(ctx, d, [dim % d.ndim], f"{name} (Softmax): normalises across channels")


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.AlphaDropout, nn.SELU, nn.CELU, nn.Softplus, nn.Hardtanh, nn.Tanhshrink)

# layer type -> its rule; a subclass without its own entry gets its nearest base's (Registry.for_type)
MODULE_RULES: Registry = Registry("module rule")
MODULE_RULES.register(*layers.CONVS)(conv_rule)
MODULE_RULES.register(nn.Linear)(linear_rule)
MODULE_RULES.register(*layers.BATCH_NORMS, *layers.INSTANCE_NORMS, nn.PReLU)(per_channel_rule(axis=1))
MODULE_RULES.register(nn.GroupNorm)(per_channel_rule(axis=1, reducer="group_norm", parts_attr="num_groups"))
MODULE_RULES.register(nn.LayerNorm)(layer_norm_rule)
MODULE_RULES.register(*_ACTIVATIONS)(lambda ctx, n, m, x, d, o: identity(ctx, n, [x], [d], o))
MODULE_RULES.register(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                      nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                      nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d,
                      nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)(spatial_rule)
MODULE_RULES.register(nn.Flatten)(flatten_module_rule)
MODULE_RULES.register(nn.Unflatten)(unflatten_module_rule)
MODULE_RULES.register(nn.ChannelShuffle)(shuffle_module_rule)
MODULE_RULES.register(nn.Softmax, nn.LogSoftmax)(softmax_module_rule)


def module_rule(m: nn.Module) -> Rule | None:
    if is_grn(m):
        return grn_rule
    return MODULE_RULES.for_type(type(m))

