"""Weight surgery: ``apply(model, plan)`` returns a smaller dense copy of ``model``.

One pruning function per layer type in ``PRUNERS`` (Torch-Pruning style): given the kept output ("out") and input
("in") indices of a module it returns the module's new tensors (gathered through ``ops.channel_gather``) and the
attributes that must tell the truth (``in_channels``, ``out_channels``, ``groups``, ``num_features``,
``in_features``, ``normalized_shape``...). The copy is made by :func:`pybench._clone.clone_module` (a deepcopy
without its per-attribute cost) whose memo is pre-seeded with the gathered tensors, so weights about to be
replaced are never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pybench import _gc, ops
from pybench._clone import clone_module
from pybench.graph import fingerprint
from pybench.planning import PrunePlan

__all__ = ["PRUNERS", "apply", "check_model", "slot_keep"]

Idx = torch.Tensor | None
Pruner = Callable[[nn.Module, Idx, Idx], tuple[dict[str, torch.Tensor], dict[str, Any]]]
PRUNERS: dict[type, Pruner] = {}


def register(*types: type) -> Callable[[Pruner], Pruner]:
    def deco(fn: Pruner) -> Pruner:
        for t in types:
            PRUNERS[t] = fn
        return fn

    return deco


def _g(t: torch.Tensor | None, out_idx: Idx = None, in_idx: Idx = None) -> torch.Tensor | None:
    if t is None or (out_idx is None and in_idx is None):
        return None
    dev = t.device
    return ops.channel_gather(t.detach(), None if out_idx is None else out_idx.to(dev),
                              None if in_idx is None else in_idx.to(dev))


def _n(idx: Idx, default: int) -> int:
    return default if idx is None else int(idx.numel())


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
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
    else:  # grouped with in == out, coupled channel by channel, equal numbers kept per group
        idx = in_idx if in_idx is not None else out_idx
        new["weight"] = _grouped_weight(m.weight.detach(), idx.to(m.weight.device), cin // g, g)
        attrs = {"in_channels": int(idx.numel()), "out_channels": int(idx.numel())}
    if m.bias is not None and out_idx is not None:
        new["bias"] = _g(m.bias, out_idx)
    return {k: v for k, v in new.items() if v is not None}, attrs


def _grouped_weight(w: torch.Tensor, idx: torch.Tensor, per: int, groups: int) -> torch.Tensor:
    """Weight of a grouped conv (in == out, channel c in group c // per) keeping channels ``idx`` (sorted, the
    same number in every group): rows ``idx``, and in each row the columns of its own group's kept channels."""
    n = idx.numel()
    rows = ops.channel_gather(w, idx, None)  # (n, per, *kernel)
    group = torch.div(idx, per, rounding_mode="floor")
    local = idx - group * per
    if n % groups or not bool((torch.bincount(group, minlength=groups) == n // groups).all()):
        raise ValueError(f"grouped conv: {n} kept channels are not the same number in each of its {groups} groups")
    cols = local.view(groups, n // groups)[group]  # (n, kept per group)
    index = cols.view(n, n // groups, *([1] * (w.dim() - 2))).expand(n, n // groups, *w.shape[2:])
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


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d)
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
    """Kept indices of every slot (module role or parameter dim) the plan shrinks."""
    removed = plan.removed_units()
    out = {}
    for key, lab in plan.graph.slots.items():
        ok = lab >= 0
        rm = np.zeros(lab.size, dtype=bool)
        rm[ok] = removed[lab[ok]]
        if rm.any():
            out[key] = torch.from_numpy(np.nonzero(~rm)[0])
    return out


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
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, roles in by_module.items():
            m = modules[name]
            pruner = next((fn for t, fn in PRUNERS.items() if type(m) is t), None)
            if pruner is None:
                pruner = next((fn for t, fn in PRUNERS.items() if isinstance(m, t)), None)
            if pruner is None:
                raise NotImplementedError(f"{name} ({type(m).__name__}): no pruning function registered")
            new, attrs[name] = pruner(m, roles.get("out"), roles.get("in"))
            for pname, t in new.items():
                old = getattr(m, pname)
                memo[id(old)] = nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(
                    old, nn.Parameter) else t
        for (pname, dim), idx in params.items():
            old = model.get_parameter(pname) if _is_param(model, pname) else model.get_buffer(pname)
            t = memo[id(old)].data if id(old) in memo else old
            t = gather_dim(t, dim, idx)
            memo[id(old)] = nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t
    pruned = clone_module(model, memo)
    for name, values in attrs.items():
        m = memo[id(modules[name])]  # the module's copy
        for k, v in values.items():
            setattr(m, k, v)
    return pruned


def _is_param(model: nn.Module, name: str) -> bool:
    try:
        model.get_parameter(name)
        return True
    except AttributeError:
        return False
