"""pybench: structured filter pruning of CNNs and a harness that measures what it buys.

The public API (see DESIGN.md) is resolved lazily so that ``import pybench`` stays cheap and each name lives in the
module whose one job it is::

    import pybench as pb
    graph = pb.trace(model, example_inputs)
    pruned, plan = pb.prune(model, example_inputs, ratio=0.5, criterion="l1")
"""

from __future__ import annotations

import importlib
from typing import Any

from pybench import _moved

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_API: dict[str, tuple[str, str | None]] = {
    "ops": ("pybench.ops", None),
    "zoo": ("pybench.zoo", None),
    "measure": ("pybench.measure", None),
    "data": ("pybench.data", None),
    "train": ("pybench.train", None),
    "schedules": ("pybench.prune.schedules", None),
    "results": ("pybench.bench.results", None),
    "trace": ("pybench.prune.graph", "trace"),
    "ChannelGraph": ("pybench.prune.graph", "ChannelGraph"),
    "score": ("pybench.prune.criteria", "score"),
    "plan": ("pybench.prune.planning", "plan"),
    "PrunePlan": ("pybench.prune.planning", "PrunePlan"),
    "apply": ("pybench.prune.surgery", "apply"),
    "mask": ("pybench.prune.masking", "mask"),
    "prune": ("pybench.prune", None),  # the engine package, callable as pipeline.prune
    "PinnedChannelsWarning": ("pybench.prune.pipeline", "PinnedChannelsWarning"),
    "save": ("pybench.prune.serialize", "save"),
    "latency_table": ("pybench.bench.lut", "latency_table"),
    "prune_to_latency": ("pybench.bench.lut_fit", "prune_to_latency"),
    "LatencyTable": ("pybench.prune.lut", "LatencyTable"),
    "load": ("pybench.prune.serialize", "load"),
}

__all__ = sorted(_API) + ["__version__"]


_moved.install()  # old module paths (pybench.graph, pybench.runner, ...) still import, with a DeprecationWarning


def __getattr__(name: str) -> Any:
    if f"pybench.{name}" in _moved.MOVED:  # pb.graph, pb.runner, ...: the moved module, with its warning
        return importlib.import_module(f"pybench.{name}")
    try:
        module_name, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'pybench' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
