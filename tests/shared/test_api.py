"""The public API of DESIGN.md resolves to the right objects, whatever submodules were imported first."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pybench as pb
from pybench.prune import criteria


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
    for fn in ("trace", "score", "plan", "apply", "mask", "save", "load"):
        assert callable(getattr(pb, fn)) and not inspect.ismodule(getattr(pb, fn)), fn


def test_pb_prune_is_the_engine_package_and_calls_as_the_one_call_prune():
    import torch

    from pybench.prune import pipeline

    for info in pkgutil.walk_packages(pb.__path__, "pybench."):  # whatever was imported, pb.prune stays callable
        importlib.import_module(info.name)
    assert pb.prune is importlib.import_module("pybench.prune")
    assert inspect.signature(pb.prune) == inspect.signature(pipeline.prune)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    small, plan = pb.prune(model, x, ratio=0.5)
    again, _ = pipeline.prune(model, x, ratio=0.5)
    assert small[0].out_channels == again[0].out_channels == 4
    assert torch.equal(small(x), again(x))


def test_score_knows_every_criterion_of_the_design():
    design = {"l1", "l2", "aaws", "fpgm", "bn_scale", "act_mean", "act_std", "apoz", "taylor", "lfe", "random"}
    assert design <= set(criteria.CRITERIA)


def test_old_module_paths_still_import_the_moved_modules_with_a_warning():
    import sys
    import warnings

    from pybench import _moved

    for old, new in _moved.MOVED.items():
        sys.modules.pop(old, None)  # import it afresh, whatever imported it before
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
            attribute = getattr(pb, old.rpartition(".")[2])  # pb.graph, pb.runner, ... as before the move
        assert module is importlib.import_module(new) is attribute, old
        assert module.__name__ == module.__spec__.name == new, old  # one module, under its real name
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old
