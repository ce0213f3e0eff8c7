"""Tracing a model into a :class:`ChannelGraph`: the groups of channels that must be removed together.

``trace`` runs the model's forward once on shape-only stand-ins (:mod:`pybench.prune.graph.eager`; or walks a
``torch.fx`` graph, :mod:`pybench.prune.graph.fx`), giving every output channel of a conv / linear a global id and
following each id through every operation (:mod:`pybench.prune.graph.rules`): residual additions and products merge ids,
depthwise convs pass them through, concat / split / reshape / shuffle move them, and every module or parameter
dimension indexed by channels becomes a *slot* holding the id of each of its indices. Merged ids form *units* (one
unit = one channel of a group, possibly several indices of a member, e.g. a flatten -> linear block); units whose
spaces touch form a :class:`Group`.
Channels reaching the model's outputs, or read by an op no rule understands, are pinned (never pruned).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pybench import _gc
from pybench.prune import layers
from pybench.prune.graph import rules
from pybench.prune.graph import slots as _slots
from pybench.prune.graph.eager import eager_trace
from pybench.prune.graph.fx import fx_graph, fx_ops, walk_fx
from pybench.prune.graph.slots import Member
from pybench.prune.graph.steps import TraceError

__all__ = ["ChannelGraph", "Group", "Member", "TraceError", "TrainingModeWarning", "trace"]

PRODUCER_TYPES = layers.PRODUCERS  # kept: older code reads it here


class TrainingModeWarning(UserWarning):
    """``trace`` was given a model in training mode (BN / dropout / aux heads behave differently there)."""




@dataclass(eq=False)
class Group:
    """Channels removed together. ``size`` channels (units); ``blocks > 1`` means they split into that many equal
    partitions that must keep equal counts (grouped convolutions, GroupNorm); ``block_of`` gives each unit's."""

    index: int
    size: int
    comps: np.ndarray  # graph-wide unit labels of this group's channels, in order
    graph: ChannelGraph = field(repr=False)
    blocks: int = 1
    block_of: np.ndarray | None = field(default=None, repr=False)

    @property
    def members(self) -> list[Member]:
        return self.graph._members()[self.index]

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.is_producer]

    @property
    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.is_consumer]

    @property
    def modules(self) -> set[str]:
        return {m.name for m in self.members if m.kind == "module"}

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        names = sorted(m.name for m in self.producers)[:3]
        more = "..." if len(self.producers) > 3 else ""
        return f"Group({self.index}, size={self.size}, blocks={self.blocks}, producers={names}{more})"


class ChannelGraph:
    """Result of :func:`trace`: ``groups`` (prunable), ``pinned`` (why other channels stay), and the slots that
    surgery and masking slice."""

    def __init__(self, ctx: rules.TraceContext, modules: dict[str, nn.Module], fingerprint: list, reasons: list[str],
                 strict_notes: list[str]) -> None:
        self.fingerprint = fingerprint
        self.module_types = {name: type(m).__name__ for name, m in modules.items()}
        self.reducers = dict(ctx.reducers)
        self.consumed = set(ctx.consumed)  # parameter dims that read channels (a functional conv's weight dim 1)
        self.notes = strict_notes
        self.slots: dict[tuple, np.ndarray] = {}
        self._slot_ids = ctx.slots
        self._build(ctx, reasons)
        self._member_cache: list[list[Member]] | None = None

    # -- construction ---------------------------------------------------------------------------------------------
    def _build(self, ctx: rules.TraceContext, reasons: list[str]) -> None:
        n = ctx.n_ids
        if ctx.edges:
            a = np.concatenate([e[0] for e in ctx.edges])
            b = np.concatenate([e[1] for e in ctx.edges])
            adj = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
            ncomp, labels = connected_components(adj, directed=False)
        else:
            ncomp, labels = n, np.arange(n, dtype=np.int64)
        labels = labels.astype(np.int64)
        pinned = np.zeros(ncomp, dtype=bool)
        unit_reason = np.full(ncomp, -1, dtype=np.int64)  # per unit: the first reason that pinned it
        reason_index = {r: i for i, r in enumerate(reasons)}

        def pin(comps: np.ndarray, reason: str) -> None:
            fresh = comps[unit_reason[comps] < 0]
            if fresh.size:
                if reason not in reason_index:
                    reason_index[reason] = len(reasons)
                    reasons.append(reason)
                unit_reason[fresh] = reason_index[reason]
            pinned[comps] = True

        for ids, reason in ctx.pins:
            pin(labels[ids], reason)
        # groups: units connected through the spaces (producers' outputs) they live in
        sizes = np.array([s for _, _, s in ctx.spaces], dtype=np.int64)
        space_of = np.repeat(np.arange(len(sizes)), sizes)
        adj = coo_matrix((np.ones(n, dtype=np.int8), (labels, ncomp + space_of)), shape=(ncomp + len(sizes),) * 2)
        _, glabel = connected_components(adj, directed=False)
        glabel = glabel[:ncomp]
        # equal-partition constraints (grouped convs, GroupNorm, chunk): per group, the cells that every
        # constraint's parts are unions of; equal removal per cell keeps every part equal
        per_group: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for ids, parts, block_reason in ctx.blocks:
            comps = labels[ids]
            if pinned[comps].any():
                pin(comps, f"shares an equal-partition constraint ({block_reason}) with kept channels")
                continue
            rows = np.repeat(np.arange(parts), comps.size // parts)
            per_group.setdefault(int(glabel[comps[0]]), []).append((comps, rows))
        cells_of_group: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for g, constraints in per_group.items():
            comps = np.unique(np.concatenate([c for c, _ in constraints]))
            table = np.full((comps.size, len(constraints)), -1, dtype=np.int64)
            ok = True
            for k, (c, rows) in enumerate(constraints):
                pos = np.searchsorted(comps, c)
                order = np.argsort(pos, kind="stable")
                dup = pos[order][1:] == pos[order][:-1]
                if (dup & (rows[order][1:] != rows[order][:-1])).any():
                    ok = False  # one channel in two parts of the same constraint
                    break
                table[pos, k] = rows
            if ok:  # cells = distinct rows of the table (one int key per row: np.unique(axis=0) is slow)
                radix = int(table.max()) + 2
                if table.shape[1] * np.log2(radix) < 62:
                    keys = ((table + 1) * radix ** np.arange(table.shape[1], dtype=np.int64)).sum(axis=1)
                    _, cell = np.unique(keys, return_inverse=True)
                else:
                    _, cell = np.unique(table, axis=0, return_inverse=True)
                cell = cell.reshape(-1)
                counts = np.bincount(cell)
                ok = bool((counts == counts[0]).all())
            if not ok:
                pin(np.flatnonzero(glabel == g), "channels with equal-partition constraints (grouped convs, "
                    "GroupNorm, chunk) that cannot all hold")
                continue
            cells_of_group[g] = (comps, cell)
        self.labels = labels
        self.pinned_units = pinned
        self.n_units = ncomp
        # groups of unpinned units
        live = np.nonzero(~pinned)[0]
        order = np.argsort(glabel[live], kind="stable")
        live = live[order]
        starts = np.flatnonzero(np.r_[True, glabel[live][1:] != glabel[live][:-1]]) if live.size else np.array([], int)
        bounds = np.r_[starts, live.size]
        self.groups: list[Group] = []
        self.unit_group = np.full(ncomp, -1, dtype=np.int64)
        self.unit_index = np.full(ncomp, -1, dtype=np.int64)
        for i in range(len(starts)):
            comps = live[bounds[i]:bounds[i + 1]]
            g = int(glabel[comps[0]])
            gi = len(self.groups)
            parts, bo = 1, None
            if not cells_of_group:  # no partitions anywhere: the common case, without the checks below
                self.unit_group[comps] = gi
                self.unit_index[comps] = np.arange(comps.size)
                self.groups.append(Group(gi, int(comps.size), comps, self))
                continue
            if g in cells_of_group:
                ccomps, cell = cells_of_group[g]
                pos = np.searchsorted(ccomps, comps)
                covered = (pos < ccomps.size) & (ccomps[np.minimum(pos, ccomps.size - 1)] == comps)
                if not covered.all():  # a unit outside the partition: keep the group whole
                    pin(comps, f"group of {comps.size} channels: partitions do not cover it")
                    continue
                _, bo = np.unique(cell[pos], return_inverse=True)
                parts = int(bo.max()) + 1
                if (np.bincount(bo) != comps.size // parts).any():
                    pin(comps, f"group of {comps.size} channels: partitions of unequal size")
                    continue
            self.unit_group[comps] = gi
            self.unit_index[comps] = np.arange(comps.size)
            self.groups.append(Group(gi, int(comps.size), comps, self, parts, bo))
        self.pinned = reasons
        self.unit_reason = unit_reason
        # split sizes to rewrite: (module, attribute, unit label of each split channel (-1: untracked), part
        # bounds, mode: "part" (one size for every part), "sizes" (a list), "total" (the whole, split evenly))
        self.resizes = [(mod, attr, np.where(ids >= 0, labels[np.maximum(ids, 0)], -1), bounds, mode)
                        for mod, attr, ids, bounds, mode in ctx.resizes]
        # per slot: unit label of each index (-1: untracked), all slots in one pass
        if self._slot_ids:
            ids = np.concatenate(list(self._slot_ids.values()))
            lab = np.where(ids >= 0, labels[np.maximum(ids, 0)], -1)
            ends = np.cumsum([v.size for v in self._slot_ids.values()]).tolist()
            for key, a, b in zip(self._slot_ids, [0, *ends[:-1]], ends, strict=True):
                self.slots[key] = lab[a:b]
            self._slot_labels = lab  # all slots' labels, in slot order: .slots reads them without a copy

    def _members(self) -> list[list[Member]]:
        if self._member_cache is None:  # vectorised over all slots at once (pybench.prune.graph.slots)
            self._member_cache = _slots.members(self)
        return self._member_cache

    # -- queries --------------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"ChannelGraph({len(self.groups)} groups, {sum(g.size for g in self.groups)} prunable channels, "
                f"{len(self.pinned)} pin reasons)")

    def pinned_channels(self) -> list[tuple[str, int]]:
        """(reason, channels it keeps) for every pin reason, the most channels first: why the model cannot shrink
        more. A channel counts under the first reason that pinned it."""
        counts = np.bincount(self.unit_reason[self.unit_reason >= 0], minlength=len(self.pinned))
        return sorted(((r, int(c)) for r, c in zip(self.pinned, counts, strict=True)), key=lambda rc: -rc[1])

    @property
    def n_channels(self) -> int:
        """Channel units the trace tracked (prunable or pinned)."""
        return int(self.n_units)

    def group_of(self, module: str, role: str = "out") -> Group | None:
        """The group holding ``module``'s ``role`` channels (None when they are pinned or absent)."""
        lab = self.slots.get(("module", module, role))
        if lab is None:
            return None
        grp = self.unit_group[lab[lab >= 0]]
        grp = grp[grp >= 0]
        return self.groups[int(grp[0])] if grp.size else None


# ---------------------------------------------------------------------------------------------------------------
# trace
# ---------------------------------------------------------------------------------------------------------------


def _check_inputs(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a tuple of tensors (e.g. torch.randn(1, 3, 224, 224)), "
                    f"got {type(example_inputs).__name__}")


TRACERS = ("eager", "fx")


def trace(model: nn.Module, example_inputs: Any, *, strict: bool = False, tracer: str = "eager") -> ChannelGraph:
    """Build the :class:`ChannelGraph` of ``model``.

    Args:
        model: the network (eval mode recommended).
        example_inputs: a tensor or tuple of tensors with the shapes the model will see (only shapes are used).
        strict: raise :class:`TraceError` for an op no rule understands instead of keeping its channels.
        tracer: ``"eager"`` (default) runs ``forward`` once on shape-only stand-ins and hands each operation to the
            channel rules as it happens; python control flow on shapes is fine. ``"fx"`` traces a ``torch.fx``
            graph first and walks it (about twice the time; the same graph wherever both can trace the model).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if tracer not in TRACERS:
        raise ValueError(f"tracer must be one of {TRACERS}, got {tracer!r}")
    inputs = _check_inputs(example_inputs)
    with _gc.paused():
        return _trace(model, inputs, strict, tracer)


def _trace(model: nn.Module, inputs: tuple, strict: bool, tracer: str = "eager") -> ChannelGraph:
    """``tracer``: "eager" (runs forward on stand-ins, :mod:`pybench.prune.graph.eager`) or "fx" (a symbolic trace,
    then a walk of its graph); both feed the same rules and give the same graph."""
    modules = _slots.named_modules(model)
    ctx = rules.TraceContext(modules)
    notes: list[str] = []
    if tracer == "fx":
        graph = fx_graph(model)
        if model.training:
            _check_training_mode(model, fx_ops(graph), lambda: fx_ops(fx_graph(model)))
        walk_fx(graph, model, inputs, ctx, modules, strict, notes)
    else:
        ops = eager_trace(model, inputs, ctx, modules, strict, notes)
        if model.training:
            _check_training_mode(model, ops, lambda: eager_trace(model, inputs, rules.TraceContext(modules), modules,
                                                                 strict, []))
    # a parameter read by an op no rule understands cannot be sliced
    for key, ids in ctx.slots.items() if ctx.frozen else ():
        kind, name, _ = key
        pnames = [name] if kind == "param" else [f"{name}.{p}" for p, _ in modules[name].named_parameters()]
        for p in pnames:
            if p in ctx.frozen:
                ctx.pin(ids, f"{p} is also read by {ctx.frozen[p]}")
    used = {k[1] for k in ctx.slots if k[0] == "module"}
    return ChannelGraph(ctx, {n: modules[n] for n in used}, fingerprint(model, modules), [], notes)


def fingerprint(model: nn.Module, modules: dict[str, nn.Module] | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter: what a plan made for a graph of ``model`` requires of a model.

    ``modules``: ``dict(model.named_modules())`` when the caller has it; the walk is that of ``named_parameters``
    (same names, same order) without its nested generators."""
    if modules is None:
        modules = _slots.named_modules(model)
    return [(n, tuple(p.shape)) for n, p in _slots.named_tensors(modules)]


def _check_training_mode(model: nn.Module, ours: list[tuple[str, str]],
                         eval_ops: Callable[[], list[tuple[str, str]]]) -> None:
    """Training mode matters when it changes the graph (aux heads, training-only branches): an error. BN and
    dropout only change values, which a trace does not read: a warning. ``ours``: the operations traced in
    training mode; ``eval_ops`` traces them again in eval mode."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        theirs = eval_ops()
    finally:  # restore each module's own flag (a frozen BN may be in eval inside a training model)
        for m, flag in flags:
            m.training = flag
    if ours != theirs:
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours),
                                                                                            len(theirs)))
        where = f"{ours[at][0]} {ours[at][1]}" if at < len(ours) else "its output"
        raise TraceError(f"trace: {type(model).__name__} is in training mode and its graph differs from eval mode "
                         f"from {where} on (training-only branches such as auxiliary heads); call model.eval() "
                         "before tracing")
    culprit = next((f"{n} ({type(m).__name__})" for n, m in model.named_modules()
                    if isinstance(m, layers.TRAINING_SENSITIVE) or type(m).__name__ == "StochasticDepth"), None)
    if culprit is not None:
        warnings.warn(f"trace: model is in training mode and {culprit} behaves differently there (its graph is "
                      "the same as in eval mode); call model.eval() first", TrainingModeWarning, stacklevel=4)
