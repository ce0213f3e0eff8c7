"""pybench.prune: the pruning engine — trace a model into channel groups, score, plan, cut, mask, save.

Rooms: :mod:`.graph` (tracers, channel rules, slots), :mod:`.criteria` (filter scores), :mod:`.planning` (which
channels go), :mod:`.surgery` (the smaller dense model), :mod:`.masking` (the same cut as zeros, to prove it),
:mod:`.schedules` (one-shot, iterative and the papers' schedules), :mod:`.serialize` (pb.save / pb.load) and
:mod:`.pipeline` (the one-call ``prune``). The engine imports nothing of :mod:`pybench.bench` or
:mod:`pybench.cli`; it may use the shared rooms (:mod:`pybench.ops`, :mod:`pybench.measure`, :mod:`pybench.train`,
:mod:`pybench.zoo`).

The package is also the public function: ``pybench.prune(model, example_inputs, ratio=0.5, criterion="l1")`` is
:func:`pybench.prune.pipeline.prune` (``pb.prune`` was a function before the engine became a package of that name,
so calling the package keeps every caller working).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """The engine package, callable as :func:`pybench.prune.pipeline.prune`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pybench.prune.pipeline import prune

        return prune(*args, **kwargs)


# what the harness reads of the engine besides pybench's API and the criteria / schedules registries
_FACE = {"NORMALIZATIONS": "pybench.prune.planning", "pin_summary": "pybench.prune.pipeline",
         # latency tables: the harness measures them, the engine plans with them
         "LatencyTable": "pybench.prune.lut", "LayerCost": "pybench.prune.lut", "LayerDim": "pybench.prune.lut",
         "LutMismatchError": "pybench.prune.lut", "BudgetUnreachableError": "pybench.prune.budget",
         "fit_floor": "pybench.prune.lut",
         "graph_signature": "pybench.prune.lut", "trace": "pybench.prune.graph", "plan": "pybench.prune.planning",
         "apply": "pybench.prune.surgery", "shrink_module": "pybench.prune.surgery", "PRUNERS": "pybench.prune.surgery"}


def __getattr__(name: str) -> Any:
    if name in _FACE:
        import importlib

        return getattr(importlib.import_module(_FACE[name]), name)
    if name == "__signature__":  # inspect.signature(pb.prune) shows prune's own parameters
        import inspect

        from pybench.prune.pipeline import prune

        return inspect.signature(prune)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallablePackage
