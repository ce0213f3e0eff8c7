"""The fx tracer behind ``pb.trace(..., tracer="fx")``: a lean ``torch.fx`` symbolic trace, then a walk of its
graph on meta tensors that hands each node to the same channel rules as the eager tracer
(:mod:`pybench.prune.graph.eager`).

A symbolic trace records each node with its scope table, a copy of the module stack and stack-trace hooks; the
walk needs none of them, and they cost a quarter of fx's time, so :class:`_Tracer` drops them. Python ints read
from shapes are fx nodes here; :func:`_provenance` remembers which channels each counts.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn as nn

from pybench.prune.graph import rules
from pybench.prune.graph.steps import TraceError, function_step, module_step, param_view

__all__ = ["fx_graph", "fx_ops", "walk_fx"]

_ATOMS = frozenset({int, float, bool, str, type(None), slice, type(Ellipsis), torch.dtype, torch.device,
                    torch.memory_format, torch.layout})


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer with its per-node bookkeeping cut to what :func:`trace` reads (a quarter of its time)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.LayerNorm) or rules.named_leaf(m):  # also torchvision's LayerNorm2d, whose forward
            return True  # permutes around F.layer_norm; timm's GRN
        return super().is_leaf_module(m, qualname)

    def create_arg(self, a: Any) -> Any:
        t = type(a)  # the common cases first; fx's general path walks pytrees and opaque-type registries
        if t in _ATOMS:
            return a
        if isinstance(a, torch.fx.Proxy):
            return a.node
        if t is tuple or t is list:
            out = [self.create_arg(v) for v in a]
            return tuple(out) if t is tuple else out
        if t is dict and all(type(k) is str for k in a):
            return {k: self.create_arg(v) for k, v in a.items()}
        return super().create_arg(a)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        # fx's own, without the scope context manager that only feeds the scope table create_node no longer keeps
        path = self.path_of_module(m)
        n = self.num_calls.get(path, 0)
        key = f"{path}@{n}" if n else path
        self.num_calls[path] = n + 1
        self.module_stack[key] = (path, type(m))
        try:
            if not self.is_leaf_module(m, path):
                return forward(*args, **kwargs)
            return self.create_proxy("call_module", path, args, kwargs)
        finally:
            self.module_stack.pop(key, None)

    def create_node(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                    type_expr: Any = None) -> torch.fx.Node:
        # no scope table, stack traces or copied module stack: only the innermost module, for messages (_scope)
        node = self.graph.create_node(kind, target, args, kwargs, name, type_expr)
        if self.module_stack:
            key, value = next(reversed(self.module_stack.items()))
            node.meta["nn_module_stack"] = {key: value}
        return node


def fx_graph(model: nn.Module) -> torch.fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many kinds; name the model and the cause
        raise TraceError(f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}") from exc


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    if isinstance(x, (tuple, list)):
        return type(x)(_to_meta(v) for v in x)
    return x


def _map(x: Any, fn) -> Any:
    """``x`` with each fx Node replaced by ``fn(node)`` (torch.fx.node.map_arg, with the flat cases inlined)."""
    t = type(x)
    if t is tuple and not any(isinstance(v, (list, tuple, dict, slice)) for v in x):  # fx's are subclasses
        return tuple(fn(v) if isinstance(v, torch.fx.Node) else v for v in x)
    if t is dict and not x:
        return {}
    return torch.fx.node.map_arg(x, fn)


def _param_names(arg: Any, ctx: rules.TraceContext) -> Any:
    if isinstance(arg, torch.fx.Node):
        return ctx.param_of.get(arg)
    if isinstance(arg, (tuple, list)):
        return [_param_names(a, ctx) for a in arg]
    return None


def _node_params(ctx: rules.TraceContext, node: torch.fx.Node) -> list[str]:
    return [ctx.param_of[a] for a in node.all_input_nodes if a in ctx.param_of]



def fx_ops(graph: torch.fx.Graph) -> list[tuple[str, str]]:
    return [(n.op, str(n.target)) for n in graph.nodes]


def walk_fx(graph: torch.fx.Graph, model: nn.Module, inputs: tuple, ctx: rules.TraceContext,
             modules: dict[str, nn.Module], strict: bool, notes: list[str]) -> None:
    meta: dict[torch.fx.Node, Any] = {}
    desc: dict[torch.fx.Node, Any] = {}
    n_in = 0
    for node in graph.nodes:
        op = node.op
        if op == "placeholder":
            if n_in >= len(inputs):
                if node.args:  # default argument
                    meta[node], desc[node] = node.args[0], None
                    continue
                raise TypeError(f"example_inputs has {len(inputs)} tensors but the model's forward takes more "
                                f"(missing {node.target!r})")
            meta[node], desc[node] = _to_meta(inputs[n_in]), None
            n_in += 1
            continue
        if op == "get_attr":
            value = model
            for part in node.target.split("."):
                value = getattr(value, part)
            meta[node], desc[node] = _to_meta(value), None
            if isinstance(value, torch.Tensor):
                ctx.param_of[node] = node.target
            continue
        if op == "output":
            ctx.pin_all(_map(node.args, lambda n: desc.get(n)), "model output")
            continue
        ctx.node = node
        args = _map(node.args, lambda n: meta[n])
        kwargs = _map(node.kwargs, lambda n: meta[n])
        arg_ds = _map(node.args, lambda n: desc[n])
        kw_ds = _map(node.kwargs, lambda n: desc[n])
        if op == "call_module":
            m = modules[node.target]
            out, d = module_step(ctx, node.target, m, rules.module_rule(m), f"{node.target} ({type(m).__name__})",
                                 args, kwargs, arg_ds, kw_ds, lambda n=node: _node_params(ctx, n), strict, notes)
        else:
            out, d = function_step(ctx, op, node.target, _scope(node), args, kwargs, arg_ds, kw_ds,
                                   lambda n=node: [_param_names(a, ctx) for a in n.args],
                                   lambda n=node: _node_params(ctx, n), strict, notes)
        meta[node], desc[node] = out, d
        if op != "call_module" and node.args and node.args[0] in ctx.param_of:
            view_of = param_view(op, node.target, args[0], out, ctx.param_of[node.args[0]])
            if view_of is not None:
                ctx.param_of[node] = view_of
        _provenance(ctx, node, desc)


def _provenance(ctx: rules.TraceContext, node: torch.fx.Node, desc: dict) -> None:
    """Remember which channel ids a python int counts (x.size(1), x.shape[1] // 2, ...)."""
    op, t = node.op, node.target
    if (op == "call_method" and t == "size") or (op == "call_function" and t is getattr and node.args[1] == "shape"):
        d = desc.get(node.args[0])
        if d is None:
            return
        per_axis = tuple(
            rules.along(d, a, d.shape[a]) if d.shape[a] > 1 and len(rules.vary_axes(d)) == 1 else None
            for a in range(d.ndim))
        dim = node.args[1] if op == "call_method" and len(node.args) > 1 else node.kwargs.get("dim")
        if dim is None:
            ctx.prov[node] = per_axis
        elif per_axis[dim] is not None:
            ctx.prov[node] = ("direct", per_axis[dim])
        return
    if op == "call_function" and t is operator.getitem and node.args[0] in ctx.prov:
        src = ctx.prov[node.args[0]]
        if isinstance(src, tuple) and isinstance(node.args[1], int) and src and not isinstance(src[0], str):
            ids = src[node.args[1]]
            if ids is not None:
                ctx.prov[node] = ("direct", ids)
        return
    if op == "call_function" and t in (operator.floordiv, operator.mul, operator.truediv, operator.add,
                                       operator.sub, operator.mod):
        for a in node.args:
            if isinstance(a, torch.fx.Node) and isinstance(ctx.prov.get(a), tuple) and ctx.prov[a] and \
                    isinstance(ctx.prov[a][0], str):
                ctx.prov[node] = ("derived", ctx.prov[a][1])
                return


def _scope(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        return list(stack.values())[-1][0] if isinstance(list(stack.values())[-1], tuple) else str(node.name)
    return node.name
