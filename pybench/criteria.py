"""Channel importance: ``score(model, graph, criterion) -> {group: Tensor[size]}`` (higher = more important).

Weight criteria read each producing weight once through ``ops.channel_stats_list`` (sum|w|, sum w^2, sum w per
filter; every weight in one call) and sum the per-filter figures over a group's producers (every conv / linear
whose filters make the group's channels; a residual group has several). Data-driven criteria (activations, Taylor,
FPGM, LFE) register in ``CRITERIA`` the same way; they take ``data``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pybench import _slots, ops
from pybench.graph import ChannelGraph, Group

__all__ = ["CRITERIA", "score", "unit_scores_from_filters"]

# name -> fn(model, graph, data, **kw) -> np.ndarray over the graph's units (one figure per unit label)
Criterion = Callable[..., np.ndarray]
CRITERIA: dict[str, Criterion] = {}


def register(name: str) -> Callable[[Criterion], Criterion]:
    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return deco


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


_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _weight_stats(model: nn.Module, graph: ChannelGraph) -> tuple[list[np.ndarray], list[nn.Module],
                                                                   list[torch.Tensor]]:
    """Unit labels, module and ``channel_stats`` of every live producer's weight, the stats in one batched call."""
    slots = _live_slots(graph, _modules(model, graph), "out", _PRODUCERS)
    with torch.no_grad():
        stats = ops.channel_stats_list([m.weight for _, _, m in slots], 0)
    return [lab for lab, _, _ in slots], [m for _, _, m in slots], stats


def _column(stats: list[torch.Tensor], k: int) -> torch.Tensor | None:
    return None if not stats else _cat(stats)[:, k]


@register("l1")
def _l1(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """Li et al.: sum |w| of each filter."""
    labs, _, stats = _weight_stats(model, graph)
    return _to_units(graph, labs, _column(stats, 0))


@register("l2")
def _l2(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """sqrt(sum w^2) of each filter."""
    labs, _, stats = _weight_stats(model, graph)
    if len({st.dtype for st in stats}) > 1:  # the root in each weight's own precision, as one at a time gave
        return _to_units(graph, labs, _cat([st[:, 1].sqrt() for st in stats]))
    col = _column(stats, 1)
    return _to_units(graph, labs, None if col is None else col.sqrt())


@register("aaws")
def _aaws(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """Wang: mean |w| of each filter."""
    labs, mods, stats = _weight_stats(model, graph)
    return _to_units(graph, labs, _cat([st[:, 0] / max(1, m.weight[0].numel()) for st, m in zip(stats, mods,
                                                                                                 strict=True)]))


@register("bn_scale")
def _bn_scale(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """Network slimming: |gamma| of the batch norms on the channel (0 for channels without one)."""
    mods = _modules(model, graph)
    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm)

    def gamma(n: str, m: nn.Module) -> torch.Tensor | None:
        return None if getattr(m, "weight", None) is None else m.weight.detach().abs()

    return unit_scores_from_filters(graph, mods, gamma, module_types=bns)


@register("random")
def _random(model: nn.Module, graph: ChannelGraph, data: Any = None, seed: int = 0, **kw: Any) -> np.ndarray:
    """Uniform random scores (a baseline); ``seed`` makes them reproducible."""
    return np.random.default_rng(seed).random(graph.n_units)


def score(model: nn.Module, graph: ChannelGraph, criterion: str = "l1", data: Any = None,
          **kw: Any) -> dict[Group, torch.Tensor]:
    """Score every channel of every group of ``graph``.

    Args:
        model: the model ``graph`` was traced from.
        graph: from :func:`pybench.trace`.
        criterion: one of ``CRITERIA`` (``l1``, ``l2``, ``aaws``, ``bn_scale``, ``random``, ...).
        data: batches for data-driven criteria (unused by weight criteria).
    Returns:
        ``{group: float64 tensor of group.size}``; a group's figure sums its members'.
    """
    bad = sorted(set(kw) - criterion_options(criterion))
    if bad:
        allowed = ", ".join(sorted(criterion_options(criterion))) or "none"
        raise ValueError(f"criterion {criterion!r} takes no option(s) {', '.join(map(repr, bad))}; its options: "
                         f"{allowed}")
    with torch.no_grad():
        units = CRITERIA[criterion](model, graph, data, **kw)
    return {g: torch.from_numpy(units[g.comps]) for g in graph.groups}


def criterion_options(criterion: str) -> frozenset[str]:
    """The keyword options ``criterion`` takes (its function's named keywords beyond model, graph and data, and
    those of the function it hands ``**kw`` to, named by its ``options_from`` attribute), and ``seed``."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    fn = CRITERIA[criterion]
    return _options_of(fn, getattr(fn, "options_from", None))


@functools.cache  # keyed by the functions, not the name: a criterion registered again gets its own entry
def _options_of(fn: Callable, options_from: Callable | None) -> frozenset[str]:
    import inspect

    names: set[str] = set()
    for f in (fn, options_from):
        if f is None:
            continue
        names |= {n for n, p in inspect.signature(f).parameters.items()
                  if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty}
    return frozenset((names - {"data", "model", "graph", "group"}) | {"seed"})  # every criterion takes a seed
    # (deterministic ones ignore it), so one call can score with any criterion


# The data-driven and geometric criteria register themselves into CRITERIA on import.
from pybench import criteria_data as _criteria_data  # noqa: E402,F401
