"""Channel importance: ``score(model, graph, criterion) -> {group: Tensor[size]}`` (higher = more important).

Weight criteria read each producing weight once through ``ops.channel_stats_list`` (sum|w|, sum w^2, sum w per
filter; every weight in one call) and sum the per-filter figures over a group's producers (every conv / linear
whose filters make the group's channels; a residual group has several). Data-driven criteria (activations, Taylor,
FPGM, LFE: :mod:`.data_driven`, :mod:`.lfe`) register in the same ``CRITERIA`` table of :mod:`.base`; they
take ``data``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pybench.prune import layers
from pybench.prune.criteria.base import (
    CRITERIA,
    Criterion,
    _cat,
    _column,
    _modules,
    _to_units,
    _weight_stats,
    register,
    unit_scores_from_filters,
)
from pybench.prune.graph import ChannelGraph, Group

__all__ = ["CRITERIA", "Criterion", "criterion_options", "register", "score", "unit_scores_from_filters"]


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

    def gamma(n: str, m: nn.Module) -> torch.Tensor | None:
        return None if getattr(m, "weight", None) is None else m.weight.detach().abs()

    return unit_scores_from_filters(graph, mods, gamma, module_types=layers.SCALED_NORMS)


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


# the data-driven and geometric criteria register themselves into CRITERIA on import
from pybench.prune.criteria import data_driven, lfe  # noqa: E402,F401
