"""Channel importance: ``score(model, graph, criterion) -> {group: Tensor[size]}`` (higher = more important).

Weight criteria read each producing weight once through ``ops.channel_stats`` (sum|w|, sum w^2, sum w per filter)
and sum the per-filter figures over a group's producers (every conv / linear whose filters make the group's
channels; a residual group has several). Data-driven criteria (activations, Taylor, FPGM, LFE) register in
``CRITERIA`` the same way; they take ``data``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pybench import ops
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
    """Sum ``per_filter(name, module)`` (one figure per index of the module's ``role`` slot) into graph units."""
    total = np.zeros(graph.n_units, dtype=np.float64)
    for (kind, name, r), lab in graph.slots.items():
        if kind != "module" or r != role:
            continue
        m = modules[name]
        if module_types is not None and not isinstance(m, module_types):
            continue
        values = per_filter(name, m)
        if values is None:
            continue
        v = values.detach().to(torch.float64).cpu().numpy()
        ok = lab >= 0
        np.add.at(total, lab[ok], v[ok])
    return total


_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _stats(m: nn.Module) -> torch.Tensor:
    return ops.channel_stats(m.weight.detach(), 0)


@register("l1")
def _l1(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """Li et al.: sum |w| of each filter."""
    mods = dict(model.named_modules())
    return unit_scores_from_filters(graph, mods, lambda n, m: _stats(m)[:, 0], module_types=_PRODUCERS)


@register("l2")
def _l2(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """sqrt(sum w^2) of each filter."""
    mods = dict(model.named_modules())
    return unit_scores_from_filters(graph, mods, lambda n, m: _stats(m)[:, 1].sqrt(), module_types=_PRODUCERS)


@register("aaws")
def _aaws(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """Wang: mean |w| of each filter."""
    mods = dict(model.named_modules())
    return unit_scores_from_filters(
        graph, mods, lambda n, m: _stats(m)[:, 0] / max(1, m.weight[0].numel()), module_types=_PRODUCERS)


@register("bn_scale")
def _bn_scale(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """Network slimming: |gamma| of the batch norms on the channel (0 for channels without one)."""
    mods = dict(model.named_modules())
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
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    with torch.no_grad():
        units = CRITERIA[criterion](model, graph, data, **kw)
    return {g: torch.from_numpy(units[g.comps]) for g in graph.groups}

# The data-driven and geometric criteria register themselves into CRITERIA on import.
from pybench import criteria_data as _criteria_data  # noqa: E402,F401
