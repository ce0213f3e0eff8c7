"""Old import paths of the modules that moved into pybench.prune and pybench.bench keep working, with a warning.

``import pybench.graph`` (and ``from pybench import runner``, ...) returns the very module that now lives at its
new path, so objects and isinstance checks are the same either way; the DeprecationWarning names the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "pybench.graph": "pybench.prune.graph",
    "pybench.criteria": "pybench.prune.criteria",
    "pybench.criteria_data": "pybench.prune.criteria.data_driven",
    "pybench.planning": "pybench.prune.planning",
    "pybench.surgery": "pybench.prune.surgery",
    "pybench.masking": "pybench.prune.masking",
    "pybench.schedules": "pybench.prune.schedules",
    "pybench.serialize": "pybench.prune.serialize",
    "pybench.pipeline": "pybench.prune.pipeline",
    "pybench.suite": "pybench.bench.suite",
    "pybench.runner": "pybench.bench.driver",
    "pybench.worker": "pybench.bench.worker",
    "pybench.executors": "pybench.bench.executors",
    "pybench.results": "pybench.bench.results",
    "pybench.report": "pybench.bench.report",
    "pybench.compare": "pybench.bench.compare",
    "pybench.shard": "pybench.bench.shard",
    "pybench.opsbench": "pybench.bench.opsbench",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old path will go)", DeprecationWarning,
                      stacklevel=2)
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # already executed under its new name; the import system set the alias's __spec__ on it: put its own back
        module.__spec__ = self._specs.pop(module.__spec__.name)


def install() -> None:
    """Put the alias finder on sys.meta_path (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
