"""A structural copy of a module tree: what ``copy.deepcopy`` gives, at a fraction of its cost.

``copy.deepcopy`` of a network walks every attribute through ``__reduce_ex__`` and copies about ten empty hook
dictionaries per module; for mobilenet_v2 that is 17 ms, ten times the cost of cloning its weights. Surgery needs
a new model with some tensors replaced, so :func:`clone_module` rebuilds each plain ``nn.Module`` from its
``__dict__`` (new dictionaries of parameters, buffers and children; immutable values shared, empty containers
made new, anything else deep-copied) and clones each tensor. A module whose class customises copying or pickling
(``__deepcopy__``, ``__reduce_ex__``, ``__getstate__`` / ``__setstate__`` of its own, e.g. RNNs or fx
GraphModules) is handed to ``copy.deepcopy`` with the same memo, so tensors already replaced stay replaced.
The walk runs in C (``pybench._C.clone_module``) where the extension is built; :func:`_clone_py` is its reference.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["clone_module"]

_ATOMIC = frozenset({int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format})
_CONTAINERS = frozenset({dict, OrderedDict, set, list})
_plain_cache: dict[type, bool] = {}
# __setstate__ overrides that only fill attributes missing from old pickles: irrelevant to a copy of __dict__.
# nn.Module's own is also checked as it is now: torch.compile replaces it (generation tagging) once it has run.
_BENIGN_SETSTATE = {nn.Module.__setstate__, nn.modules.conv._ConvNd.__setstate__,
                    nn.MultiheadAttention.__setstate__, nn.TransformerEncoderLayer.__setstate__,
                    nn.TransformerDecoderLayer.__setstate__}


def _is_plain(cls: type) -> bool:
    """True when ``cls`` copies like ``nn.Module`` itself (no copy / pickle hooks of its own)."""
    plain = _plain_cache.get(cls)
    if plain is None:
        plain = (getattr(cls, "__deepcopy__", None) is None and cls.__reduce_ex__ is object.__reduce_ex__
                 and cls.__reduce__ is object.__reduce__ and cls.__getstate__ is nn.Module.__getstate__
                 and (cls.__setstate__ in _BENIGN_SETSTATE or cls.__setstate__ is nn.Module.__setstate__))
        _plain_cache[cls] = plain
    return plain


def _tensor(t: torch.Tensor | None, memo: dict[int, Any]) -> Any:
    if t is None:
        return None
    got = memo.get(id(t))
    if got is not None:
        return got
    if type(t) is nn.Parameter and not t.__dict__:
        new: Any = nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
    elif type(t) is torch.Tensor and not t.requires_grad:
        new = t.clone()
    else:  # tensor subclasses, attributes on a parameter, ...
        return copy.deepcopy(t, memo)
    memo[id(t)] = new
    return new


def clone_module(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """A deep copy of ``module``; tensors whose ``id`` is a key of ``memo`` are replaced by its value."""
    memo = {} if memo is None else memo
    if _clone_c is not None:  # the same walk in C: Python spends a few microseconds a module on it
        return _clone_c(module, memo, _plain_cache, _is_plain, _tensor, copy.deepcopy, _ATOMIC, _CONTAINERS, _clone_py)
    return _clone_py(module, memo)


def _clone_py(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """The walk in Python: the reference of ``pybench._C.clone_module``, and its way with a module whose
    ``__dict__`` is not laid out as usual."""
    got = memo.get(id(module))
    if got is not None:
        return got
    cls = type(module)
    if not _is_plain(cls):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    src = module.__dict__
    state: dict[str, Any] = {}
    # tensors first: other attributes (lists of weights, bound hooks) then find their copies in the memo
    params, buffers, children = src["_parameters"], src["_buffers"], src["_modules"]
    state["_parameters"] = type(params)((k, _tensor(v, memo)) for k, v in params.items())
    state["_buffers"] = type(buffers)((k, _tensor(v, memo)) for k, v in buffers.items())
    state["_modules"] = type(children)((k, None if c is None else clone_module(c, memo)) for k, c in children.items())
    for k, v in src.items():
        if k in state:
            continue
        t = type(v)
        if t in _ATOMIC or t is tuple and all(type(x) in _ATOMIC for x in v):
            state[k] = v
        elif t in _CONTAINERS and not v:
            state[k] = t()
        else:
            state[k] = copy.deepcopy(v, memo)
    object.__setattr__(new, "__dict__", state)
    return new


def _load_clone_c() -> Callable[..., nn.Module] | None:
    try:
        from pybench._C import clone_module as clone_c
    except ImportError:  # no extension, or one built before it had the walk: the Python one
        return None
    return clone_c


_clone_c = _load_clone_c()
