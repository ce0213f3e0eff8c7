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

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_API: dict[str, tuple[str, str | None]] = {
    "ops": ("pybench.ops", None),
    "zoo": ("pybench.zoo", None),
    "measure": ("pybench.measure", None),
    "data": ("pybench.data", None),
    "train": ("pybench.train", None),
    "schedules": ("pybench.schedules", None),
    "results": ("pybench.results", None),
    "trace": ("pybench.graph", "trace"),
    "ChannelGraph": ("pybench.graph", "ChannelGraph"),
    "score": ("pybench.criteria", "score"),
    "plan": ("pybench.planning", "plan"),
    "PrunePlan": ("pybench.planning", "PrunePlan"),
    "apply": ("pybench.surgery", "apply"),
    "mask": ("pybench.masking", "mask"),
    "prune": ("pybench.pipeline", "prune"),
    "PinnedChannelsWarning": ("pybench.pipeline", "PinnedChannelsWarning"),
    "save": ("pybench.serialize", "save"),
    "load": ("pybench.serialize", "load"),
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
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
