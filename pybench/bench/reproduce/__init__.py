"""``pybench reproduce NAME``: the seed papers' experiments at CPU scale, each over several seeds, written as a
table (Markdown + JSON) beside the paper's own numbers.

A reproduction is a function ``(seeds, progress) -> Reproduction`` filed in :data:`REPRODUCTIONS`; adding one is
one module that registers itself here.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from pybench._registry import Registry
from pybench.bench.reproduce.table import Reproduction

__all__ = ["REPRODUCTIONS", "Reproduction", "names", "run"]

REPRODUCTIONS: Registry = Registry("reproduction")
_MODULES = ("xor", "counts")  # each registers its reproductions on import


def names() -> list[str]:
    """The reproductions ``pybench reproduce`` knows."""
    _load()
    return sorted(REPRODUCTIONS)


def _load() -> None:
    for m in _MODULES:
        importlib.import_module(f"pybench.bench.reproduce.{m}")


def run(name: str, seeds: int = 3, out: str | Path | None = None, progress: bool = False) -> Reproduction:
    """Run reproduction ``name`` over seeds 0 .. ``seeds - 1``; with ``out``, write ``NAME.md`` and ``NAME.json``
    there. ShrinkBench's minimum is 3 seeds (mean +- std needs them)."""
    _load()
    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r}; known: {', '.join(sorted(REPRODUCTIONS))}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 3:
        raise ValueError(f"seeds must be an integer >= 3 (a mean +- std and a paired test over seeds need them), "
                         f"got {seeds!r}")
    folder = None if out is None else Path(out)
    if folder is not None:  # before the work: an unwritable folder must not cost the run
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "not writable", str(folder))
    rep = REPRODUCTIONS[name](seeds, progress)
    if folder is not None:
        (folder / f"{name}.md").write_text(rep.markdown())
        (folder / f"{name}.json").write_text(json.dumps(rep.to_dict(), indent=1) + "\n")
    return rep
