"""How :func:`pybench.prune.graph.trace` reads a model by running it once on stand-ins (the default tracer).

``torch.fx`` builds a whole graph (names, users, module scopes) that the channel walk then reads back, and that
graph building is half of a small model's trace. Here the model's own ``forward`` runs on :class:`Value` stand-ins
(a meta tensor and its channel descriptor), and every operation is handed to the channel rules the moment it
happens, through the same ``__torch_function__`` protocol fx uses. Leaf modules (``torch.nn``'s own, and
LayerNorms) are not entered, exactly as fx does not; parameters and buffers read in a ``forward`` become stand-ins
that name them. Sizes read from a stand-in are :class:`~pybench.prune.graph.rules.SymInt`, ints that remember which
channels they count, so ``view(b, g, c // g, h, w)`` stays as traceable as under fx.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pybench.prune.graph import rules
from pybench.prune.graph import slots as _slots
from pybench.prune.graph.channels import along, vary_axes
from pybench.prune.graph.rules import SymInt
from pybench.prune.graph.steps import TraceError, function_step, module_step, param_view

__all__ = ["Value", "eager_trace"]

_ACTIVE: list[_Tracer] = []  # the trace in progress (model code runs inside it)
_orig_call = nn.Module.__call__


class _Op:
    """What a rule may read of the operation it handles (the fields of an fx Node it uses)."""

    __slots__ = ("op", "target", "args", "kwargs")

    def __init__(self, op: str, target: Any, args: tuple, kwargs: dict) -> None:
        self.op, self.target, self.args, self.kwargs = op, target, args, kwargs


class Value:
    """A tensor of the traced model: its meta tensor (shape, dtype), channel descriptor and parameter name."""

    __slots__ = ("meta", "desc", "param", "_sizes")

    def __init__(self, meta: torch.Tensor, desc: Any = None, param: str | None = None) -> None:
        self.meta, self.desc, self.param, self._sizes = meta, desc, param, None

    @classmethod
    def __torch_function__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        tracer = _ACTIVE[-1]
        kwargs = kwargs or {}
        if not _is_tensor_method(func):
            return tracer.call("call_function", func, args, kwargs)
        target = _DUNDERS.get(func.__name__)
        if target is not None:  # real_tensor + value and the like: the operator itself
            fn, swap = target
            return tracer.call("call_function", fn, (args[1], args[0]) if swap else args, kwargs)
        return tracer.call("call_method", func.__name__, args, kwargs)

    # -- sizes: ints that remember the channels they count ----------------------------------------------------------
    def _shape(self) -> torch.Size:
        if self._sizes is None:
            d = self.desc
            one_axis = d is not None and isinstance(d, np.ndarray) and len(vary_axes(d)) == 1
            sizes = []
            for a, n in enumerate(self.meta.shape):
                ids = along(d, a, d.shape[a]) if one_axis and d.shape[a] > 1 else None
                sizes.append(SymInt(n, ("direct", ids) if ids is not None else None))
            self._sizes = torch.Size(sizes)
        return self._sizes

    @property
    def shape(self) -> torch.Size:
        return self._shape()

    def size(self, dim: int | None = None) -> Any:
        return self._shape() if dim is None else self._shape()[dim]

    def dim(self) -> int:
        return self.meta.dim()

    @property
    def ndim(self) -> int:
        return self.meta.dim()

    def numel(self) -> int:
        return self.meta.numel()

    def __len__(self) -> int:
        return self._shape()[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.meta.dtype

    @property
    def device(self) -> torch.device:
        return self.meta.device

    def __bool__(self) -> bool:
        raise TraceError("trace: the model's control flow depends on a tensor's values (bool of a tensor); only "
                         "shapes are known while tracing")

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(torch.Tensor, name, None)
        if callable(attr):  # a tensor method: x.view(...), x.flatten(1), ...
            def method(*args: Any, **kwargs: Any) -> Any:
                return _ACTIVE[-1].call("call_method", name, (self, *args), kwargs)
            return method
        value = getattr(self.meta, name)
        if not isinstance(value, torch.Tensor):  # dtype-like facts: is_cuda, requires_grad, layout...
            return value
        if name == "data":
            return Value(self.meta, self.desc, self.param)
        return _ACTIVE[-1].call("call_function", _tensor_attribute, (self, name), {})  # x.T, x.mT: no rule


def _tensor_attribute(x: torch.Tensor, name: str) -> torch.Tensor:
    """A tensor-valued attribute (``x.T``, ``x.mT``...), traced as an operation that no rule knows."""
    return getattr(x, name)


def _binary(fn: Callable, swap: bool = False) -> Callable:
    if swap:
        return lambda self, other: _ACTIVE[-1].call("call_function", fn, (other, self), {})
    return lambda self, other: _ACTIVE[-1].call("call_function", fn, (self, other), {})


_OPERATORS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
              "floordiv": operator.floordiv, "mod": operator.mod, "pow": operator.pow, "matmul": operator.matmul,
              "and": operator.and_, "or": operator.or_, "xor": operator.xor, "lt": operator.lt, "le": operator.le,
              "gt": operator.gt, "ge": operator.ge, "eq": operator.eq, "ne": operator.ne}
_INPLACE = {"iadd": operator.iadd, "isub": operator.isub, "imul": operator.imul, "itruediv": operator.itruediv}
# Tensor dunder -> (operator, whether the operands swap): a real tensor on the left of a stand-in
_DUNDERS: dict[str | None, tuple[Callable, bool]] = {}
for _name, _fn in _OPERATORS.items():
    setattr(Value, f"__{_name}__", _binary(_fn))
    _DUNDERS[f"__{_name}__"] = (_fn, False)
    if _name not in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(Value, f"__r{_name}__", _binary(_fn, swap=True))
        _DUNDERS[f"__r{_name}__"] = (_fn, True)
for _name, _fn in _INPLACE.items():
    setattr(Value, f"__{_name}__", _binary(_fn))
    _DUNDERS[f"__{_name}__"] = (_fn, False)
_DUNDERS["__getitem__"] = (operator.getitem, False)
Value.__getitem__ = _binary(operator.getitem)
Value.__setitem__ = lambda self, key, value: _ACTIVE[-1].call("call_function", operator.setitem, (self, key, value), {})
Value.__neg__ = lambda self: _ACTIVE[-1].call("call_function", operator.neg, (self,), {})
Value.__hash__ = object.__hash__
_TENSOR_METHODS: dict[Callable, bool] = {}


def _compare(fn: Callable) -> Callable:
    """A comparison of sizes in the model's code: when one counts channels, the branch it picks could change once
    they are pruned (fx refuses such code; here those channels are kept, so the branch cannot change)."""
    def op(self: SymInt, other: Any) -> Any:
        if not isinstance(other, (int, float)):
            return NotImplemented
        tracer = _ACTIVE[-1] if _ACTIVE else None
        if tracer is not None:
            for v in (self, other):
                prov = getattr(v, "prov", None)
                if prov is not None:
                    tracer.ctx.pin(prov[1], f"{tracer.scope}: python code compares a channel count")
        return fn(int(self), int(other) if isinstance(other, int) else other)
    return op


for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(SymInt, f"__{_name}__", _compare(getattr(operator, _name)))
SymInt.__hash__ = int.__hash__


def _is_tensor_method(func: Callable) -> bool:
    known = _TENSOR_METHODS.get(func)
    if known is None:
        known = _TENSOR_METHODS[func] = torch.overrides.is_tensor_method_or_property(func)
    return known


# ---------------------------------------------------------------------------------------------------------------


class _Tracer:
    """One run of a model on stand-ins, feeding each operation to the channel rules."""

    def __init__(self, model: nn.Module, ctx: rules.TraceContext, modules: dict[str, nn.Module], strict: bool,
                 notes: list[str]) -> None:
        self.model, self.ctx, self.strict, self.notes = model, ctx, strict, notes
        self.modules = modules
        self.paths = {id(m): name for name, m in modules.items()}
        self.ops: list[tuple[str, str]] = []  # (kind, target) of every operation, to compare train and eval runs
        self._tensor_names: dict[int, str] | None = None
        self._kinds: dict[type, tuple[bool, Callable | None]] = {}
        # meta stand-ins of parameters and buffers by (shape, dtype): a meta tensor has no data, so reads of equal
        # shapes may share one (a BN's four vectors, each block's like-sized weights), and making one is most of
        # a read's cost
        self._metas: dict[tuple, torch.Tensor] = {}

    # -- stand-ins for parameters and buffers -----------------------------------------------------------------------
    def tensor_name(self, t: torch.Tensor) -> str | None:
        if self._tensor_names is None:  # named_parameters' then named_buffers' names, from the modules already walked
            names: dict[int, str] = {}
            for attr in ("_parameters", "_buffers"):
                for n, v in _slots.named_tensors(self.modules, attr):
                    names.setdefault(id(v), n)
            self._tensor_names = names
        return self._tensor_names.get(id(t))

    def attribute(self, t: torch.Tensor) -> Value:
        name = self.tensor_name(t)
        self.ops.append(("get_attr", str(name)))
        key = (t.shape, t.dtype)
        meta = self._metas.get(key)
        if meta is None:
            meta = self._metas[key] = torch.empty(t.shape, dtype=t.dtype, device="meta")
        return Value(meta, None, name)

    # -- unwrapping ---------------------------------------------------------------------------------------------------
    def _unwrap(self, x: Any) -> tuple[Any, Any]:
        """(meta, descriptor) of an argument: stand-ins give theirs, real tensors become meta, the rest stays."""
        t = type(x)
        if t is Value:
            return x.meta, x.desc
        if t is tuple or t is list:
            pairs = [self._unwrap(v) for v in x]
            return t(p[0] for p in pairs), t(p[1] for p in pairs)
        if isinstance(x, torch.Tensor):
            if x.device.type == "meta":
                return x, None
            return torch.empty(x.shape, dtype=x.dtype, device="meta"), None
        if t is dict:
            pairs = {k: self._unwrap(v) for k, v in x.items()}
            return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
        if isinstance(x, SymInt):
            return int(x), None
        return x, None

    def _params(self, x: Any) -> Any:
        if type(x) is Value:
            return x.param
        if isinstance(x, (tuple, list)):
            return [self._params(v) for v in x]
        return None

    def _input_params(self, args: tuple, kwargs: dict) -> list[str]:
        found: list[str] = []

        def walk(x: Any) -> None:
            if type(x) is Value:
                if x.param is not None:
                    found.append(x.param)
            elif isinstance(x, (tuple, list)):
                for v in x:
                    walk(v)
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)

        walk(args)
        walk(kwargs)
        return found

    # -- operations ---------------------------------------------------------------------------------------------------
    def call(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        """Run one function / method on meta tensors, hand it to its rule and wrap the result."""
        _ACTIVE.append(None)  # rules and meta kernels run as our code, not the model's
        try:
            return self._call(kind, target, args, kwargs)
        finally:
            _ACTIVE.pop()

    def _call(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        self.ops.append((kind, target if isinstance(target, str) else getattr(target, "__name__", str(target))))
        margs, arg_ds = self._unwrap(args)
        mkwargs, kw_ds = self._unwrap(kwargs) if kwargs else ({}, {})
        self.ctx.node = _Op(kind, target, args, kwargs)
        out, d = function_step(self.ctx, kind, target, self.scope, margs, mkwargs, arg_ds, kw_ds,
                               lambda: [self._params(a) for a in args], lambda: self._input_params(args, kwargs),
                               self.strict, self.notes)
        wrapped = _wrap(out, d)
        if type(wrapped) is Value and args and type(args[0]) is Value and args[0].param is not None:
            wrapped.param = param_view(kind, target, margs[0], out, args[0].param)
        return wrapped

    @property
    def scope(self) -> str:
        return self._scope[-1] if self._scope else type(self.model).__name__

    def call_module(self, m: nn.Module, args: tuple, kwargs: dict) -> Any:
        kind = self._kinds.get(type(m))
        if kind is None:  # (is a leaf, its rule), once per class
            kind = self._kinds[type(m)] = (_is_leaf(m), rules.module_rule(m))
        name = self.paths.get(id(m))
        if not kind[0]:
            self._scope.append(name or type(m).__name__)
            try:
                return _orig_call(m, *args, **kwargs)
            finally:
                self._scope.pop()
        _ACTIVE.append(None)
        try:
            return self._call_leaf(m, name, kind[1] if name is not None else None, args, kwargs)
        finally:
            _ACTIVE.pop()

    def _call_leaf(self, m: nn.Module, name: str | None, rule: Callable | None, args: tuple, kwargs: dict) -> Any:
        self.ops.append(("call_module", str(name)))
        if len(args) == 1 and not kwargs and type(args[0]) is Value:  # the common case: one tensor in
            margs, arg_ds, mkwargs, kw_ds = (args[0].meta,), (args[0].desc,), {}, {}
        else:
            margs, arg_ds = self._unwrap(args)
            mkwargs, kw_ds = self._unwrap(kwargs) if kwargs else ({}, {})
        where = f"{name} ({type(m).__name__})" if name is not None else \
            f"{self.scope}: {type(m).__name__} created inside forward"
        out, d = module_step(self.ctx, name or type(m).__name__, m, rule, where, margs, mkwargs, arg_ds, kw_ds,
                             lambda: self._input_params(args, kwargs), self.strict, self.notes)
        if type(out) is torch.Tensor:
            return Value(out, d if type(d) is np.ndarray else None)
        return _wrap(out, d)

    # -- the run ------------------------------------------------------------------------------------------------------
    def run(self, inputs: tuple) -> None:
        self._scope: list[str] = []
        try:
            _bind(self.model.forward, inputs)
        except TypeError as exc:
            raise TypeError(f"example_inputs has {len(inputs)} tensors but the model's forward does not take them: "
                            f"{exc}") from None
        values = [Value(torch.empty(x.shape, dtype=x.dtype, device="meta")) for x in inputs]
        _ACTIVE.append(self)
        try:
            with _patched({type(m) for m in self.modules.values()}):
                out = self.model.forward(*values)
        except TraceError:
            raise
        except Exception as exc:  # the model's own code failed on the stand-ins: name where
            raise TraceError(f"trace: {type(self.model).__name__}'s forward failed in {self.scope}: "
                             f"{type(exc).__name__}: {exc}") from exc
        finally:
            _ACTIVE.pop()
        self.ctx.pin_all(_descs(out), "model output")


_SIGNATURES: dict[Callable, inspect.Signature] = {}


def _bind(forward: Callable, inputs: tuple) -> None:
    """Raise TypeError when ``forward`` cannot take ``inputs`` (signatures cached: inspect is slow)."""
    fn = getattr(forward, "__func__", forward)
    sig = _SIGNATURES.get(fn)
    if sig is None:
        sig = _SIGNATURES[fn] = inspect.signature(fn)
    if fn is forward:
        sig.bind(*inputs)
    else:
        sig.bind(forward.__self__, *inputs)


def _module_call(m: nn.Module, *args: Any, **kwargs: Any) -> Any:
    tracer = _ACTIVE[-1] if _ACTIVE else None
    if tracer is None:
        return _orig_call(m, *args, **kwargs)
    return tracer.call_module(m, args, kwargs)


def _getattr_of(own: Callable) -> Callable:
    """A class's ``__getattr__`` (``own``: the one it had) that hands tensors read during a trace to the tracer."""
    def getattr_(m: nn.Module, name: str) -> Any:
        value = own(m, name)
        if isinstance(value, torch.Tensor) and _ACTIVE and _ACTIVE[-1] is not None:
            return _ACTIVE[-1].attribute(value)
        return value

    return getattr_


_MISSING = object()


@contextlib.contextmanager
def _patched(classes: set[type]) -> Iterator[None]:
    """Module calls and parameter reads of the model's own classes go to the tracer for the block.

    Each class gets its own ``__call__`` / ``__getattr__``, not nn.Module: assigning a special method to a class
    updates the slots of all its subclasses, about 0.4 ms for nn.Module's ~1,300 (torchvision + timm) and a few us
    for a model's own ~30. A class with its own ``__call__`` keeps it (it reaches nn.Module's through super()).
    """
    saved: list[tuple[type, str, Any]] = []
    try:
        for cls in classes:
            patches = {"__getattr__": _getattr_of(cls.__getattr__)}
            if cls.__call__ is _orig_call:  # (a base class already patched here leaves it patched, too)
                patches["__call__"] = _module_call
            for attr, fn in patches.items():
                saved.append((cls, attr, cls.__dict__.get(attr, _MISSING)))
                setattr(cls, attr, fn)
        yield
    finally:
        for cls, attr, old in reversed(saved):
            if old is _MISSING:
                delattr(cls, attr)
            else:
                setattr(cls, attr, old)


def _is_leaf(m: nn.Module) -> bool:
    """fx's rule (torch.nn's own modules but containers), plus every LayerNorm (torchvision's LayerNorm2d)."""
    if isinstance(m, nn.LayerNorm) or rules.named_leaf(m):
        return True
    mod = type(m).__module__
    return (mod.startswith("torch.nn") or mod.startswith("torch.ao.nn")) and not isinstance(m, nn.Sequential)


def _wrap(out: Any, d: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return Value(out, d if isinstance(d, np.ndarray) else None)
    if isinstance(out, (tuple, list)):
        ds = d if isinstance(d, (tuple, list)) and len(d) == len(out) else [None] * len(out)
        items = [_wrap(o, di) for o, di in zip(out, ds, strict=True)]
        return type(out)(items)  # tuple, list or a torch.return_types structseq: each takes one sequence
    return out


def _descs(x: Any) -> Any:
    if type(x) is Value:
        return x.desc
    if isinstance(x, (tuple, list)):
        return [_descs(v) for v in x]
    if isinstance(x, dict):
        return [_descs(v) for v in x.values()]
    return None


def eager_trace(model: nn.Module, inputs: tuple, ctx: rules.TraceContext, modules: dict[str, nn.Module],
                strict: bool, notes: list[str]) -> list[tuple[str, str]]:
    """Run ``model`` on stand-ins of ``inputs``, filling ``ctx``; returns the operations met, in order."""
    tracer = _Tracer(model, ctx, modules, strict, notes)
    with torch.no_grad():
        tracer.run(inputs)
    return tracer.ops
