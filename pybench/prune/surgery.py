"""Weight surgery: ``apply(model, plan)`` returns a smaller dense copy of ``model``.

One pruning function per layer type in ``PRUNERS`` (Torch-Pruning style): given the kept output ("out") and input
("in") indices of a module it returns the module's new tensors and the attributes that must tell the truth
(``in_channels``, ``out_channels``, ``groups``, ``num_features``, ``in_features``, ``normalized_shape``...). A new
tensor may be a :class:`Gather` request: ``apply`` runs all of a model's requests in one
``ops.channel_gather_list`` call (one dispatch instead of one per tensor, which is most of the cost on a small
model). The copy is made by :func:`pybench.prune.clone.clone_module` (a deepcopy without its per-attribute cost) whose
memo is pre-seeded with the gathered tensors, so weights about to be replaced are never copied.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from pybench import _gc, ops
from pybench._registry import Registry
from pybench.prune import layers
from pybench.prune.clone import clone_module
from pybench.prune.graph import fingerprint
from pybench.prune.graph import slots as _slots
from pybench.prune.graph.rules import is_grn
from pybench.prune.planning import PrunePlan

__all__ = ["PRUNERS", "Gather", "apply", "check_model", "run_gathers", "shrink_module", "slot_keep", "tensor_named"]

Idx = torch.Tensor | None


class Gather(NamedTuple):
    """A pending ``ops.channel_gather(tensor, out_idx, in_idx)``, then ``then`` of its result when given;
    :func:`run_gathers` runs many in one call."""

    tensor: torch.Tensor
    out_idx: Idx
    in_idx: Idx
    then: Callable[[torch.Tensor], torch.Tensor] | None = None


# module, kept "out" and "in" indices -> ({attribute: new tensor or Gather}, {attribute: new value})
Pruner = Callable[[nn.Module, Idx, Idx], tuple[dict[str, "torch.Tensor | Gather"], dict[str, Any]]]
PRUNERS: Registry = Registry("pruner")  # layer type -> its Pruner; a subclass finds its base's
register = PRUNERS.register


def _g(t: torch.Tensor | None, out_idx: Idx = None, in_idx: Idx = None) -> Gather | None:
    if t is None or (out_idx is None and in_idx is None):
        return None
    return Gather(t, out_idx, in_idx)


def run_gathers(requests: Sequence[Gather]) -> list[torch.Tensor]:
    """The result of each request, from one ``ops.channel_gather_list`` call per device (indices are moved to
    their tensor's device, each index once)."""
    ws: list[torch.Tensor] = []
    outs: list[Idx] = []
    ins: list[Idx] = []
    moved: dict[tuple[int, torch.device], torch.Tensor] = {}
    for t, o, i, _ in requests:
        if not (t.is_cpu and (o is None or o.is_cpu) and (i is None or i.is_cpu)):  # CPU: nothing to move
            o, i = _to(o, t.device, moved), _to(i, t.device, moved)
        ws.append(t)
        outs.append(o)
        ins.append(i)
    with torch.no_grad():  # the results are new leaves, like the detached tensors they come from
        out = ops.channel_gather_list(ws, outs, ins)
        return [r if q.then is None else q.then(r) for q, r in zip(requests, out, strict=True)]


def _to(idx: Idx, dev: torch.device, moved: dict[tuple[int, torch.device], torch.Tensor]) -> Idx:
    if idx is None or idx.device == dev:
        return idx
    key = (id(idx), dev)
    if key not in moved:
        moved[key] = idx.to(dev)
    return moved[key]


def _n(idx: Idx, default: int) -> int:
    return default if idx is None else int(idx.numel())


@register(*layers.CONVS)
def prune_conv(m: nn.Module, out_idx: Idx, in_idx: Idx) -> tuple[dict, dict]:
    cin, cout, g = m.in_channels, m.out_channels, m.groups
    new: dict[str, torch.Tensor] = {}
    if g == 1:
        new["weight"] = _g(m.weight, out_idx, in_idx)
        attrs = {"in_channels": _n(in_idx, cin), "out_channels": _n(out_idx, cout)}
    elif g == cin:  # depthwise (maybe with a multiplier): input channels only change the group count
        n_in = _n(in_idx, cin)
        new["weight"] = _g(m.weight, out_idx)
        attrs = {"in_channels": n_in, "out_channels": _n(out_idx, cout), "groups": n_in}
    elif cin == cout:  # grouped with in == out, coupled channel by channel, equal numbers kept per group
        idx = in_idx if in_idx is not None else out_idx
        new["weight"] = _grouped_weight(m.weight, idx, idx, cin // g, cin // g, g)
        attrs = {"in_channels": int(idx.numel()), "out_channels": int(idx.numel())}
    else:  # grouped, in != out: rows and each group's columns apart, equal numbers kept per group
        new["weight"] = _grouped_weight(m.weight, out_idx, in_idx, cin // g, cout // g, g)
        attrs = {"in_channels": _n(in_idx, cin), "out_channels": _n(out_idx, cout)}
    if m.bias is not None and out_idx is not None:
        new["bias"] = _g(m.bias, out_idx)
    return {k: v for k, v in new.items() if v is not None}, attrs


def _grouped_weight(w: torch.Tensor, out_idx: Idx, in_idx: Idx, per_in: int, per_out: int,
                    groups: int) -> Gather | None:
    """Weight of a grouped conv (input c in group c // per_in, output r in group r // per_out): rows ``out_idx``
    (a gather), and in each row the kept columns of its own group's inputs (``in_idx``: sorted, the same number in
    every group; ``then``). A conv whose in and out channels are coupled passes the same indices twice."""
    if in_idx is None:
        return _g(w, out_idx)
    keep = in_idx.cpu().numpy()
    n = keep.size
    group = keep // per_in
    if n % groups or (np.bincount(group, minlength=groups) != n // groups).any():
        raise ValueError(f"grouped conv: {n} kept channels are not the same number in each of its {groups} groups")
    rows = np.arange(w.shape[0]) if out_idx is None else out_idx.cpu().numpy()
    cols = torch.from_numpy((keep - group * per_in).reshape(groups, n // groups)[rows // per_out])
    return Gather(w, out_idx, None, functools.partial(_own_group_columns, cols))


def _own_group_columns(cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    n, k = cols.shape
    index = cols.to(rows.device).view(n, k, *([1] * (rows.dim() - 2))).expand(n, k, *rows.shape[2:])
    return rows.gather(1, index).contiguous()


@register(nn.Linear)
def prune_linear(m: nn.Linear, out_idx: Idx, in_idx: Idx) -> tuple[dict, dict]:
    new = {"weight": _g(m.weight, out_idx, in_idx)}
    if m.bias is not None and out_idx is not None:
        new["bias"] = _g(m.bias, out_idx)
    return new, {"in_features": _n(in_idx, m.in_features), "out_features": _n(out_idx, m.out_features)}


def _per_channel(m: nn.Module, idx: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            out[name] = _g(t, idx)
    return out


@register(*layers.BATCH_NORMS, *layers.INSTANCE_NORMS)
def prune_batchnorm(m: nn.Module, out_idx: Idx, in_idx: Idx) -> tuple[dict, dict]:
    return _per_channel(m, out_idx, ("weight", "bias", "running_mean", "running_var")), {
        "num_features": int(out_idx.numel())}


@register(nn.LayerNorm)
def prune_layernorm(m: nn.LayerNorm, out_idx: Idx, in_idx: Idx) -> tuple[dict, dict]:
    return _per_channel(m, out_idx, ("weight", "bias")), {"normalized_shape": (int(out_idx.numel()),)}


@register(nn.GroupNorm)
def prune_groupnorm(m: nn.GroupNorm, out_idx: Idx, in_idx: Idx) -> tuple[dict, dict]:
    return _per_channel(m, out_idx, ("weight", "bias")), {"num_channels": int(out_idx.numel())}


@register(nn.PReLU)
def prune_prelu(m: nn.PReLU, out_idx: Idx, in_idx: Idx) -> tuple[dict, dict]:
    return _per_channel(m, out_idx, ("weight",)), {"num_parameters": int(out_idx.numel())}


def prune_affine(m: nn.Module, out_idx: Idx, in_idx: Idx) -> tuple[dict, dict]:
    """A per-channel layer with ``weight`` / ``bias`` and no size attribute (timm's GlobalResponseNorm)."""
    return _per_channel(m, out_idx, ("weight", "bias")), {}


def gather_dim(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``t`` keeping ``idx`` along ``dim`` (channel_gather for dims 0 / 1, index_select beyond)."""
    if dim == 0:
        return ops.channel_gather(t.detach(), idx.to(t.device), None)
    if dim == 1:
        return ops.channel_gather(t.detach(), None, idx.to(t.device))
    return t.detach().index_select(dim, idx.to(t.device)).contiguous()


# ---------------------------------------------------------------------------------------------------------------


def check_model(model: nn.Module, plan: PrunePlan) -> None:
    """Raise when ``model`` is not the architecture ``plan`` was made for."""
    if not isinstance(plan, PrunePlan):
        raise TypeError(f"plan must be a PrunePlan from pb.plan(...), got {type(plan).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fp = fingerprint(model)
    if fp != plan.graph.fingerprint:
        diff = next(((a, b) for a, b in zip(fp, plan.graph.fingerprint, strict=False) if a != b), None)
        detail = f" (first difference: model has {diff[0]}, the plan's graph {diff[1]})" if diff else \
            f" (model has {len(fp)} parameters, the plan's graph {len(plan.graph.fingerprint)})"
        raise ValueError("plan was made for a different model: its parameters' names or shapes differ" + detail +
                         "; trace this model and plan again")


def slot_keep(plan: PrunePlan) -> dict[tuple, torch.Tensor]:
    """Kept indices (int64) of every slot (module role or parameter dim) the plan shrinks, in slot order."""
    return _slots.kept_indices(plan.graph, plan.removed_units())


def apply(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """A new, smaller model without the channels ``plan`` removes; ``model`` is left untouched.

    Every module's own attributes (``in_channels``, ``out_channels``, ``groups``, ``num_features``,
    ``in_features``, ``normalized_shape``...) describe its new weights.
    """
    check_model(model, plan)
    with _gc.paused():
        return _apply(model, plan)


def _apply(model: nn.Module, plan: PrunePlan) -> nn.Module:
    keep = slot_keep(plan)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    params: dict[tuple[str, int], torch.Tensor] = {}
    for (kind, name, role), idx in keep.items():
        if kind == "module":
            by_module.setdefault(name, {})[role] = idx
        else:
            params[(name, int(role))] = idx
    memo: dict[int, Any] = {}
    attrs: dict[str, dict[str, Any]] = {}
    modules = _slots.submodules(model, list(by_module))
    with torch.no_grad():
        replaced: list[tuple[torch.Tensor, Any]] = []  # (old tensor, new tensor or position in `requests`)
        requests: list[Gather] = []
        for name, roles in by_module.items():
            m = modules[name]
            new, attrs[name] = _pruner(name, m)(m, roles.get("out"), roles.get("in"))
            for pname, t in new.items():
                if isinstance(t, Gather):
                    requests.append(t)
                    t = len(requests) - 1
                replaced.append((getattr(m, pname), t))
        gathered = run_gathers(requests)
        for old, t in replaced:
            memo[id(old)] = _like(old, gathered[t] if isinstance(t, int) else t)
        for (pname, dim), idx in params.items():
            old = tensor_named(model, pname)
            t = memo[id(old)].data if id(old) in memo else old
            t = gather_dim(t, dim, idx)
            memo[id(old)] = nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t
    pruned = clone_module(model, memo)
    for name, values in attrs.items():
        _set_attributes(memo[id(modules[name])], values)  # the module's copy
    if plan.graph.resizes:
        _rewrite_split_sizes(model, plan, memo)
    return pruned


def shrink_module(m: nn.Module, out_idx: Idx = None, in_idx: Idx = None) -> nn.Module:
    """A copy of the single layer ``m`` keeping output channels ``out_idx`` and input channels ``in_idx`` (None:
    all), by its registered pruning function: what :func:`apply` does to one module (the latency tables time
    such copies)."""
    new, attrs = _pruner(type(m).__name__, m)(m, out_idx, in_idx)
    with torch.no_grad():
        requests = [t for t in new.values() if isinstance(t, Gather)]
        gathered = iter(run_gathers(requests))
        memo = {id(getattr(m, k)): _like(getattr(m, k), next(gathered) if isinstance(t, Gather) else t)
                for k, t in new.items()}
    copy = clone_module(m, memo)
    _set_attributes(copy, attrs)
    return copy


def _rewrite_split_sizes(model: nn.Module, plan: PrunePlan, memo: dict[int, Any]) -> None:
    """Split sizes held by module attributes (MixedConv2d.splits, Res2Net's width, SK's in_channels) become the kept
    channels of each part (or of the whole); the attribute's name joins the copy's ``_pybench_size_attrs`` so that
    pb.save keeps it."""
    removed = plan.removed_units()
    for mod, attr, labels, bounds, mode in plan.graph.resizes:
        kept = [int(((labels[a:b] < 0) | ~removed[np.maximum(labels[a:b], 0)]).sum())
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        copy = memo[id(model.get_submodule(mod))]
        old = getattr(copy, attr)
        if mode == "sizes":
            value: Any = type(old)(kept)
        else:  # one size for every part: the part's ("part") or the whole's, split evenly in forward ("total")
            if len(set(kept)) != 1:
                raise ValueError(f"{mod}.{attr}: parts of one split size keep {kept} channels (not all equal)")
            value = kept[0] if mode == "part" else sum(kept)
        copy.__dict__[attr] = value
        copy.__dict__["_pybench_size_attrs"] = tuple(sorted({*copy.__dict__.get("_pybench_size_attrs", ()), attr}))


def _like(old: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` as what ``old`` was: a parameter (requiring grad as ``old`` did) or a plain tensor."""
    if type(old) is nn.Parameter and type(t) is torch.Tensor:  # what nn.Parameter(t, ...) does, less its frame
        return torch.Tensor._make_subclass(nn.Parameter, t, old.requires_grad)
    return nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t


def _pruner(name: str, m: nn.Module) -> Pruner:
    """The pruning function of ``m``'s type, else of its nearest registered base class."""
    pruner = PRUNERS.for_type(type(m))
    if pruner is None and is_grn(m):  # timm's, known by name (timm is not imported)
        pruner = prune_affine
    if pruner is None:
        raise NotImplementedError(f"{name} ({type(m).__name__}): no pruning function registered")
    return pruner


_PLAIN_ATTRIBUTE: dict[tuple[type, str], bool] = {}


def _set_attributes(m: nn.Module, values: dict[str, Any]) -> None:
    """``setattr(m, k, v)`` for each item. A plain value replacing an instance attribute of a class without its
    own ``__setattr__`` or a descriptor of that name goes straight into ``__dict__``: that is all
    ``nn.Module.__setattr__`` would do, after its checks (a few microseconds each, a hundred times a model)."""
    cls, d = type(m), m.__dict__
    for k, v in values.items():
        plain = _PLAIN_ATTRIBUTE.get((cls, k))
        if plain is None:
            plain = _PLAIN_ATTRIBUTE[(cls, k)] = (cls.__setattr__ is nn.Module.__setattr__
                                                 and not hasattr(getattr(cls, k, None), "__set__"))
        if plain and k in d and not isinstance(v, (torch.Tensor, nn.Module)):
            d[k] = v
        else:
            setattr(m, k, v)


def tensor_named(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer of ``model`` called ``name`` (its qualified name)."""
    owner, _, attr = name.rpartition(".")
    m = model.get_submodule(owner)
    return m._parameters[attr] if attr in m._parameters else m._buffers[attr]
