"""Function and method rules: how each traced ``call_function`` / ``call_method`` moves, merges or consumes channels.

:data:`FUNCTION_RULES` (keyed by the callable) and :data:`METHOD_RULES` (keyed by the tensor method's name) map each
operation :mod:`pybench.prune.graph` meets outside a module to a rule of the same contract as the module rules in
:mod:`pybench.prune.graph.rules` (the context, slots, unions, pins and blocks described there); they live apart from
those so that each file holds one family of rules, and build on its trace context and shared helpers
(:func:`~pybench.prune.graph.rules.identity`, :func:`~pybench.prune.graph.rules.elementwise`,
:func:`~pybench.prune.graph.rules.require_constant`); the rules of layers called functionally (``F.conv2d``,
``F.batch_norm``...) are in :mod:`pybench.prune.graph.layer_rules`. An operation no rule knows pins the channels
it reads.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pybench._registry import Registry
from pybench.prune.graph.channels import along, compress, expand_to, reshape, vary_axes
from pybench.prune.graph.layer_rules import (
    batch_norm_fn,
    conv_fn,
    group_norm_fn,
    instance_norm_fn,
    layer_norm_fn,
    linear_fn,
)
from pybench.prune.graph.rules import (
    _at_axis,
    _shape,
    arg_at,
    couple_across,
    elementwise,
    identity,
    is_symbolic,
    require_constant,
    size_provenance,
)

# ---------------------------------------------------------------------------------------------------------------
# Function / method rules: (ctx, where, args, kwargs, arg_ds, kwarg_ds, out, params) -> descriptor.
# ``args`` hold meta tensors, ``arg_ds`` the descriptors at the same places, ``params`` the parameter names.
# ---------------------------------------------------------------------------------------------------------------


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
        p = size_provenance(ctx, s)
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
    def is_dyn(s: Any) -> bool:
        return is_symbolic(s) or s == -1

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
    a, b = arg_at(args, kwargs, 1, "dim0"), arg_at(args, kwargs, 2, "dim1")
    return np.ascontiguousarray(np.swapaxes(d, int(a), int(b)))


def movedim_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    src, dst = arg_at(args, kwargs, 1, "source"), arg_at(args, kwargs, 2, "destination")
    return np.ascontiguousarray(np.moveaxis(d, src, dst))


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
    tensors = arg_at(args, kwargs, 0, "tensors")
    tds = ds[0] if ds and ds[0] is not None else kds.get("tensors")
    tparams = params[0] if params and isinstance(params[0], (tuple, list)) else [None] * len(tensors)
    dim = int(arg_at(args, kwargs, 1, "dim", 0)) % out.ndim
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
    tensors = arg_at(args, kwargs, 0, "tensors")
    tds = ds[0]
    dim = int(arg_at(args, kwargs, 1, "dim", 0)) % out.ndim
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
        dim = int(arg_at(args, kwargs, 1, "dim", 0)) % x.ndim
    else:
        dim = int(arg_at(args, kwargs, 2, "dim", 0)) % x.ndim
    if d.shape[dim] > 1:
        if "chunk" in where and len(out) > 1:  # equal pieces of whatever is left: equal removal per piece
            if len(vary_axes(d)) > 1 or x.shape[dim] % len(out):
                ctx.pin(d, f"{where}: chunks channels spread over several axes")
                return tuple(None for _ in out)
            ctx.block(along(d, dim, x.shape[dim]), len(out), f"{where}: chunks channels")
        elif not _split_sizes_follow(ctx, where, args, kwargs, d, dim, x.shape[dim], out):
            ctx.pin(d, f"{where}: splits channels at fixed sizes")  # sizes that are not a module's attribute
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


def _split_sizes_follow(ctx, where, args, kwargs, d, dim, n, out) -> bool:
    """Whether a split's sizes are an attribute of the module whose forward splits (timm's MixedConv2d.splits,
    Res2Net's width) that surgery can rewrite: then the parts prune alike (the same share of each) and the
    attribute is recorded in ``ctx.resizes``. False for sizes from elsewhere."""
    if "unbind" in where or "tensor_split" in where or len(vary_axes(d)) != 1:
        return False
    sizes = arg_at(args, kwargs, 1, "split_size_or_sections")
    if sizes is None:
        sizes = kwargs.get("split_size")
    scope = where.rsplit(": ", 1)[0]
    m = ctx.modules.get(scope)
    if m is None or not isinstance(sizes, (int, list, tuple)) or isinstance(sizes, bool):
        return False
    want = sizes if isinstance(sizes, int) else [int(v) for v in sizes]
    equal = isinstance(want, int)
    if equal and n % want:
        return False
    mode = "part" if equal else "sizes"
    attrs = _attrs_equal(m, want)
    if not attrs and equal:  # x.split(self.in_channels // self.num_paths): the attribute is the whole (timm's SK)
        mode, attrs = "total", _attrs_equal(m, n)
        if len(attrs) > 1:  # in_channels == out_channels: the split is of the input
            attrs = [a for a in attrs if a.startswith("in")]
    if len(attrs) != 1:
        return False
    ids = along(d, dim, n)
    sizes_out = [int(o.shape[dim]) for o in out]
    # every part loses the same share (cells of the parts' gcd each lose as many), so none is emptied
    cell = want if equal else math.gcd(*sizes_out)
    ctx.block(ids, n // cell, f"{where}: splits channels into parts of {scope}.{attrs[0]}")
    ctx.resizes.append((scope, attrs[0], ids, np.cumsum([0, *sizes_out]).tolist(), mode))
    return True


def _attrs_equal(m: Any, want: int | list[int]) -> list[str]:
    """The public attributes of module ``m`` equal to ``want`` (an int, or a list / tuple of ints)."""
    return [k for k, v in vars(m).items() if not k.startswith("_") and not isinstance(v, bool) and
            (v == want if isinstance(want, int) else isinstance(v, (list, tuple)) and list(v) == want)]


def reduce_fn(ctx, where, args, kwargs, ds, kds, out, params):
    x, d = args[0], ds[0]
    if d is None:
        return None
    dim = arg_at(args, kwargs, 1, "dim")
    keepdim = bool(arg_at(args, kwargs, 2, "keepdim", False))
    if dim is None:
        axes = list(range(x.ndim))
    elif isinstance(dim, (tuple, list)):
        axes = [int(a) % x.ndim for a in dim]
    else:
        axes = [int(dim) % x.ndim]
    d = couple_across(ctx, d, axes, f"{where}: reduces over channels")
    if d is None:
        return None
    res = d if keepdim else np.squeeze(d, axis=tuple(axes))
    if isinstance(out, (tuple, list)):  # max/min with dim -> (values, indices)
        return (res, res)
    return res


def norm_fn(ctx, where, args, kwargs, ds, kds, out, params):
    """x.norm(p, dim, keepdim), torch.norm, torch.linalg.vector_norm(x, ord, dim, keepdim): a reduction over
    ``dim`` (the order comes first)."""
    x, d = args[0], ds[0]
    if d is None:
        return None
    dim = arg_at(args, kwargs, 2, "dim")
    keepdim = bool(arg_at(args, kwargs, 3, "keepdim", False))
    axes = list(range(x.ndim)) if dim is None else [int(a) % x.ndim for a in (dim if isinstance(dim, (tuple, list))
                                                                             else [dim])]
    if not require_constant(ctx, d, axes, f"{where}: a norm over channels"):
        return None
    return d if keepdim else np.squeeze(d, axis=tuple(axes))


def pad_fn(ctx, where, args, kwargs, ds, kds, out, params):
    """F.pad: pads the last len(pad) // 2 axes; channels pass unless their own axis is padded."""
    x, d = args[0], ds[0]
    if d is None:
        return None
    pad = list(arg_at(args, kwargs, 1, "pad"))
    padded = [x.ndim - 1 - i for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]]
    if not require_constant(ctx, d, padded, f"{where}: pads the channel axis"):
        return None
    return d


def softmax_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    dim = int(arg_at(args, kwargs, 1, "dim", -1)) % d.ndim
    return couple_across(ctx, d, [dim], f"{where}: normalises across channels")


def spatial_fn(ctx, where, args, kwargs, ds, kds, out, params):
    d = ds[0]
    if d is None:
        return None
    if not require_constant(ctx, d, list(range(2, d.ndim)), f"{where}: pools over channels"):
        return None
    return d if out.ndim == d.ndim else None


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

# callable -> its rule (a register call per rule, as for the module rules)
FUNCTION_RULES: Registry = Registry("function rule")
FUNCTION_RULES.register(*_UNARY_FUNCS)(unary_fn)
FUNCTION_RULES.register(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten)(reshape_fn)
FUNCTION_RULES.register(torch.permute)(permute_fn)
FUNCTION_RULES.register(torch.transpose, torch.swapaxes)(transpose_fn)
FUNCTION_RULES.register(torch.movedim)(movedim_fn)
FUNCTION_RULES.register(operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
                        torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum)(binary_fn)
FUNCTION_RULES.register(torch.where)(where_fn)
FUNCTION_RULES.register(operator.getitem)(getitem_fn)
FUNCTION_RULES.register(torch.cat, torch.concat)(cat_fn)
FUNCTION_RULES.register(torch.stack)(stack_fn)
FUNCTION_RULES.register(torch.split, torch.chunk, torch.tensor_split, torch.unbind)(split_fn)
FUNCTION_RULES.register(torch.mean, torch.sum, torch.amax, torch.amin)(reduce_fn)
FUNCTION_RULES.register(torch.norm, torch.linalg.vector_norm)(norm_fn)
FUNCTION_RULES.register(F.softmax, F.log_softmax, torch.softmax)(softmax_fn)
FUNCTION_RULES.register(F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool1d,
                        F.interpolate)(spatial_fn)
FUNCTION_RULES.register(F.layer_norm)(layer_norm_fn)
FUNCTION_RULES.register(F.group_norm)(group_norm_fn)
FUNCTION_RULES.register(F.pad)(pad_fn)
FUNCTION_RULES.register(F.batch_norm)(batch_norm_fn)
FUNCTION_RULES.register(F.instance_norm)(instance_norm_fn)
FUNCTION_RULES.register(F.conv1d, F.conv2d, F.conv3d)(conv_fn)
FUNCTION_RULES.register(F.linear)(linear_fn)
FUNCTION_RULES.register(torch._assert, getattr, operator.floordiv, len)(no_tensor_fn)
if _stochastic_depth() is not None:
    FUNCTION_RULES.register(_stochastic_depth())(unary_fn)

# tensor method name -> its rule
METHOD_RULES: Registry = Registry("method rule")
METHOD_RULES.register("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clip", "contiguous", "clone",
                      "detach", "float", "double", "half", "bfloat16", "to", "type_as", "abs", "neg", "exp", "sqrt",
                      "square", "nan_to_num", "hardswish", "gelu", "silu", "requires_grad_")(unary_fn)
METHOD_RULES.register("view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten", "view_as",
                      "reshape_as")(reshape_fn)
METHOD_RULES.register("permute")(permute_fn)
METHOD_RULES.register("transpose", "swapaxes")(transpose_fn)
METHOD_RULES.register("movedim")(movedim_fn)
METHOD_RULES.register("expand", "expand_as")(expand_fn)
METHOD_RULES.register("repeat")(repeat_fn)
METHOD_RULES.register("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")(binary_fn)
METHOD_RULES.register("split", "chunk", "tensor_split", "unbind")(split_fn)
METHOD_RULES.register("mean", "sum", "amax", "amin", "max", "min")(reduce_fn)
METHOD_RULES.register("norm")(norm_fn)
METHOD_RULES.register("softmax", "log_softmax")(softmax_fn)
METHOD_RULES.register("size", "dim", "numel")(no_tensor_fn)
