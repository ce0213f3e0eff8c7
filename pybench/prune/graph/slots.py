"""What score, plan and apply read of a :class:`~pybench.prune.graph.ChannelGraph`, as whole-graph numpy arrays.

A graph's slots (every module role and parameter dimension, with the unit label of each index) are a few hundred
small arrays; walking them one by one costs a dozen numpy calls each, which is most of the time ``plan`` and
``apply`` take on a small model. :func:`table` concatenates them once per graph (cached on it) with, for every
index, its unit's group and position in that group; members, partial members and kept indices are then a handful
of vectorised operations over all slots at once. Everything here is derived from the graph alone and gives
exactly what the per-slot loops gave.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from pybench.prune import layers

if TYPE_CHECKING:
    from pybench.prune.graph import ChannelGraph

__all__ = ["Member", "SlotTable", "kept_indices", "members", "named_modules", "named_tensors", "partial_units",
           "submodules", "table"]


@dataclass(eq=False)
class Member:
    """One place a group's channels live: a module role (``"out"``: filters / features, ``"in"``: input channels)
    or a parameter dimension (``kind == "param"``), with the group unit of each of its indices (-1: not this
    group's)."""

    name: str
    kind: str  # "module" or "param"
    role: str | int  # "out" / "in" for modules, the dimension for parameters
    module_type: str
    unit_of_index: np.ndarray

    @property
    def dim(self) -> int:
        """The tensor dimension sliced (weights: 0 for "out", 1 for "in"; parameters: ``role``)."""
        if self.kind == "param":
            return int(self.role)
        return 1 if self.role == "in" else 0

    @property
    def is_producer(self) -> bool:
        return self.kind == "module" and self.role == "out" and self.module_type in _PRODUCER_NAMES

    @property
    def is_consumer(self) -> bool:
        return self.kind == "module" and self.role == "in"

    def indices(self, unit: int) -> np.ndarray:
        """Indices of this member that belong to group channel ``unit`` (a block for flatten -> linear)."""
        return np.nonzero(self.unit_of_index == unit)[0]


_PRODUCER_NAMES = frozenset(t.__name__ for t in layers.PRODUCERS)


class SlotTable:
    """The slots of a graph, concatenated in ``graph.slots`` order. ``unit`` and ``slot_of`` are made on first use
    (score needs neither)."""

    def __init__(self, graph: ChannelGraph) -> None:
        self.keys: list[tuple] = list(graph.slots)
        arrays = list(graph.slots.values())
        k = len(arrays)
        sizes = np.fromiter((a.size for a in arrays), dtype=np.int64, count=k)
        self.starts = np.zeros(k + 1, dtype=np.int64)  # where each slot's indices begin in the arrays below
        np.cumsum(sizes, out=self.starts[1:])
        self.sizes = sizes
        # unit label of each index (-1: untracked); the graph keeps its slots as consecutive views of one array
        whole = getattr(graph, "_slot_labels", None)
        if whole is not None and whole.size == self.starts[-1] and all(a.base is whole for a in arrays):
            self.labels = whole
        else:
            self.labels = np.concatenate(arrays) if k else np.zeros(0, dtype=np.int64)
        self._unit_index = graph.unit_index
        # group of each index's unit (-1: untracked or pinned); one extra entry answers label -1 with -1
        self.group = np.append(graph.unit_group, -1)[self.labels]
        # the one group a slot's indices lie in; -1: none, -2: several
        self.slot_group = np.full(k, -1, dtype=np.int64)
        nonempty = np.flatnonzero(sizes)
        if nonempty.size:
            at = self.starts[nonempty]
            hi = np.maximum.reduceat(self.group, at)
            lo = np.minimum.reduceat(self.group.view(np.uint64), at).view(np.int64)  # -1 is the largest uint64
            self.slot_group[nonempty] = np.where(hi < 0, -1, np.where(lo == hi, hi, -2))

    @functools.cached_property
    def unit(self) -> np.ndarray:
        """(T,) position of each index's unit in its group (-1: untracked or pinned)."""
        return np.append(self._unit_index, -1)[self.labels]

    @functools.cached_property
    def slot_of(self) -> np.ndarray:
        """(T,) the slot of each index."""
        return np.repeat(np.arange(len(self.keys), dtype=np.int64), self.sizes)


def table(graph: ChannelGraph) -> SlotTable:
    """The graph's :class:`SlotTable`, built on first use."""
    t = getattr(graph, "_slot_table", None)
    if t is None:
        t = graph._slot_table = SlotTable(graph)
    return t


def members(graph: ChannelGraph) -> list[list[Member]]:
    """Per group, the :class:`Member` of each slot holding some of its channels, in slot order."""
    t = table(graph)
    out: list[list[Member]] = [[] for _ in graph.groups]
    types = graph.module_types
    starts = t.starts.tolist()
    slot_group = t.slot_group.tolist()
    for k in np.flatnonzero(t.slot_group != -1).tolist():
        kind, name, role = t.keys[k]
        mtype = types.get(name, "Parameter") if kind == "module" else "Parameter"
        a, b = starts[k], starts[k + 1]
        g = slot_group[k]
        if g >= 0:  # the usual case: all of the slot's tracked indices in one group
            out[g].append(Member(name, kind, role, mtype, t.unit[a:b].copy()))
            continue
        grp, unit = t.group[a:b], t.unit[a:b]
        for gi in np.unique(grp[grp >= 0]).tolist():
            out[gi].append(Member(name, kind, role, mtype, np.where(grp == gi, unit, -1)))
    return out


def partial_units(graph: ChannelGraph) -> list[list[np.ndarray]]:
    """Per group, the units (sorted) of each member that holds only part of the group (one branch of a concat
    inside a residual group, say); module input sides ("in" roles) do not count. Cached on the graph."""
    cached = getattr(graph, "_partial_units", None)
    if cached is not None:
        return cached
    t = table(graph)
    out: list[list[np.ndarray]] = [[] for _ in graph.groups]
    sizes = np.array([g.size for g in graph.groups], dtype=np.int64)
    eligible = np.array([not (kind == "module" and role == "in") for kind, _, role in t.keys], dtype=bool)
    one = np.flatnonzero(eligible & (t.slot_group >= 0))
    if one.size:
        # per slot of one group, a row of that group's size in `seen`: which of its units the slot holds
        need = sizes[t.slot_group[one]]
        base = np.zeros(len(t.keys), dtype=np.int64)
        base[one] = np.cumsum(need) - need
        take = np.zeros(len(t.keys), dtype=bool)
        take[one] = True
        entries = np.flatnonzero(take[t.slot_of] & (t.unit >= 0))
        seen = np.zeros(int(need.sum()), dtype=bool)
        seen[base[t.slot_of[entries]] + t.unit[entries]] = True
        held = np.add.reduceat(seen, base[one], dtype=np.int64)
        for k, n in zip(one[held < need].tolist(), need[held < need].tolist(), strict=True):
            out[int(t.slot_group[k])].append(np.flatnonzero(seen[base[k]:base[k] + n]))
    for k in np.flatnonzero(eligible & (t.slot_group == -2)).tolist():  # slots spread over several groups
        grp, unit = t.group[t.starts[k]:t.starts[k + 1]], t.unit[t.starts[k]:t.starts[k + 1]]
        for gi in np.unique(grp[grp >= 0]).tolist():
            seen = np.zeros(int(sizes[gi]), dtype=bool)
            seen[unit[grp == gi]] = True
            if not seen.all():
                out[gi].append(np.flatnonzero(seen))
    graph._partial_units = out
    return out


def kept_indices(graph: ChannelGraph, removed: np.ndarray) -> dict[tuple, torch.Tensor]:
    """Kept indices (int64) of every slot that loses some, given which units are ``removed`` (bool per unit)."""
    t = table(graph)
    if not t.keys:
        return {}
    kept = ~np.append(removed.astype(bool, copy=False), False)[t.labels]  # label -1 (untracked): kept
    counts = np.zeros(len(t.keys), dtype=np.int64)
    nonempty = np.flatnonzero(t.sizes)
    if nonempty.size:
        counts[nonempty] = np.add.reduceat(kept, t.starts[nonempty], dtype=np.int64)
    # each kept index, less its slot's start; one tensor split into a view per slot (cheaper than one each)
    local = np.flatnonzero(kept) - np.repeat(t.starts[:-1], counts)
    parts = torch.from_numpy(local).split(counts.tolist())
    return {t.keys[k]: parts[k] for k in np.flatnonzero(counts < t.sizes).tolist()}


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``dict(model.named_modules())`` -- same names, same order, each module once -- by a loop over the
    ``_modules`` dictionaries instead of nested generators (a third of the time on a model of 500 modules)."""
    out: dict[str, nn.Module] = {}
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        prefix, m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out[prefix] = m
        children = [(f"{prefix}.{n}" if prefix else n, c) for n, c in m._modules.items() if c is not None]
        stack.extend(reversed(children))
    return out


def named_tensors(modules: dict[str, nn.Module], attr: str = "_parameters") -> Iterator[tuple[str, torch.Tensor]]:
    """(qualified name, tensor) of each module's ``attr`` (``_parameters`` or ``_buffers``), each tensor once: the
    walk of ``named_parameters`` / ``named_buffers`` over ``modules`` (from :func:`named_modules`)."""
    seen: set[int] = set()
    for prefix, m in modules.items():
        for n, t in getattr(m, attr).items():
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            yield (f"{prefix}.{n}" if prefix else n), t


def submodules(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """``{name: model.get_submodule(name)}`` through the ``_modules`` dictionaries, without the walk over every
    module that ``dict(model.named_modules())`` makes (names are the qualified names ``named_modules`` gives)."""
    found: dict[str, nn.Module] = {"": model}  # every prefix resolved so far: siblings share their parents

    def get(name: str) -> nn.Module:
        m = found.get(name)
        if m is None:
            parent, _, leaf = name.rpartition(".")
            m = get(parent)._modules.get(leaf)
            if m is None:  # the graph was traced from another architecture
                raise ValueError(f"{type(model).__name__} has no module {name!r} that the graph names: the graph was "
                                 "traced from another model; trace this one (pb.trace(model, example_inputs))")
            found[name] = m
        return m

    return {name: get(name) for name in names}
