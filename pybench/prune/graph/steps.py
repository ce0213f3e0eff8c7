"""What both tracers of :func:`pybench.prune.graph.trace` share: :class:`TraceError`, the output shapes of leaf
modules and element-wise ops computed from shapes alone, and what an operation no rule knows does.

The walk runs every operation on meta tensors, but the meta kernels of convolutions, adaptive pooling and binary
element-wise ops go through Python references (130-260 us a call), so their shapes are computed here by arithmetic.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from pybench.prune import layers
from pybench.prune.graph import fn_rules, rules

__all__ = ["TraceError", "function_step", "has_tensor", "module_step", "param_view", "run_op", "unknown_op"]

_CONVS = layers.CONVS


class TraceError(RuntimeError):
    """A model (or an op in it) that ``trace`` cannot handle; the message names the module and operation."""

    __module__ = "pybench.prune.graph"  # where users import it from


def _module_meta(name: str, m: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Output of a leaf module on meta tensors, with clear errors for a wrong input shape."""
    x = args[0] if args else None
    if isinstance(m, _CONVS):
        if x.ndim < 2 or x.shape[1] != m.in_channels:
            raise TraceError(f"{name} ({type(m).__name__}) expects {m.in_channels} input channels, got an input of "
                             f"shape {list(x.shape)}; check example_inputs' shape")
        return torch.empty(_conv_shape(m, x.shape), dtype=x.dtype, device="meta")
    if isinstance(m, nn.Linear):
        if x.shape[-1] != m.in_features:
            raise TraceError(f"{name} (Linear) expects {m.in_features} input features, got an input of shape "
                             f"{list(x.shape)}; check example_inputs' shape (image size)")
        return torch.empty(x.shape[:-1] + (m.out_features,), dtype=x.dtype, device="meta")
    if isinstance(m, nn.modules.batchnorm._NormBase):
        if x.shape[1] != m.num_features:
            raise TraceError(f"{name} ({type(m).__name__}) expects {m.num_features} channels, got an input of "
                             f"shape {list(x.shape)}")
        return x
    if isinstance(m, rules._ACTIVATIONS):
        return x
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or rules.is_grn(m):  # shape-keeping; F.layer_norm's meta
        _check_norm_input(name, m, x)                                      # kernel is a ~5 ms decomposition
        return _meta_like(x)
    if isinstance(m, _ADAPTIVE_POOLS) and not getattr(m, "return_indices", False):
        k = 1 + _ADAPTIVE_POOLS.index(type(m)) % 3 if type(m) in _ADAPTIVE_POOLS else x.ndim - 2
        size = tuple(m.output_size) if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * k
        out = tuple(x.shape[i - k] if s is None else s for i, s in enumerate(size))
        return torch.empty(x.shape[:-k] + out, dtype=x.dtype, device="meta")
    state = {k: torch.empty(v.shape, dtype=v.dtype, device="meta")
             for k, v in list(m.named_parameters()) + list(m.named_buffers())}
    if not state:  # pooling, flatten, stochastic depth...: forward itself (no hooks: they expect real tensors)
        return m.forward(*args, **kwargs)
    return torch.func.functional_call(m, state, args, kwargs)


_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                   nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# binary element-wise ops whose meta kernels run through Python references (~130 us a call): broadcast by hand
# (value: whether the op is a true division); in-place ops are left to the meta kernels (they return their input)
_BINARY = {operator.add: False, operator.mul: False, operator.sub: False, operator.truediv: True, torch.add: False,
           torch.mul: False, torch.sub: False, torch.div: True, "add": False, "mul": False, "sub": False, "div": True}


def _elementwise_meta(fn: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The meta output of a binary element-wise op on a meta tensor and a tensor or number; None for others."""
    true_div = _BINARY.get(fn) if isinstance(fn, str) or callable(fn) else None
    if true_div is None or kwargs or len(args) != 2:
        return None
    a, b = args
    if not any(isinstance(v, torch.Tensor) for v in args) or \
            not all(isinstance(v, (torch.Tensor, int, float)) and not isinstance(v, bool) for v in args):
        return None
    if any(isinstance(v, torch.Tensor) and v.device.type != "meta" for v in args):
        return None
    shapes = [v.shape for v in args if isinstance(v, torch.Tensor)]
    shape = shapes[0] if len(shapes) == 1 or shapes[0] == shapes[1] else _broadcast(*shapes)
    dtype = torch.result_type(a, b)
    if true_div and not dtype.is_floating_point and not dtype.is_complex:
        dtype = torch.get_default_dtype()
    return torch.empty(shape, dtype=dtype, device="meta")


# in-place binary ops: their meta kernels broadcast through Python references too; the result is the input itself
_INPLACE = {operator.iadd, operator.imul, operator.isub, operator.itruediv, "add_", "mul_", "sub_", "div_"}


def _inplace_meta(fn: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``a`` for ``a op= b`` on a meta tensor ``a`` when ``b`` broadcasts to it and the result casts to its dtype;
    None for others (the meta kernel then decides, and raises as torch would)."""
    if kwargs or len(args) != 2 or fn not in _INPLACE:
        return None
    a, b = args
    if type(a) is not torch.Tensor or a.device.type != "meta" or isinstance(b, bool):
        return None
    if isinstance(b, torch.Tensor):
        if b.device.type != "meta" or _broadcast(a.shape, b.shape) != tuple(a.shape):
            return None
    elif not isinstance(b, (int, float)):
        return None
    true_div = fn in (operator.itruediv, "div_")
    dtype = torch.result_type(a, b)
    if true_div and not dtype.is_floating_point or not torch.can_cast(dtype, a.dtype):
        return None
    return a


def _meta_like(x: torch.Tensor, shape: tuple[int, ...] | torch.Size | None = None) -> torch.Tensor:
    return torch.empty(x.shape if shape is None else shape, dtype=x.dtype, device="meta")


def _norm_meta(x: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """F.batch_norm / instance_norm / group_norm / layer_norm keep the input's shape; per-channel tensors must fit
    (their meta kernels are Python decompositions: ~5 ms a call)."""
    for t in [*args, *kwargs.values()]:
        if isinstance(t, torch.Tensor) and t.ndim == 1 and x.ndim > 1 and t.shape[0] not in (x.shape[1],
                                                                                            x.shape[-1]):
            raise RuntimeError(f"a per-channel tensor of size {t.shape[0]} for an input of shape {list(x.shape)}")
    return _meta_like(x)


def _check_norm_input(name: str, m: nn.Module, x: torch.Tensor) -> None:
    """A LayerNorm (or a channels-first LayerNorm2d subclass), GroupNorm or GRN fits ``x``: else a clear error."""
    if isinstance(m, nn.LayerNorm):
        k = len(m.normalized_shape)
        fits = tuple(x.shape[-k:]) == tuple(m.normalized_shape) or (k == 1 and x.ndim > 1 and
                                                                    x.shape[1] == m.normalized_shape[0])
    elif isinstance(m, nn.GroupNorm):
        fits = x.ndim > 1 and x.shape[1] == m.num_channels
    else:
        fits = x.ndim > 1 and x.shape[m.channel_dim] == m.weight.shape[0]
    if not fits:
        raise TraceError(f"{name} ({type(m).__name__}) does not fit an input of shape {list(x.shape)}; check "
                         "example_inputs' shape")


def _pair(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _conv_meta(x: torch.Tensor, weight: torch.Tensor, bias: Any = None, stride: Any = 1, padding: Any = 0,
               dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    """F.conv1d / 2d / 3d's output shape by arithmetic (their meta kernels go through Python references)."""
    k = weight.ndim - 2
    if x.ndim != k + 2 or x.shape[1] != weight.shape[1] * groups:
        raise RuntimeError(f"convolution of an input of shape {list(x.shape)} with a weight of shape "
                           f"{list(weight.shape)} and groups={groups}")
    spatial = _conv_spatial(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return _meta_like(x, (x.shape[0], weight.shape[0], *spatial))


def _linear_meta(x: torch.Tensor, weight: torch.Tensor, bias: Any = None) -> torch.Tensor:
    if x.shape[-1] != weight.shape[-1]:
        raise RuntimeError(f"linear of an input of shape {list(x.shape)} with a weight of shape {list(weight.shape)}")
    return _meta_like(x, (*x.shape[:-1], weight.shape[0]))


def _unary_meta(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """An element-wise activation keeps its input's shape and dtype (its meta kernel is a Python reference; an
    in-place one's output aliases its input, which shapes do not see)."""
    return _meta_like(x)


def _reduce_meta(x: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> torch.Tensor | None:
    """mean / sum over dims of a float tensor (their meta kernels are Python references); None: not this case."""
    if not isinstance(x, torch.Tensor) or dtype is not None or not x.dtype.is_floating_point or dim is None:
        return None
    dims = {int(d) % x.ndim for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
    shape = [1 if i in dims else n for i, n in enumerate(x.shape)] if keepdim else \
        [n for i, n in enumerate(x.shape) if i not in dims]
    return _meta_like(x, shape)


_METHOD_SHAPES: dict[str, Callable[..., torch.Tensor | None]] = {"mean": _reduce_meta, "sum": _reduce_meta}
_UNARY = (F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.mish, F.elu, F.leaky_relu, F.softplus,
          torch.sigmoid, torch.tanh, torch.relu, F.sigmoid, F.tanh)
_SHAPE_BY_ARITHMETIC: dict[Any, Callable[..., torch.Tensor]] = {
    F.batch_norm: _norm_meta, F.instance_norm: _norm_meta, F.group_norm: _norm_meta, F.layer_norm: _norm_meta,
    F.conv1d: _conv_meta, F.conv2d: _conv_meta, F.conv3d: _conv_meta, F.linear: _linear_meta,
    **dict.fromkeys(_UNARY, _unary_meta), torch.mean: _reduce_meta, torch.sum: _reduce_meta,
}


def _broadcast(a: torch.Size, b: torch.Size) -> tuple[int, ...]:
    """torch.broadcast_shapes of two shapes (its Python reference takes ~50 us)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and x != 1 and y != 1:
            raise RuntimeError(f"shapes {list(a)} and {list(b)} do not broadcast (size {x} vs {y})")
        out.append(y if x == 1 else x)
    return tuple(out)


def _conv_shape(m: nn.Module, shape: torch.Size) -> tuple[int, ...]:
    """Output shape of convolution ``m`` (output padding of transposed convs excluded: those are not pruned here)."""
    return (shape[0], m.out_channels, *_conv_spatial(shape[2:], m.kernel_size, m.stride, m.padding, m.dilation))


def _conv_spatial(sizes: Any, kernel: Any, stride: Any, padding: Any, dilation: Any) -> list[int]:
    """A convolution's output sizes along its spatial axes (stride, padding, dilation: an int or one per axis, or
    padding "same" / "valid")."""
    k = len(sizes)
    stride, dilation = _pair(stride, k), _pair(dilation, k)
    spatial = []
    for i, size in enumerate(sizes):
        ks, st, d = kernel[i], stride[i], dilation[i]
        if padding == "same":
            spatial.append(size)
            continue
        p = 0 if padding == "valid" else _pair(padding, k)[i]
        n = (size + 2 * p - d * (ks - 1) - 1) // st + 1
        if n < 1:
            raise TraceError(f"convolution output would be empty: input size {size} with kernel {ks}, stride {st}, "
                             f"padding {p}, dilation {d}; check example_inputs' shape (image size)")
        spatial.append(n)
    return spatial


_VIEWS = {"reshape", "view", "unsqueeze", "squeeze", "flatten", torch.reshape, torch.unsqueeze, torch.squeeze,
          torch.flatten}


def param_view(kind: str, target: Any, x: Any, out: Any, param: str | None) -> str | None:
    """``param`` when the op only adds or drops size-1 dims of that parameter (``gamma.reshape(1, -1, 1, 1)``, a
    layer scale): the result still indexes the parameter's channels, so element-wise rules can slice it."""
    if param is None or target not in _VIEWS or kind not in ("call_method", "call_function"):
        return None
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    return param if rules.nonunit(x.shape) == rules.nonunit(out.shape) else None


def has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return any(has_tensor(v) for v in x)
    return False


def run_op(where: str, fn, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TraceError:
        raise
    except Exception as exc:
        raise TraceError(f"{where}: failed on the example inputs' shapes: {type(exc).__name__}: {exc}") from exc


def unknown_op(ctx: rules.TraceContext, where: str, arg_ds: Any, kw_ds: Any, input_params: list[str], strict: bool,
             notes: list[str]) -> None:
    """An op no rule understands: the channels it reads are kept, and so are the parameters it reads."""
    tracked = rules._flatten(arg_ds) + rules._flatten(kw_ds)
    for p in input_params:
        ctx.frozen[p] = where
    if tracked:
        msg = f"{where}: no channel rule for this operation; the channels it reads are kept"
        if strict:
            raise TraceError(msg)
        ctx.pin_all(tracked, msg)
        notes.append(msg)


def module_step(ctx: rules.TraceContext, name: str, m: nn.Module, rule: Any, where: str, args: tuple, kwargs: dict,
                arg_ds: Any, kw_ds: Any, input_params: Callable[[], list[str]], strict: bool,
                notes: list[str]) -> tuple[Any, Any]:
    """One leaf-module call, for either tracer: its meta output and the descriptor its rule gives (or the op is
    unknown: ``input_params()`` names the parameters it reads)."""
    out = run_op(where, _module_meta, name, m, args, kwargs)
    if rule is None or len(args) != 1:
        unknown_op(ctx, where, arg_ds, kw_ds, input_params(), strict, notes)
        return out, None
    return out, rule(ctx, name, m, args[0], arg_ds[0], out)


def _by_arithmetic(where: str, shape_fn: Any, args: tuple, kwargs: dict) -> Any:
    """The meta output of an op by the arithmetic of ``shape_fn`` when every tensor argument is a meta tensor;
    None when there is no such function or it does not cover this call."""
    if shape_fn is None or not all(not isinstance(a, torch.Tensor) or a.device.type == "meta"
                                   for a in (*args, *kwargs.values())):
        return None
    return run_op(where, shape_fn, *args, **kwargs)


def function_step(ctx: rules.TraceContext, kind: str, target: Any, scope: str, args: tuple, kwargs: dict,
                  arg_ds: Any, kw_ds: Any, params: Callable[[], list], input_params: Callable[[], list[str]],
                  strict: bool, notes: list[str]) -> tuple[Any, Any]:
    """One ``call_function`` / ``call_method``, for either tracer: its meta output and the descriptor its rule gives
    (``params()``: the parameter name at each argument); an op without a rule is unknown."""
    if kind == "call_function":
        if target is torch._assert:
            return None, None
        where = f"{scope}: {getattr(target, '__name__', str(target))}"
        rule = fn_rules.FUNCTION_RULES.get(target)
        out = _elementwise_meta(target, args, kwargs)
        if out is None:
            out = _inplace_meta(target, args, kwargs)
        if out is None:
            out = _by_arithmetic(where, _SHAPE_BY_ARITHMETIC.get(target), args, kwargs)
        if out is None:
            out = run_op(where, target, *args, **kwargs)
    else:
        where = f"{scope}: Tensor.{target}"
        rule = fn_rules.METHOD_RULES.get(target)
        out = _elementwise_meta(target, args, kwargs)
        if out is None:
            out = _inplace_meta(target, args, kwargs)
        if out is None:
            out = _by_arithmetic(where, _METHOD_SHAPES.get(target), args, kwargs)
        if out is None:
            out = run_op(where, getattr(args[0], target), *args[1:], **kwargs)
    if rule is None:
        if has_tensor(out) or rules._flatten(arg_ds) or rules._flatten(kw_ds):
            unknown_op(ctx, where, arg_ds, kw_ds, input_params(), strict, notes)
        return out, None
    return out, rule(ctx, where, args, kwargs, list(arg_ds), dict(kw_ds), out, params())
