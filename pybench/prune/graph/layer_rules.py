"""Rules of layers called in their functional form (``F.conv2d``, ``F.batch_norm``, ``F.linear``...) from a
module's own forward, as timm's BatchNormAct2d, Conv2dSame and bare-parameter layers do.

Where the weight is the parameter of a torch.nn layer of the same kind, the call is that layer's: its module rule
(:mod:`pybench.prune.graph.rules`) records module slots, so surgery's pruner keeps the layer's attributes
(``num_features``, ``out_channels``...) true. Other parameters and buffers get parameter slots (a consumer's weight
dim 1 joins ``ctx.consumed``, which masking zeroes); a weight computed in forward keeps its channels, with the
reason. The rules have the contract of :mod:`pybench.prune.graph.fn_rules`, which registers them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from pybench.prune import layers
from pybench.prune.graph.rules import (
    _at_axis,
    _channel_ids,
    arg_at,
    conv_rule,
    linear_rule,
    per_channel_rule,
    require_constant,
)

__all__ = ["batch_norm_fn", "conv_fn", "group_norm_fn", "instance_norm_fn", "layer_norm_fn", "linear_fn"]


def _param_name(ctx, params: list, i: int, key: str) -> str | None:
    """The parameter / buffer name of argument ``i`` or keyword ``key``, or None (not a parameter)."""
    if i < len(params) and isinstance(params[i], str):
        return params[i]
    node = ctx.node
    v = node.kwargs.get(key) if node is not None else None
    if v is None:
        return None
    return getattr(v, "param", None) or ctx.param_of.get(v)


def _owner(ctx, names: list[str | None], types: type | tuple[type, ...]) -> tuple[str, Any] | None:
    """(name, module) when every given parameter name is a direct tensor of one module of ``types``."""
    given = [n for n in names if n is not None]
    owners = {n.rpartition(".")[0] for n in given}
    if not given or len(owners) != 1:
        return None
    owner = owners.pop()
    m = ctx.modules.get(owner)
    if not isinstance(m, types):
        return None
    own = set(m._parameters) | set(m._buffers)
    return (owner, m) if all(n.rpartition(".")[2] in own for n in given) else None


def _tensors_are_params(ctx, where, args, kwargs, positions, names, d) -> bool:
    """False (and ``d`` pinned) when a per-channel argument is a tensor that is no parameter: nothing could slice
    it when the channels go."""
    for (i, key), name in zip(positions, names, strict=True):
        if isinstance(arg_at(args, kwargs, i, key), torch.Tensor) and name is None:
            ctx.pin(d, f"{where}: a per-channel argument ({key}) is a computed tensor")
            return False
    return True


_NORM_ARGS = [(1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")]


def _norm_fn(types: tuple[type, ...], kind: str):
    """F.batch_norm / F.instance_norm: per-channel statistics and affine, channels on dim 1."""

    def rule(ctx, where, args, kwargs, ds, kds, out, params):
        x, d = args[0], ds[0]
        if d is None:
            return None
        names = [_param_name(ctx, params, i, key) for i, key in _NORM_ARGS]
        if not _tensors_are_params(ctx, where, args, kwargs, _NORM_ARGS, names, d):
            return None
        owned = _owner(ctx, names, types)
        if owned is not None and owned[1].num_features == x.shape[1]:
            return per_channel_rule(axis=1)(ctx, owned[0], owned[1], x, d, out)
        ids = _channel_ids(ctx, f"{where} ({kind})", d, 1, x.shape[1])
        if ids is None:
            return None
        for name in filter(None, names):
            ctx.slot(("param", name, 0), ids)
        return d

    return rule


def group_norm_fn(ctx, where, args, kwargs, ds, kds, out, params):
    """F.group_norm normalises across the channels of a group: only a torch.nn.GroupNorm's (masking knows it)."""
    x, d = args[0], ds[0]
    if d is None:
        return None
    positions = [(2, "weight"), (3, "bias")]
    names = [_param_name(ctx, params, i, key) for i, key in positions]
    owned = _owner(ctx, names, nn.GroupNorm)
    groups = arg_at(args, kwargs, 1, "num_groups")
    if owned is not None and owned[1].num_groups == groups and owned[1].num_channels == x.shape[1]:
        return per_channel_rule(axis=1, reducer="group_norm", parts_attr="num_groups")(ctx, owned[0], owned[1], x,
                                                                                      d, out)
    ctx.pin(d, f"{where}: group_norm across channels outside a torch.nn.GroupNorm")
    return None


def layer_norm_fn(ctx, where, args, kwargs, ds, kds, out, params):
    """F.layer_norm over axes the channels do not vary on passes them through; across them it keeps them."""
    x, d = args[0], ds[0]
    if d is None:
        return None
    shape = arg_at(args, kwargs, 1, "normalized_shape")
    k = len(shape) if isinstance(shape, (tuple, list)) else 1
    if not require_constant(ctx, d, list(range(x.ndim - k, x.ndim)), f"{where}: functional layer_norm across "
                            "channels"):
        return None
    return d


def _computed_layer(ctx, where: str, kind: str, d, n_out: int, axis: int, ndim: int):
    """A layer whose weight is computed in forward (weight standardisation, say): nothing can slice it, so the
    channels it reads and the channels it makes are kept, with the reason (not silently untracked)."""
    reason = f"{where}: {kind} with a weight or bias computed in forward (no parameter to slice)"
    ctx.pin(d, reason)
    ids = ctx.space(where, n_out)
    ctx.pin(ids, reason)
    return _at_axis(ids, axis, ndim)


def conv_fn(ctx, where, args, kwargs, ds, kds, out, params):
    """F.conv1d / 2d / 3d: a torch.nn conv's own weight is that conv; another parameter gets parameter slots (out:
    dim 0 of weight and bias, in: dim 1, which masking zeroes); a computed weight keeps the channels it reads."""
    x, d = args[0], ds[0]
    w, b = arg_at(args, kwargs, 1, "weight"), arg_at(args, kwargs, 2, "bias")
    groups = int(arg_at(args, kwargs, 6, "groups", 1))
    wname, bname = _param_name(ctx, params, 1, "weight"), _param_name(ctx, params, 2, "bias")
    owned = _owner(ctx, [wname, bname], layers.CONVS)
    if owned is not None and wname == f"{owned[0]}.weight" and owned[1].groups == groups and \
            (b is None) == (owned[1].bias is None) and tuple(w.shape) == tuple(owned[1].weight.shape):
        return conv_rule(ctx, owned[0], owned[1], x, d, out)
    cout, cin = w.shape[0], w.shape[1] * groups
    if wname is None or (isinstance(b, torch.Tensor) and bname is None):
        return _computed_layer(ctx, where, "convolution", d, cout, 1, out.ndim)
    if groups != 1:
        ctx.pin(d, f"{where}: functional grouped convolution (groups={groups}) of a parameter")
        return None
    if d is not None:
        in_ids = _channel_ids(ctx, where, d, 1, cin)
        if in_ids is None:
            return None
        ctx.slot(("param", wname, 1), in_ids)
        ctx.consumed.add(("param", wname, 1))
    out_ids = ctx.space(wname, cout)
    ctx.slot(("param", wname, 0), out_ids)
    if bname is not None:
        ctx.slot(("param", bname, 0), out_ids)
    return _at_axis(out_ids, 1, out.ndim)


def linear_fn(ctx, where, args, kwargs, ds, kds, out, params):
    """F.linear: a torch.nn.Linear's own weight is that layer; another parameter gets parameter slots."""
    x, d = args[0], ds[0]
    w, b = arg_at(args, kwargs, 1, "weight"), arg_at(args, kwargs, 2, "bias")
    wname, bname = _param_name(ctx, params, 1, "weight"), _param_name(ctx, params, 2, "bias")
    owned = _owner(ctx, [wname, bname], nn.Linear)
    if owned is not None and wname == f"{owned[0]}.weight" and (b is None) == (owned[1].bias is None):
        return linear_rule(ctx, owned[0], owned[1], x, d, out)
    last = out.ndim - 1
    if wname is None or (isinstance(b, torch.Tensor) and bname is None):
        return _computed_layer(ctx, where, "linear", d, w.shape[0], last, out.ndim)
    if d is not None and d.shape[last] > 1:
        in_ids = _channel_ids(ctx, where, d, last, w.shape[1])
        if in_ids is None:
            return None
        ctx.slot(("param", wname, 1), in_ids)
        ctx.consumed.add(("param", wname, 1))
    elif d is not None:  # channels on another axis pass a linear over the last one
        return d
    out_ids = ctx.space(wname, w.shape[0])
    ctx.slot(("param", wname, 0), out_ids)
    if bname is not None:
        ctx.slot(("param", bname, 0), out_ids)
    return _at_axis(out_ids, last, out.ndim)


batch_norm_fn = _norm_fn(layers.BATCH_NORMS, "batch_norm")
instance_norm_fn = _norm_fn(layers.INSTANCE_NORMS, "instance_norm")
