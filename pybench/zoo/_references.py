"""Models nobody registered in the zoo: ``package.module:callable`` references and ``pybench.models`` plugins.

A reference names the user's own builder (``mymodels:build_net``, ``pkg.nets:Net`` -- a function or an
``nn.Module`` class). Resolving one imports code, so it is only ever done for a name the user typed (a suite, the
command line, ``pb.zoo.create``), never for a name read from a model file: :mod:`pybench.prune.serialize` refuses those
unless its caller trusts them by name (:func:`trusted`).

A package that ships models registers them under the ``pybench.models`` entry-point group::

    [project.entry-points."pybench.models"]
    mynet = "mypkg.models:build_mynet"

and ``mynet`` is then a zoo name like any other (installing the package is the act of trust). A builder may carry
``input_size`` (a tuple without the batch dim) as an attribute; otherwise (3, 224, 224) is assumed.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable
from functools import cache
from importlib import metadata

from torch import nn

from ._model_entry import Entry

__all__ = ["ModelReferenceError", "PLUGIN_GROUP", "is_reference", "reference_entry", "plugin_builders",
           "trusted"]

PLUGIN_GROUP = "pybench.models"
TIMM_PREFIX = "timm:"  # timm:NAME names timm's models: not a code reference
DEFAULT_INPUT_SIZE = (3, 224, 224)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_REFERENCE = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT}(?:\.{_IDENT})*)$")


class ModelReferenceError(ValueError):
    """A ``package.module:callable`` that is malformed, does not import, or does not build an ``nn.Module``."""


def is_reference(name: str) -> bool:
    """Whether ``name`` has the shape of a code reference (``module:callable``); ``timm:NAME`` is not one."""
    return isinstance(name, str) and ":" in name and not name.startswith(TIMM_PREFIX)


def _import(ref: str, module_name: str) -> object:
    # As uvicorn and celery do: a module beside the suite, in the folder pybench runs from, imports too.
    # (The console script, unlike ``python -m``, does not put the working folder on sys.path.)
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ModelReferenceError(f"model reference {ref!r}: module {module_name!r} does not import ({e}); it must "
                                  "be importable from the folder pybench runs in or from the installed packages"
                                  ) from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def resolve(ref: str) -> Callable[..., nn.Module]:
    """The callable ``ref`` names (imported, not yet called)."""
    m = _REFERENCE.match(ref) if isinstance(ref, str) else None
    if m is None:
        raise ModelReferenceError(f"model reference {ref!r} is not 'package.module:callable' (dotted Python names "
                                  "on both sides of one ':', e.g. 'mymodels:build_net')")
    module_name, attr = m.groups()
    obj = _import(ref, module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelReferenceError(f"model reference {ref!r}: {module_name!r} has no attribute {attr!r}"
                                      ) from None
    if not callable(obj):
        raise ModelReferenceError(f"model reference {ref!r} names a {type(obj).__name__}, not a function or "
                                  "class that builds an nn.Module")
    return obj


def _accepts(fn: Callable[..., object], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the common builder shape
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _default_classes(fn: Callable[..., object]) -> int | None:
    try:
        p = inspect.signature(fn).parameters.get("num_classes")
    except (TypeError, ValueError):
        return None
    return p.default if p is not None and isinstance(p.default, int) and not isinstance(p.default, bool) else None


def builder_entry(name: str, fn: Callable[..., object], family: str):
    """A zoo entry for a user builder: ``num_classes`` is passed only if the builder takes it, and what the
    builder returns is checked to be an ``nn.Module``."""
    takes_classes = _accepts(fn, "num_classes")
    default = _default_classes(fn)

    def build(num_classes: int | None = None, **kwargs: object) -> nn.Module:
        if takes_classes and num_classes is not None:
            kwargs["num_classes"] = num_classes
        elif num_classes is not None and num_classes != default:
            raise ModelReferenceError(f"model {name!r}: its builder takes no num_classes, so num_classes="
                                      f"{num_classes} cannot be honoured; leave num_classes unset")
        model = fn(**kwargs)
        if not isinstance(model, nn.Module):
            raise ModelReferenceError(f"model {name!r}: its builder returned {type(model).__name__}, not a "
                                      "torch.nn.Module")
        return model

    size = getattr(fn, "input_size", None)
    size = tuple(size) if isinstance(size, (tuple, list)) and all(isinstance(v, int) for v in size) else None
    return Entry(name, build, size or DEFAULT_INPUT_SIZE, default, family)


def reference_entry(ref: str):
    """The zoo entry of a ``package.module:callable`` reference (imports its module)."""
    return builder_entry(ref, resolve(ref), "reference")


@cache
def plugin_builders() -> dict[str, metadata.EntryPoint]:
    """The ``pybench.models`` entry points of the installed packages, by name (listed, not loaded)."""
    return {ep.name: ep for ep in metadata.entry_points(group=PLUGIN_GROUP)}


def plugin_entry(name: str):
    """The zoo entry of plugin ``name`` (loads its entry point), or None if no installed package ships it."""
    ep = plugin_builders().get(name)
    if ep is None:
        return None
    try:
        fn = ep.load()
    except Exception as e:  # a broken plugin names itself instead of breaking the zoo
        raise ModelReferenceError(f"model {name!r}: the {PLUGIN_GROUP} entry point {ep.value!r} does not load "
                                  f"({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise ModelReferenceError(f"model {name!r}: the {PLUGIN_GROUP} entry point {ep.value!r} is a "
                                  f"{type(fn).__name__}, not a builder")
    return builder_entry(name, fn, "plugin")


def trusted(ref: str, trust: Iterable[str]) -> bool:
    """Whether ``trust`` allows ``ref``: it lists ``ref`` itself, or a module or package above its callable
    (``"mypkg"`` trusts ``mypkg.nets:Net``)."""
    module_name = ref.partition(":")[0]
    for t in trust:
        if t == ref or (":" not in t and (module_name == t or module_name.startswith(t + "."))):
            return True
    return False
