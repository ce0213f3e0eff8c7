"""Choosing which channels each group keeps: ``plan(graph, scores, ratio, ...) -> PrunePlan``.

Semantics (DESIGN.md): a group of n channels at ratio r loses floor(r*n) of them, fewer where needed so that the
kept count is a multiple of ``round_to``, and keeps at least ``min_channels`` (a clamp the plan reports in
``notes``). Groups with equal partitions (grouped convs, GroupNorm) lose the same number from each partition.
``scope="global"`` ranks all groups' channels together after dividing each group's scores by their mean (Wang) and
then applies the same per-group rules. ``latency_budget=`` with ``lut=`` chooses the counts instead by a
measured latency table (:mod:`pybench.prune.budget`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pybench.prune.budget import latency_counts
from pybench.prune.graph import ChannelGraph, Group
from pybench.prune.graph import slots as _slots
from pybench.prune.lut import LatencyTable

__all__ = ["NORMALIZATIONS", "PrunePlan", "normalize", "plan"]


@dataclass(eq=False)
class PrunePlan:
    """Which channels of each group stay. ``keep[group]``: sorted kept channel indices (int64 tensor)."""

    graph: ChannelGraph
    keep: dict[Group, torch.Tensor]
    ratio: float
    scope: str
    round_to: int = 1
    min_channels: int = 1
    ignored: list[Group] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # a latency-budget plan: the budget (fraction of dense latency) and the table's prediction for this plan
    latency_budget: float | None = None
    predicted_latency: float | None = None  # fraction of dense latency
    predicted_ms: float | None = None

    def removed_units(self) -> np.ndarray:
        """Boolean over all of the graph's channel units: True where the plan removes it."""
        removed = np.zeros(self.graph.n_units, dtype=bool)
        if not self.keep:
            return removed
        groups, kept = list(self.keep), list(self.keep.values())
        if all(k.dtype == torch.int64 for k in kept):  # all groups at once: their units, less the kept ones
            counts = [k.numel() for k in kept]
            flat = torch.cat(kept).numpy()
            sizes = np.repeat([g.size for g in groups], counts)
            if ((flat >= 0) & (flat < sizes)).all():
                comps = np.concatenate([g.comps for g in groups])
                removed[comps] = True
                starts = np.cumsum([0] + [g.size for g in groups[:-1]])
                removed[comps[np.repeat(starts, counts) + flat]] = False
                return removed
        for g, k in zip(groups, kept, strict=True):  # any other index form numpy takes (negative, bool...)
            mask = np.ones(g.size, dtype=bool)
            mask[k.numpy()] = False
            removed[g.comps[mask]] = True
        return removed

    @property
    def pinned(self) -> list[tuple[str, int]]:
        """(reason, channels) the graph keeps whatever the plan: each pin reason names the module and operation."""
        return self.graph.pinned_channels()

    def kept_counts(self) -> dict[Group, int]:
        return {g: int(k.numel()) for g, k in self.keep.items()}

    @property
    def n_removed(self) -> int:
        return sum(g.size - int(k.numel()) for g, k in self.keep.items())

    def __repr__(self) -> str:
        total = sum(g.size for g in self.keep)
        return (f"PrunePlan(ratio={self.ratio}, scope={self.scope!r}, groups={len(self.keep)}, "
                f"removed {self.n_removed}/{total} channels, notes={len(self.notes)})")


def _check(graph: ChannelGraph, ratio: float, scope: str, round_to: int, min_channels: int,
           normalize_by: str = "mean", max_ratio: float = 1.0) -> None:
    if not isinstance(graph, ChannelGraph):
        raise TypeError(f"graph must be a ChannelGraph from pybench.trace, got {type(graph).__name__}")
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be a number in [0, 1) (the fraction of channels removed), got {ratio!r}")
    if scope not in ("local", "global"):
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be an int >= 1 (a layer is never pruned away), got {min_channels!r}")
    if normalize_by not in NORMALIZATIONS:
        raise ValueError(f"normalize_by must be one of {list(NORMALIZATIONS)}, got {normalize_by!r}")
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 0 < max_ratio <= 1:
        raise ValueError(f"max_ratio must be a fraction in (0, 1] (the most of one group a plan removes), got "
                         f"{max_ratio!r}")


def _check_scores(graph: ChannelGraph, scores: Mapping[Group, torch.Tensor]) -> None:
    """Scores are keyed by this graph's groups: an empty dict, or one from another trace (whose groups are other
    objects), would silently prune nothing."""
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a dict {{group: tensor}} from pb.score, got {type(scores).__name__}")
    if not scores and graph.groups:
        raise ValueError(f"scores is empty but the graph has {len(graph.groups)} groups; score them with "
                         "pb.score(model, graph, criterion)")
    own = set(map(id, graph.groups))
    foreign = [k for k in scores if id(k) not in own]
    if foreign:
        raise ValueError(f"scores hold {len(foreign)} group(s) that are not this graph's (scored on another "
                         "pb.trace?); score the graph you plan: pb.score(model, graph, criterion)")


def _ignored(graph: ChannelGraph, ignore: Iterable[str]) -> set[int]:
    ignore = [ignore] if isinstance(ignore, str) else list(ignore)
    if not ignore:
        return set()
    known = set(graph.module_types) | {k[1] for k in graph.slots}
    for name in ignore:
        if name not in known and not any(k.startswith(name + ".") for k in known):
            close = sorted(k for k in known if name.split(".")[-1] in k)[:5]
            raise ValueError(f"ignore names {name!r}, which is not a module or parameter the graph slices"
                             f"{'; did you mean one of ' + str(close) if close else ''}")
    out = set()
    for g in graph.groups:
        for m in g.members:
            if any(m.name == n or m.name.startswith(n + ".") for n in ignore):
                out.add(g.index)
                break
    return out


def _outside_layers(graph: ChannelGraph, layers: Iterable[str]) -> set[int]:
    """Groups some producer of which is not one of ``layers`` (type names or module names); empty: none."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        return set()
    types = set(graph.module_types.values())
    for name in layers:
        if not isinstance(name, str) or (name not in types and name not in graph.module_types
                                         and not any(k.startswith(name + ".") for k in graph.module_types)):
            raise ValueError(f"layers names {name!r}, which is neither a module type nor a module of this graph; "
                             f"its types: {', '.join(sorted(types))}")

    def chosen(m: _slots.Member) -> bool:
        return any(m.module_type == n or m.name == n or m.name.startswith(n + ".") for n in layers)

    return {g.index for g in graph.groups if not all(chosen(m) for m in g.producers)}


def _keep_count(n: int, remove: int, parts: int, round_to: int, min_channels: int) -> tuple[int, bool]:
    """Kept count for a group of n (in ``parts`` equal partitions) losing ``remove``; and whether it was clamped."""
    per = n // parts
    keep_per = per - remove // parts
    keep = keep_per * parts
    if round_to > 1 and keep % round_to:
        step = round_to // math.gcd(round_to, parts)
        keep_per = min(per, -(-keep_per // step) * step)
        keep = keep_per * parts
    floor = -(-min_channels // parts)
    clamped = keep_per < floor
    keep_per = max(keep_per, min(floor, per))
    return keep_per * parts, clamped


def _protected(g: Group, s: np.ndarray) -> np.ndarray:
    """Per member holding only part of the group (e.g. one branch of a concat inside a residual group): its best
    channel, so that no layer is pruned away."""
    parts = _slots.partial_units(g.graph)[g.index]  # structural: found once per graph, for all groups at once
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.asarray([units[np.argmax(s[units])] for units in parts], dtype=np.int64))


def _choose(g: Group, s: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` best channels of ``g`` by score ``s`` (equal numbers per partition); every member keeps one."""
    if keep >= g.size:
        return np.arange(g.size)
    if g.blocks > 1:
        # per partition, its ``per`` best (ties: lowest index first); partitions have equal sizes (trace checks)
        per = keep // g.blocks
        order = np.lexsort((-s, g.block_of)).reshape(g.blocks, -1)
        return np.sort(order[:, :per].reshape(-1))
    order = np.argsort(-s, kind="stable")
    must = _protected(g, s)
    if must.size:
        # the protected channels, then the best others in score order until ``keep`` are chosen
        chosen = np.zeros(g.size, dtype=bool)
        chosen[must] = True
        need = keep - must.size
        if need > 0:
            fresh = np.cumsum(~chosen[order])
            chosen[order[:int(np.searchsorted(fresh, need)) + 1]] = True
        return np.nonzero(chosen)[0]
    return np.sort(order[:keep])


def _most(size: int, max_ratio: float) -> int:
    """The most channels a group of ``size`` may lose under ``max_ratio``."""
    return int(math.floor(max_ratio * size + 1e-9))


def global_removals(scores: Sequence[np.ndarray], ratio: float, min_channels: int,
                    max_ratio: float = 1.0) -> list[int]:
    """How many channels each score vector loses when all are ranked together: the ``floor(ratio * total)`` least
    important go, greedily from the least important, never taking a group below ``min_channels`` or more than
    ``max_ratio`` of it."""
    flat = np.concatenate(scores)
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])
    n_remove = int(math.floor(ratio * flat.size + 1e-9))
    cap = [min(len(s) - min(min_channels, len(s)), _most(len(s), max_ratio)) for s in scores]
    taken = [0] * len(scores)
    for i in np.argsort(flat, kind="stable"):  # least important first, skipping groups at their floor
        if n_remove == 0:
            break
        o = owner[i]
        if taken[o] < cap[o]:
            taken[o] += 1
            n_remove -= 1
    return taken


NORMALIZATIONS = ("mean", "max", "l2", "none")


def _divisor(s: np.ndarray, method: str) -> float:
    if method == "none" or not s.size:
        return 1.0
    d = float({"mean": np.abs(s).mean, "max": np.abs(s).max, "l2": lambda: np.sqrt((s * s).sum())}[method]())
    return d if d > 0 and math.isfinite(d) else 1.0


def normalize(scores: Mapping[Group, torch.Tensor], method: str = "mean") -> dict[Group, torch.Tensor]:
    """Per-group normalisation for a global ranking: ``"mean"`` divides each group's scores by their mean absolute
    value (Wang et al.), ``"max"`` by their maximum absolute value, ``"l2"`` by their Euclidean norm, ``"none"``
    leaves them. A group whose scores are all 0 is left as is."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {method!r}")
    out: dict[Group, torch.Tensor] = {}
    for g, s in scores.items():
        s = torch.as_tensor(s, dtype=torch.float64)
        out[g] = s / _divisor(s.numpy(), method)
    return out


def plan(graph: ChannelGraph, scores: Mapping[Group, torch.Tensor], ratio: float = 0.5, scope: str = "local",
         round_to: int = 1, min_channels: int = 1, ignore: Iterable[str] = (),
         normalize_by: str = "mean", *, latency_budget: float | None = None, lut: LatencyTable | None = None,
         layers: Iterable[str] = (), max_ratio: float = 1.0) -> PrunePlan:
    """Decide the channels each group keeps.

    Args:
        graph: from :func:`pybench.trace`.
        scores: ``{group: Tensor[group.size]}`` (higher = keep), e.g. from :func:`pybench.score`; groups missing
            from it are left whole. An empty dict, one keyed by another trace's groups, or NaN raises ValueError.
        ratio: fraction of each group's channels removed (local), or of all channels (global); in [0, 1).
        scope: "local" (every group at ``ratio``) or "global" (groups ranked together after each group's scores
            are normalised by ``normalize_by``: see :func:`normalize`).
        round_to: kept counts are multiples of this (where the group is large enough).
        min_channels: every group keeps at least this many (a clamp is reported in ``PrunePlan.notes``).
        ignore: module or parameter names whose groups stay whole.
        layers: the layers that choose filters (empty: all): module type names (``"Conv2d"``) or module names
            (a name covers its submodules). A group is shrunk only when every layer producing its channels is one
            of them (Martineau prunes conv filters only: ``layers=["Conv2d"]`` keeps every Linear's outputs, while
            the inputs a pruned conv feeds still shrink with it).
        max_ratio: the largest fraction of any one group a plan removes, in (0, 1] (Torch-Pruning's
            ``max_pruning_ratio``): a global ranking or a latency budget then never thins a layer to a sliver.
        normalize_by: "mean" (Wang et al.), "max", "l2" or "none"; a global scope and a latency budget use it.
        latency_budget: instead of ``ratio``, a fraction of the dense model's latency in (0, 1), predicted by
            ``lut`` (a :class:`~pybench.prune.lut.LatencyTable` of this model on the target): per-group counts
            that keep the most normalised importance within it, snapped to the table's fast steps
            (:mod:`pybench.prune.budget`); ``round_to``, ``min_channels`` and ``ignore`` hold. The plan records
            ``predicted_latency`` (fraction of dense) and ``predicted_ms``; its ``ratio`` is the share of the
            groups' channels removed.
    """
    if latency_budget is not None:
        return _latency_plan(graph, scores, latency_budget, lut, round_to, min_channels, ignore, normalize_by,
                             layers, max_ratio)
    if lut is not None:
        raise ValueError("lut= is only used with latency_budget=; give the budget (a fraction of dense latency)")
    _check(graph, ratio, scope, round_to, min_channels, normalize_by, max_ratio)
    skip, arrays = _score_arrays(graph, scores, ignore, layers)
    removals = {g: min(int(math.floor(ratio * g.size + 1e-9)), _most(g.size, max_ratio)) for g in arrays}
    if scope == "global" and arrays:
        normed = [s / _divisor(s, normalize_by) for s in arrays.values()]
        removals = dict(zip(arrays, global_removals(normed, ratio, min_channels, max_ratio), strict=True))
    keep: dict[Group, torch.Tensor] = {}
    notes: list[str] = []
    for g, s in arrays.items():
        k, clamped = _keep_count(g.size, removals[g], g.blocks, round_to, min_channels)
        if clamped:
            notes.append(f"{g!r}: would keep {g.size - removals[g]} < min_channels={min_channels}; kept {k}")
        keep[g] = torch.from_numpy(_choose(g, s, k).astype(np.int64))
    return PrunePlan(graph, keep, float(ratio), scope, round_to, min_channels,
                     [g for g in graph.groups if g.index in skip], notes)


def _score_arrays(graph: ChannelGraph, scores: Mapping[Group, torch.Tensor], ignore: Iterable[str],
                  layers: Iterable[str] = ()) -> tuple[set[int], dict[Group, np.ndarray]]:
    """(indices of ignored groups, {group: float64 scores}) of the groups a plan may shrink; bad scores raise."""
    _check_scores(graph, scores)
    skip = _ignored(graph, ignore) | _outside_layers(graph, layers)
    arrays: dict[Group, np.ndarray] = {}
    for g in graph.groups:
        if g.index in skip or g not in scores:
            continue
        s = scores[g]
        s = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
        if s.shape != (g.size,):
            raise ValueError(f"scores for {g!r} must have shape ({g.size},), got {tuple(s.shape)}")
        if np.isnan(s).any():
            raise ValueError(f"scores for {g!r} hold NaN at {np.flatnonzero(np.isnan(s))[:5].tolist()}: a criterion "
                             "that diverged ranks nothing; check the model's weights and data")
        arrays[g] = s.astype(np.float64, copy=False)  # read only
    return skip, arrays


def _latency_plan(graph: ChannelGraph, scores: Mapping[Group, torch.Tensor], budget: float, lut: LatencyTable | None,
                  round_to: int, min_channels: int, ignore: Iterable[str], normalize_by: str,
                  layers: Iterable[str] = (), max_ratio: float = 1.0) -> PrunePlan:
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 < budget < 1:
        raise ValueError(f"latency_budget must be a fraction of the dense model's latency in (0, 1), e.g. 0.5, got "
                         f"{budget!r}")
    if not isinstance(lut, LatencyTable):
        raise TypeError("latency_budget needs lut=, a latency table of this model on the target (pb.latency_table "
                        f"or LatencyTable.load), got {type(lut).__name__}")
    _check(graph, 0.0, "global", round_to, min_channels, normalize_by, max_ratio)
    lut.check(graph)
    skip, arrays = _score_arrays(graph, scores, ignore, layers)
    choices: dict[int, tuple[np.ndarray, list[int]]] = {}
    for g, s in arrays.items():
        allowed = sorted({_keep_count(g.size, r, g.blocks, round_to, min_channels)[0]
                          for r in range(_most(g.size, max_ratio) + 1)}, reverse=True)
        choices[g.index] = (s / _divisor(s, normalize_by), allowed)
    counts, predicted, notes = latency_counts(choices, lut, float(budget))
    keep = {g: torch.from_numpy(_choose(g, s, counts[g.index]).astype(np.int64)) for g, s in arrays.items()}
    total = sum(g.size for g in arrays)
    removed = sum(g.size - counts[g.index] for g in arrays)
    return PrunePlan(graph, keep, removed / total if total else 0.0, "global", round_to, min_channels,
                     [g for g in graph.groups if g.index in skip], notes, float(budget), predicted,
                     predicted * lut.dense_ms)
