"""What every criterion shares: the :data:`CRITERIA` registry and the sums of per-filter figures into graph units.

A criterion is ``fn(model, graph, data=None, **options) -> np.ndarray`` over the graph's channel units (one figure
per unit label, higher = more important); :func:`pybench.prune.criteria.score` turns that into per-group tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from pybench import ops
from pybench._registry import Registry
from pybench.prune import layers
from pybench.prune.graph import ChannelGraph
from pybench.prune.graph import slots as _slots

__all__ = ["CRITERIA", "Criterion", "register", "unit_scores_from_filters"]

Criterion = Callable[..., np.ndarray]
CRITERIA: Registry = Registry("criterion")  # name -> Criterion
register = CRITERIA.register


def unit_scores_from_filters(graph: ChannelGraph, modules: dict[str, nn.Module],
                             per_filter: Callable[[str, nn.Module], torch.Tensor | None],
                             role: str = "out", module_types: tuple[type, ...] | None = None) -> np.ndarray:
    """Sum ``per_filter(name, module)`` (one figure per index of the module's ``role`` slot) into graph units.
    Slots with no channel in any group (a classifier's outputs, say) are skipped: their units' figures stay 0,
    and nothing reads them (``score`` answers groups only)."""
    labs, values = [], []
    for lab, name, m in _live_slots(graph, modules, role, module_types):
        v = per_filter(name, m)
        if v is not None:
            labs.append(lab)
            values.append(v)
    return _to_units(graph, labs, _cat(values))


def _live_slots(graph: ChannelGraph, modules: dict[str, nn.Module], role: str,
                module_types: tuple[type, ...] | None) -> list[tuple[np.ndarray, str, nn.Module]]:
    """(unit labels, name, module) of every module slot of ``role`` holding some channel of some group."""
    out = []
    for ((kind, name, r), lab), g in zip(graph.slots.items(), _slots.table(graph).slot_group.tolist(), strict=True):
        if kind != "module" or r != role or g == -1:
            continue
        m = modules[name]
        if module_types is None or isinstance(m, module_types):
            out.append((lab, name, m))
    return out


def _modules(model: nn.Module, graph: ChannelGraph, role: str = "out") -> dict[str, nn.Module]:
    """The modules of ``graph``'s live ``role`` slots, by name (not a walk over all of ``model``'s modules)."""
    live = _slots.table(graph).slot_group.tolist()
    return _slots.submodules(model, [k[1] for k, g in zip(graph.slots, live, strict=True)
                                     if k[0] == "module" and k[2] == role and g != -1])


def _cat(values: list[torch.Tensor]) -> torch.Tensor | None:
    """``values`` concatenated along dim 0 (on the CPU when they span devices); None for none."""
    if not values:
        return None
    dev = values[0].device
    if any(v.device != dev for v in values):
        values = [v.cpu() for v in values]
    return torch.cat(values) if len(values) > 1 else values[0]


def _to_units(graph: ChannelGraph, labs: list[np.ndarray], values: torch.Tensor | None) -> np.ndarray:
    """Per unit, the sum of the ``values`` (the slots' figures, concatenated) of its indices in ``labs``; in slot
    order, the order the sums of one slot at a time (``np.add.at``) had, so the float64 totals are the same."""
    if values is None:
        return np.zeros(graph.n_units, dtype=np.float64)
    v = values.detach().to(torch.float64).cpu().numpy()
    # untracked indices (label -1) land in an extra first bin, dropped
    return np.bincount(np.concatenate(labs) + 1, weights=v, minlength=graph.n_units + 1)[1:]


def _weight_stats(model: nn.Module, graph: ChannelGraph) -> tuple[list[np.ndarray], list[nn.Module],
                                                                   list[torch.Tensor]]:
    """Unit labels, module and ``channel_stats`` of every live producer's weight, the stats in one batched call."""
    slots = _live_slots(graph, _modules(model, graph), "out", layers.PRODUCERS)
    with torch.no_grad():
        stats = ops.channel_stats_list([m.weight for _, _, m in slots], 0)
    return [lab for lab, _, _ in slots], [m for _, _, m in slots], stats


def _column(stats: list[torch.Tensor], k: int) -> torch.Tensor | None:
    return None if not stats else _cat(stats)[:, k]
