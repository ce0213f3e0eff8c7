"""The public API of DESIGN.md resolves to the right objects, whatever submodules were imported first."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pybench as pb
from pybench import criteria


def test_every_public_name_resolves_after_all_submodules_are_imported():
    # Importing a submodule binds it as a package attribute: a module named like a public function would shadow it.
    for info in pkgutil.walk_packages(pb.__path__, "pybench."):
        importlib.import_module(info.name)
    for name, (module, attr) in pb._API.items():
        value = getattr(pb, name)
        if attr is None:
            assert inspect.ismodule(value), name
        else:
            assert value is getattr(importlib.import_module(module), attr), name
    for fn in ("trace", "score", "plan", "apply", "mask", "prune", "save", "load"):
        assert callable(getattr(pb, fn)) and not inspect.ismodule(getattr(pb, fn)), fn


def test_score_knows_every_criterion_of_the_design():
    design = {"l1", "l2", "aaws", "fpgm", "bn_scale", "act_mean", "act_std", "apoz", "taylor", "lfe", "random"}
    assert design <= set(criteria.CRITERIA)
