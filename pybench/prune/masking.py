"""``mask(model, plan)``: a same-shape copy of ``model`` that computes exactly what ``apply(model, plan)`` computes.

"Zeroed where consumed": a removed channel may still be computed (its filter, BN, bias and residual additions stay),
but every layer that reads channels -- a conv's or linear's input columns, a functional conv's weight dim 1 --
ignores it (zero weights), so nothing it holds reaches a kept output. Layers that normalise *across* channels
(LayerNorm over C, GroupNorm, timm's GlobalResponseNorm) would still see it; they are switched to a masked
variant of their own class that normalises over the kept channels only and outputs 0 for the removed ones.
Channels the graph pins (model outputs, unknown ops) are never removed, so no other consumer exists. The result
is the oracle for :func:`pybench.apply`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pybench.prune.planning import PrunePlan
from pybench.prune.surgery import check_model, slot_keep, tensor_named

__all__ = ["mask", "removed_mask"]


def _zero_inputs(m: nn.Module, keep: torch.Tensor) -> None:
    """Zero the input columns of ``m`` (conv / linear) not in ``keep``."""
    w = m.weight
    n_in = m.in_channels if hasattr(m, "in_channels") else m.in_features
    drop = torch.ones(n_in, dtype=torch.bool)
    drop[keep] = False
    g = getattr(m, "groups", 1)
    if g == 1:
        w.data[:, drop.to(w.device)] = 0
        return
    if w.shape[1] == 1:  # depthwise: input channel i only feeds its own (also removed) outputs
        return
    per_in, per_out = n_in // g, m.out_channels // g
    for i in torch.nonzero(drop).flatten().tolist():
        b = i // per_in
        w.data[b * per_out:(b + 1) * per_out, i - b * per_in] = 0


def _zero_dim(t: torch.Tensor, dim: int, keep: torch.Tensor) -> None:
    """Zero the indices of ``t`` along ``dim`` that are not in ``keep``."""
    drop = torch.ones(t.shape[dim], dtype=torch.bool)
    drop[keep] = False
    t.data.index_fill_(dim, torch.nonzero(drop).flatten().to(t.device), 0)


def _masked_forward(kind: str) -> Callable:
    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        keep = self._pb_keep.to(x.device)
        if kind == "grn":
            return _masked_grn(self, x, keep)
        axis = -1 if kind == "layer_norm" else 1
        xs = x.index_select(axis, keep)
        w = None if self.weight is None else self.weight.index_select(0, keep)
        b = None if self.bias is None else self.bias.index_select(0, keep)
        if kind == "group_norm":
            y = F.group_norm(xs, self.num_groups, w, b, self.eps)
        else:
            if kind == "layer_norm_2d":
                xs = xs.movedim(1, -1)
            y = F.layer_norm(xs, (keep.numel(),), w, b, self.eps)
            if kind == "layer_norm_2d":
                y = y.movedim(-1, 1)
        out = torch.zeros_like(x)
        return out.index_copy(axis if axis >= 0 else x.dim() - 1, keep, y)

    return forward


def _masked_grn(m: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """timm's GlobalResponseNorm over the kept channels only (its mean over channels counts those), 0 elsewhere."""
    axis = m.channel_dim % x.dim()
    xs = x.index_select(axis, keep)
    shape = [1] * x.dim()
    shape[axis] = -1
    x_g = xs.norm(p=2, dim=m.spatial_dim, keepdim=True)
    x_n = x_g / (x_g.mean(dim=axis, keepdim=True) + m.eps)
    y = xs + torch.addcmul(m.bias.index_select(0, keep).view(shape), m.weight.index_select(0, keep).view(shape),
                           xs * x_n)
    return torch.zeros_like(x).index_copy(axis, keep, y)


_MASKED_CLASSES: dict[tuple[type, str], type] = {}


def _masked_class(cls: type, kind: str) -> type:
    key = (cls, kind)
    if key not in _MASKED_CLASSES:
        _MASKED_CLASSES[key] = type(f"Masked{cls.__name__}", (cls,), {"forward": _masked_forward(kind)})
    return _MASKED_CLASSES[key]


def removed_mask(plan: PrunePlan) -> dict[tuple, torch.Tensor]:
    """For every slot the plan shrinks: a bool tensor over its indices, True where removed."""
    out = {}
    for key, keep in slot_keep(plan).items():
        n = plan.graph.slots[key].size
        rm = torch.ones(n, dtype=torch.bool)
        rm[keep] = False
        out[key] = rm
    return out


def mask(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """A copy of ``model`` with the plan's channels zeroed where consumed; same parameter shapes as ``model``."""
    check_model(model, plan)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for (kind, name, role), keep in slot_keep(plan).items():
            if kind != "module":
                if (kind, name, role) in plan.graph.consumed:  # a functional conv's / linear's input columns
                    _zero_dim(tensor_named(masked, name), int(role), keep)
                continue
            m = masked.get_submodule(name)
            if role == "in":
                _zero_inputs(m, keep)
            elif name in plan.graph.reducers:
                m._pb_keep = keep
                m.__class__ = _masked_class(type(m), plan.graph.reducers[name])
    return masked
