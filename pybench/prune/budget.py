"""Channel counts that keep the most importance within a latency budget (HALP's greedy, on a measured table).

Each group may keep only the counts the ratio rules allow (``round_to``, ``min_channels``, equal partitions) and,
of those, only its *fast steps*: counts no larger count beats on the table's predicted latency, so a plan never
keeps a count that costs as much as a bigger one. From the dense model, the greedy repeatedly lowers the group whose
next fast step loses the least normalised importance per millisecond saved, recomputing the layers that group
touches (a conv between two groups costs by both), until the predicted latency is within the budget; then it gives
back any step that still fits, the most important first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from pybench.prune.lut import LatencyTable, LayerCost

__all__ = ["BudgetUnreachableError", "latency_counts"]


class BudgetUnreachableError(ValueError):
    """A latency budget below what the groups' least counts reach; ``least`` is the least reachable budget."""

    def __init__(self, message: str, least: float) -> None:
        super().__init__(message)
        self.least = least


class _Cost:
    """The table's prediction, updated layer by layer as group counts change."""

    def __init__(self, lut: LatencyTable) -> None:
        self.lut = lut
        self.sizes = dict(enumerate(lut.model["groups"]))
        self.counts: dict[int, float] = {}
        self.per_volume = lut.rest_per_volume
        self.dense = lut.model_ms({})
        self.layers_of: dict[int, set[int]] = {}  # group -> the layers whose size it sets
        for i, lay in enumerate(lut.layers):
            for g in _groups_of(lay):
                self.layers_of.setdefault(g, set()).add(i)
        self.cost = [self._layer(lay) for lay in lut.layers]
        self.total = sum(self.cost) + lut.rest_ms

    def _layer(self, lay: LayerCost, counts: Mapping[int, float] | None = None) -> float:
        t, v = self.lut.layer_ms(lay, self.counts if counts is None else counts, self.sizes)
        return t + self.per_volume * v

    def ratio(self) -> float:
        return self.total / self.dense if self.dense else 1.0

    def delta(self, g: int, c: int) -> float:
        """Change of the predicted total (ms) when group ``g`` keeps ``c`` channels."""
        trial = {**self.counts, g: c}
        return sum(self._layer(self.lut.layers[i], trial) - self.cost[i] for i in self.layers_of.get(g, ()))

    def set(self, g: int, c: int) -> None:
        self.counts[g] = c
        for i in self.layers_of.get(g, ()):
            new = self._layer(self.lut.layers[i])
            self.total += new - self.cost[i]
            self.cost[i] = new


def _fast_steps(cost: _Cost, g: int, allowed: list[int]) -> list[int]:
    """Of ``allowed`` counts (descending, the group's size first), those faster than every larger one."""
    steps, best = [], math.inf
    for c in allowed:
        t = cost.delta(g, c)
        if t < best - 1e-12 or not steps:
            steps.append(c)
            best = t
    return steps


def latency_counts(groups: Mapping[int, tuple[np.ndarray, list[int]]], lut: LatencyTable,
                   budget: float) -> tuple[dict[int, int], float, list[str]]:
    """Kept count per group index within ``budget`` x dense latency.

    ``groups``: ``{group index: (normalised scores, allowed kept counts, descending, the size first)}``. Returns
    (counts, predicted latency ratio, notes). Raises ValueError when even the least allowed counts predict more
    than the budget, naming the least reachable budget.
    """
    cost = _Cost(lut)
    steps: dict[int, list[int]] = {g: _fast_steps(cost, g, allowed) for g, (_, allowed) in groups.items()}
    floor = _Cost(lut)
    for g, st in steps.items():
        floor.set(g, st[-1])
    if floor.ratio() > budget + 1e-12:
        least = math.ceil(floor.ratio() * 1000) / 1000
        raise BudgetUnreachableError(
            f"latency_budget={budget:g} cannot be met: with every group at its least count (min_channels, round_to) "
            f"the table predicts {floor.ratio():.3f} of dense latency; ask for at least {least:g}", least)
    # importance kept at each count: the sum of the group's best scores
    kept_imp: dict[int, Callable[[int], float]] = {}
    for g, (s, _) in groups.items():
        cum = np.concatenate([[0.0], np.cumsum(np.sort(s)[::-1])])
        kept_imp[g] = lambda c, cum=cum: float(cum[c])
    pos = dict.fromkeys(steps, 0)

    def step_down(g: int) -> tuple[float, int] | None:
        """(importance lost per ms saved, steps taken) of the next step of ``g`` that saves time."""
        st, here = steps[g], pos[g]
        for j in range(here + 1, len(st)):
            saved = -cost.delta(g, st[j])
            if saved > 1e-12:
                lost = kept_imp[g](st[here]) - kept_imp[g](st[j])
                return lost / saved, j
        return None

    moves = {g: step_down(g) for g in steps}
    while cost.ratio() > budget and any(m is not None for m in moves.values()):
        g = min((g for g in moves if moves[g] is not None), key=lambda k: (moves[k][0], k))
        pos[g] = moves[g][1]
        cost.set(g, steps[g][pos[g]])
        touched = {h for i in cost.layers_of.get(g, ()) for h in _groups_of(lut.layers[i])} | {g}
        for h in touched & set(moves):
            moves[h] = step_down(h)
    # give back steps that still fit, the most importance per ms first
    while True:
        best: tuple[float, int] | None = None
        for g in steps:
            if pos[g] == 0:
                continue
            up = steps[g][pos[g] - 1]
            extra = cost.delta(g, up)
            if (cost.total + extra) / cost.dense <= budget:
                gain = kept_imp[g](up) - kept_imp[g](steps[g][pos[g]])
                score = gain / max(extra, 1e-12)
                if best is None or score > best[0]:
                    best = (score, g)
        if best is None:
            break
        g = best[1]
        pos[g] -= 1
        cost.set(g, steps[g][pos[g]])
    notes = [] if cost.ratio() <= budget + 1e-9 else [f"latency budget {budget:g} not reached: {cost.ratio():.3f}"]
    return {g: steps[g][pos[g]] for g in steps}, cost.ratio(), notes


def _groups_of(lay: LayerCost) -> set[int]:
    return {g for d in (lay.out, lay.inp) if d is not None for g in d.groups}
