"""Latency tables: what each prunable group's channel count costs on one device, backend, dtype and batch size.

A :class:`LatencyTable` holds, for every layer whose channels the trace slices (convolutions, linears, norms), its
dense time and two staircases measured in isolation on the target (:func:`pybench.latency_table` builds it, in the
harness): the layer's time relative to dense as its output channels vary (inputs dense), and as its input channels
vary (outputs dense); a depthwise conv or a norm, whose in and out are one count, has one. A layer's time at
``(c_in, c_out)`` is ``dense_ms * r_in(c_in) * r_out(c_out)`` (separable, as a convolution's work is
``c_in * c_out``), each ``r`` that of the next sampled count up, so the steps of the hardware's tiles stay;
the part ``f`` of a layer's time that no channel count removes (its call's fixed cost) stays out of the product,
``r = f + (r_in - f) (r_out - f) / (1 - f)``, with ``f`` fitted to a third sweep of both counts together.
Each dimension knows which groups' channels it holds (a concat's input holds several), so a plan's kept counts give
every layer's size. Everything not measured (activations, additions, pooling, the framework's per-op cost) is
``rest_ms + rest_per_volume * V``, V the layers' output volume: two whole-model measurements (dense, and every
group at half, paired) fix both terms.

The table is data: JSON of numbers and names, loaded without importing or calling anything it names, and checked
against the graph it is used with (same parameters, same groups) and against the key the user asks for.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["FORMAT", "KEY_FIELDS", "LatencyTable", "LayerCost", "LayerDim", "LutMismatchError", "fit_floor",
           "graph_signature", "joint_ratio"]

FORMAT = "pybench-latency-table/1"
KEY_FIELDS = ("device", "backend", "dtype", "batch_size", "pybench", "torch")


class LutMismatchError(ValueError):
    """A latency table used for another device, backend, dtype, batch size, version or model than its own."""


@dataclass
class LayerDim:
    """One channel dimension of a layer: ``size`` dense, ``fixed`` indices no group holds (pinned channels),
    ``groups`` {group index: indices of this dimension in that group}; ``counts`` / ``ratios`` the sampled
    staircase (time at that count / dense time, the dense count's ratio 1)."""

    size: int
    fixed: int
    groups: dict[int, int]
    counts: list[int]
    ratios: list[float]

    def ratio(self, count: float) -> float:
        """Time relative to dense at ``count`` channels: that of the least sampled count at or above it (a count
        between samples costs what the next step costs: never optimistic), proportional below the least."""
        c = self.counts
        if count >= c[-1]:
            return self.ratios[-1]
        if count <= c[0]:
            return self.ratios[0] * max(count, 0.0) / c[0]
        return self.ratios[bisect.bisect_left(c, count - 1e-9)]


@dataclass
class LayerCost:
    """One measured layer: its qualified ``name``, ``type``, dense time ``ms`` (all its calls in one forward),
    ``per_channel`` output elements per output channel (for the unmeasured ops' share), and its dimensions:
    ``out`` and ``in`` (``tied``: one count for both, ``out`` holds it)."""

    name: str
    type: str
    ms: float
    per_channel: int
    out: LayerDim | None = None
    inp: LayerDim | None = None
    tied: bool = False
    floor: float = 0.0  # the fixed share f of the layer's time (fitted on the joint sweep)
    joint: list[list[float]] = field(default_factory=list)  # [c_in, c_out, ratio] measured with both counts cut


def joint_ratio(r_in: float, r_out: float, floor: float) -> float:
    """A layer's time ratio with both counts cut, from each sweep's ratio and its fixed share ``floor``."""
    f = min(max(floor, 0.0), 0.99)
    return f + (r_in - f) * (r_out - f) / (1 - f)


def fit_floor(layer: LayerCost) -> float:
    """The fixed share that best explains ``layer.joint`` (least squares over a grid); 0 without joint points."""
    if not layer.joint or layer.out is None or layer.inp is None:
        return 0.0
    top = min(layer.out.ratios[0], layer.inp.ratios[0], 0.99)
    grid = np.linspace(0.0, max(top, 0.0), 100)
    pts = [(layer.inp.ratio(ci), layer.out.ratio(co), r) for ci, co, r in layer.joint]
    err = [sum((joint_ratio(a, b, f) - r) ** 2 for a, b, r in pts) for f in grid]
    return float(grid[int(np.argmin(err))])


def _dim_size(d: LayerDim | None, counts: Mapping[int, float], sizes: Mapping[int, int]) -> float | None:
    if d is None:
        return None
    return d.fixed + sum(n * counts.get(g, sizes[g]) / sizes[g] for g, n in d.groups.items())


def graph_signature(graph: Any) -> tuple[str, list[int]]:
    """(hash of the traced parameters' names and shapes, the groups' sizes in order): what a table is for."""
    h = hashlib.sha256(json.dumps(graph.fingerprint).encode()).hexdigest()[:16]
    return h, [int(g.size) for g in graph.groups]


@dataclass
class LatencyTable:
    """Per-layer costs of one model on one target; see the module's docstring. ``key``: device, backend, dtype,
    batch_size, pybench and torch versions (plus informative fields such as the CPU's name and threads);
    ``model``: the graph's signature; ``dense_ms``: the whole model's measured latency; ``layers_ms``: the sum of
    the layers' isolated dense times; ``rest_ms`` / ``rest_per_volume``: the unmeasured ops' fitted cost."""

    key: dict[str, Any]
    model: dict[str, Any]
    dense_ms: float
    layers_ms: float
    layers: list[LayerCost]
    rest_ms: float = 0.0
    rest_per_volume: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    # -- prediction -------------------------------------------------------------------------------------------
    def _sizes(self) -> dict[int, int]:
        return dict(enumerate(self.model["groups"]))

    def layer_ms(self, layer: LayerCost, counts: Mapping[int, float], sizes: Mapping[int, int]) -> tuple[float, float]:
        """(time in ms, output elements) of ``layer`` when each group ``g`` keeps ``counts[g]`` (else all)."""
        out = _dim_size(layer.out, counts, sizes)
        r_out = 1.0 if layer.out is None else layer.out.ratio(out)
        if layer.inp is None or layer.tied:
            r = r_out
        else:
            r_in = layer.inp.ratio(_dim_size(layer.inp, counts, sizes))
            if layer.out is None:
                r = r_in
            else:
                r = joint_ratio(r_in, r_out, layer.floor)
        return layer.ms * r, (out if out is not None else 0.0) * layer.per_channel

    def totals(self, counts: Mapping[int, float]) -> tuple[float, float]:
        """(the layers' summed time in ms, their output volume) when group ``g`` keeps ``counts[g]``."""
        sizes = self._sizes()
        total, volume = 0.0, 0.0
        for lay in self.layers:
            t, v = self.layer_ms(lay, counts, sizes)
            total += t
            volume += v
        return total, volume

    def model_ms(self, counts: Mapping[int, float]) -> float:
        """The model's predicted time in the table's own terms (layers plus the fitted rest; ``{}``: dense)."""
        total, volume = self.totals(counts)
        return total + self.rest_ms + self.rest_per_volume * volume

    def predict_ratio(self, counts: Mapping[int, float], dense: float | None = None) -> float:
        """Predicted latency relative to the dense model when group ``g`` keeps ``counts[g]`` channels (a group
        not named keeps all); ``dense``: ``model_ms({})`` when the caller has it."""
        return max(self.model_ms(counts), 0.0) / (self.model_ms({}) if dense is None else dense)

    def predict_ms(self, counts: Mapping[int, float]) -> float:
        """Predicted latency in ms (``predict_ratio`` times the measured dense latency)."""
        return self.predict_ratio(counts) * self.dense_ms

    def group_curve(self, group: int, counts: list[int] | None = None) -> tuple[list[int], list[float]]:
        """The model's predicted latency ratio as group ``group`` alone keeps each of ``counts`` (default: every
        count from 1 to its size): the staircase of that group."""
        n = self.model["groups"][group]
        counts = list(range(1, n + 1)) if counts is None else counts
        dense = self.model_ms({})
        return counts, [self.predict_ratio({group: c}, dense) for c in counts]

    # -- checks ---------------------------------------------------------------------------------------------------
    def check(self, graph: Any = None, **key: Any) -> None:
        """Raise :class:`LutMismatchError` when ``key`` (device, backend, dtype, batch_size, ...; None values are
        not checked) or ``graph`` (its parameters and groups) differ from the table's own."""
        for k, v in key.items():
            if v is None:
                continue
            have = self.key.get(k)
            if str(have) != str(v):
                raise LutMismatchError(f"latency table is for {k}={have!r}, not {v!r}: measure a table for this "
                                       f"target (pb.latency_table(..., {k}={v!r}) or pybench lut)")
        if graph is not None:
            fp, groups = graph_signature(graph)
            if groups != list(self.model["groups"]):
                raise LutMismatchError(f"latency table is for another model: its {len(self.model['groups'])} groups "
                                       f"(sizes {self.model['groups'][:6]}...) differ from this graph's "
                                       f"{len(groups)} ({groups[:6]}...); measure a table of this model")
            if fp != self.model["fingerprint"]:
                raise LutMismatchError("latency table is for another model: its parameters' names or shapes differ "
                                       "from this graph's; measure a table of this model")

    # -- storage --------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = FORMAT
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON (atomically: a partial file never replaces a good one)."""
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, d: Any, where: str = "latency table") -> LatencyTable:
        """Validate and build a table from plain data (numbers, strings, lists, dicts only)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{where}: not a pybench latency table (format {got!r}, expected {FORMAT!r})")
        try:
            key, model = dict(d["key"]), dict(d["model"])
            missing = [k for k in KEY_FIELDS if k not in key]
            if missing or "fingerprint" not in model or "groups" not in model:
                raise ValueError(f"key or model lacks {missing or ['fingerprint / groups']}")
            model["groups"] = [int(g) for g in model["groups"]]
            layers = [_layer(x) for x in d["layers"]]
            table = cls(key, model, _pos(d["dense_ms"]), _pos(d["layers_ms"]), layers, _finite(d.get("rest_ms", 0)),
                        _finite(d.get("rest_per_volume", 0)), dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: malformed latency table ({type(e).__name__}: {e})") from None
        n = len(table.model["groups"])
        for lay in layers:
            for dim in (lay.out, lay.inp):
                if dim is not None and any(not 0 <= g < n for g in dim.groups):
                    raise ValueError(f"{where}: layer {lay.name} names a group outside the table's {n}")
        return table

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table saved by :meth:`save` (plain JSON: nothing in it is imported or called)."""
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"latency table {os.fspath(path)!r} does not exist; measure one with "
                                    "pybench lut MODEL --out FILE") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"latency table {os.fspath(path)!r} is not JSON: {e}") from None
        return cls.from_dict(d, where=f"latency table {os.fspath(path)!r}")


def _pos(x: Any) -> float:
    v = float(x)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"expected a time >= 0, got {x!r}")
    return v


def _finite(x: Any) -> float:
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {x!r}")
    return v


def _dim(d: Any) -> LayerDim | None:
    if d is None:
        return None
    counts = [int(c) for c in d["counts"]]
    ratios = [_pos(r) for r in d["ratios"]]
    if not counts or len(counts) != len(ratios) or counts != sorted(set(counts)) or counts[0] < 1:
        raise ValueError("a dimension's counts must be increasing positive ints, one ratio each")
    return LayerDim(int(d["size"]), int(d["fixed"]), {int(g): int(n) for g, n in dict(d["groups"]).items()},
                    counts, ratios)


def _layer(x: Any) -> LayerCost:
    joint = [[float(v) for v in p] for p in x.get("joint", [])]
    if any(len(p) != 3 for p in joint):
        raise ValueError("a layer's joint points are [c_in, c_out, ratio]")
    return LayerCost(str(x["name"]), str(x["type"]), _pos(x["ms"]), int(x["per_channel"]), _dim(x.get("out")),
                     _dim(x.get("inp")), bool(x.get("tied", False)), min(_pos(x.get("floor", 0.0)), 0.99), joint)
