"""Pruning to a *measured* latency budget: ``pb.prune_to_latency(model, x, budget, lut)``.

A latency table predicts; the hardware decides. The prediction misses most where most channels go (many small
calls whose fixed cost the table's two whole-model points underrate), so a plan to 0.3 of dense may measure 0.37.
This closes the loop: plan to the budget on the table, time the pruned model *paired* against the dense one on the
table's own target (device, backend, dtype, batch size, threads), and while the measured ratio misses the budget
by more than ``tolerance``, plan again to a corrected budget (the last one scaled by its miss, or interpolated
between two rounds measured either side of the budget). Scores are computed once; each round is a plan,
a cut and one paired timing. The model kept is the round measured nearest the budget, and every round is returned.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from pybench.measure import _common as C
from pybench.measure import paired_latency
from pybench.prune import BudgetUnreachableError, LatencyTable, apply, plan, trace
from pybench.prune.criteria import score

__all__ = ["LatencyRound", "LatencyFit", "prune_to_latency"]


@dataclass(frozen=True)
class LatencyRound:
    """One plan and its measurement: the budget given to the plan, its predicted and its measured latency ratio
    (pruned / dense, paired; with the 95 % interval)."""

    planned_budget: float
    predicted: float
    measured: float
    measured_low: float
    measured_high: float


@dataclass(frozen=True)
class LatencyFit:
    """How ``prune_to_latency`` met ``budget``: its rounds and which one it kept (``chosen``)."""

    budget: float
    tolerance: float
    rounds: tuple[LatencyRound, ...]
    chosen: int

    @property
    def measured(self) -> float:
        return self.rounds[self.chosen].measured

    @property
    def predicted(self) -> float:
        return self.rounds[self.chosen].predicted

    @property
    def met(self) -> bool:
        """Whether the kept model measured within ``tolerance`` of the budget (relative)."""
        return abs(self.measured / self.budget - 1) <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "tolerance": self.tolerance, "chosen": self.chosen, "met": self.met,
                "measured": self.measured, "predicted": self.predicted,
                "rounds": [asdict(r) for r in self.rounds]}


def _next_budget(rounds: list[LatencyRound], budget: float) -> float:
    """The budget to plan next: between the nearest rounds measured either side of ``budget``, linearly; else the
    last round's scaled by its miss (the prediction's error is near-proportional across neighbouring budgets)."""
    above = [r for r in rounds if r.measured > budget]
    below = [r for r in rounds if r.measured <= budget]
    if above and below:
        hi = min(above, key=lambda r: r.measured)
        lo = max(below, key=lambda r: r.measured)
        if hi.measured > lo.measured:
            t = (budget - lo.measured) / (hi.measured - lo.measured)
            return lo.planned_budget + t * (hi.planned_budget - lo.planned_budget)
    last = rounds[-1]
    return last.planned_budget * budget / last.measured


def _wrap(backend: str) -> Any:
    from pybench.bench import backends

    return None if backends.parse(backend)[0] == "eager" else backends.create(backend).prepare


def prune_to_latency(model: nn.Module, example_inputs: Any, budget: float, lut: LatencyTable, *,
                     criterion: str = "l1", data: Any = None, round_to: int = 1, min_channels: int = 1,
                     ignore: Iterable[str] = (), layers: Iterable[str] = (), max_ratio: float = 1.0,
                     normalize_by: str = "mean", rounds: int = 3,
                     tolerance: float = 0.05, device: str | None = None, target_ci: float = 0.02,
                     max_time_s: float = 5.0, channels_last: bool = False,
                     **criterion_kw: Any) -> tuple[nn.Module, Any, LatencyFit]:
    """Prune ``model`` so that its *measured* latency is ``budget`` x the dense model's on ``lut``'s target.

    Args:
        model: the dense network (not modified).
        example_inputs: a tensor or tuple of tensors of the model's input shape (the batch size is the table's).
        budget: fraction of the dense latency, in (0, 1).
        lut: the model's latency table on the target (:func:`pybench.latency_table` or ``LatencyTable.load``);
            the timing runs on its backend, dtype, batch size and threads.
        criterion, data, round_to, min_channels, ignore, layers, max_ratio, normalize_by, criterion_kw: as
            :func:`pybench.prune`.
        rounds: how many plans at most (1: the table's plan, measured but not corrected).
        tolerance: the relative miss (measured / budget - 1) that ends the correction.
        device: where to time (default: the table's device type, e.g. "cuda" for the current GPU).
        target_ci, max_time_s, channels_last: each paired timing's, as :func:`pybench.measure.paired_latency`.

    Returns:
        (pruned model, its plan, a :class:`LatencyFit` with every round's predicted and measured ratio).
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds={rounds!r}: expected an int >= 1 (1: plan once and measure)")
    if not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance!r}: expected a fraction in (0, 1), e.g. 0.05")
    if not isinstance(lut, LatencyTable):
        raise TypeError(f"lut must be a LatencyTable (pb.latency_table or LatencyTable.load), got "
                        f"{type(lut).__name__}")
    key = lut.key
    dev = device or key.get("device", "cpu")
    lut.check(device=C.resolve_device(dev).type)  # a CPU table says nothing of a GPU
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    timing = {"device": dev, "dtype": key.get("dtype", "float32"), "batch_size": key.get("batch_size"),
              "threads": key.get("threads") if C.resolve_device(dev).type == "cpu" else None,
              "wrap": _wrap(key.get("backend", "eager")), "channels_last": channels_last}
    dense = copy.deepcopy(model).eval()
    graph = trace(dense, inputs)
    scores = score(dense, graph, criterion, data=data, **criterion_kw)
    plan_kw = {"round_to": round_to, "min_channels": min_channels, "ignore": ignore, "layers": layers,
               "max_ratio": max_ratio, "normalize_by": normalize_by}
    done: list[tuple[LatencyRound, nn.Module, Any, tuple]] = []
    b = float(budget)
    for _ in range(rounds):
        try:
            p = plan(graph, scores, latency_budget=b, lut=lut, **plan_kw)
        except BudgetUnreachableError as e:
            if not done:
                raise
            p = plan(graph, scores, latency_budget=min(e.least, 0.999), lut=lut, **plan_kw)
        counts = tuple(sorted((g.index, int(k.numel())) for g, k in p.keep.items()))
        if done and counts == done[-1][3]:
            break  # the correction asked for a budget the same fast steps meet: nothing new to measure
        pruned = apply(dense, p)
        r = paired_latency(dense, pruned, inputs, target_ci=target_ci, max_time_s=max_time_s, **timing)
        if r.speedup is None:
            raise RuntimeError(f"prune_to_latency: timing the plan for {b:.3f} failed: {r.error}")
        done.append((LatencyRound(b, float(p.predicted_latency), 1 / r.speedup, 1 / r.speedup_ci_high,
                                  1 / r.speedup_ci_low), pruned, p, counts))
        measured = done[-1][0].measured
        if abs(measured / budget - 1) <= tolerance:
            break
        b = min(max(_next_budget([d[0] for d in done], budget), 1e-3), 0.999)
    chosen = min(range(len(done)), key=lambda i: abs(done[i][0].measured - budget))
    fit = LatencyFit(float(budget), float(tolerance), tuple(d[0] for d in done), chosen)
    return done[chosen][1], done[chosen][2], fit
