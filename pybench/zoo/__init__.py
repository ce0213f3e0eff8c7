"""The model zoo: every model pybench benchmarks, made by name.

    import pybench as pb
    model = pb.zoo.create("cifar_resnet20", num_classes=10)
    pb.zoo.names()              # all names, sorted: torchvision's classifiers + the pybench models
    pb.zoo.input_size("resnet50")   # (3, 224, 224)

Names: every ``torchvision.models.list_models(module=torchvision.models)`` classifier (random init, torchvision's
``weights=None``), plus ``cifar_resnet20/32/56/110``, ``cifar_vgg16``, ``mobilenet_v1`` and ``xor_mlp``, and
``timm:NAME`` for any of timm's models (the ``[timm]`` extra; random init, never downloaded; not listed by
:func:`names`, which would mean a thousand more), the models installed packages ship under the ``pybench.models``
entry-point group (listed), and ``package.module:callable`` for the user's own builder (a function or an
``nn.Module`` class; imported from the installed packages or the working folder).

Weights only ever come from a local file (``weights="path/to/state_dict.pt"``), never from a download.
Each model carries ``model.pybench_spec = {"name": ..., "kwargs": {...}}`` (JSON-able, with ``num_classes``
and every architecture kwarg) such that ``create(spec["name"], **spec["kwargs"])`` rebuilds the same
architecture; the weights path, if any, is kept apart in ``spec["weights"]`` and is not needed to rebuild.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pybench._torch_load import load_data

from . import cifar_resnet, cifar_vgg, mobilenet_v1, xor_mlp  # noqa: F401  (importing registers them)
from ._references import PLUGIN_GROUP, trusted
from ._registry import TIMM_PREFIX, Entry, MissingExtraError, ModelReferenceError, all_names, from_registry, get, known

__all__ = ["MissingExtraError", "ModelReferenceError", "PLUGIN_GROUP", "TIMM_PREFIX", "check_kwargs", "create",
           "from_registry", "known", "names", "input_size", "load_weights", "trusted"]


def names() -> list[str]:
    """All model names ``create`` accepts, sorted."""
    return all_names()


def _entry(name: str) -> Entry:
    if not isinstance(name, str):
        raise TypeError(f"zoo: name must be a str, got {type(name).__name__}")
    entry = get(name)
    if entry is None and name.startswith(TIMM_PREFIX):
        import timm

        close = difflib.get_close_matches(name[len(TIMM_PREFIX):], timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(TIMM_PREFIX + c) for c in close)}?" if close else ""
        raise ValueError(f"zoo: timm has no model {name[len(TIMM_PREFIX):]!r}{hint} (timm.list_models() lists "
                         "them)")
    if entry is None:
        close = difflib.get_close_matches(name, all_names(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"zoo: unknown model name {name!r}{hint} (pybench.zoo.names() lists all "
                         f"{len(all_names())})")
    return entry


def input_size(name: str | nn.Module) -> tuple[int, ...]:
    """Default input size without the batch dim: (3, 32, 32) for the cifar models, (3, 299, 299) for inception_v3,
    (2,) for xor_mlp, (3, 224, 224) otherwise.

    ``name`` may also be a model made by :func:`create`: its ``pybench_spec`` names it, and an ``image_size`` it
    was built with (torchvision's ViTs take one) overrides the default.
    """
    if isinstance(name, nn.Module):
        spec = getattr(name, "pybench_spec", None)
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError("zoo: input_size(model) needs a model made by pybench.zoo.create (it reads "
                             "model.pybench_spec); pass the model's zoo name instead")
        size = _entry(spec["name"]).input_size
        image_size = spec.get("kwargs", {}).get("image_size")
        return (size[0], image_size, image_size) if isinstance(image_size, int) and len(size) == 3 else size
    return _entry(name).input_size


def create(name: str, num_classes: int | None = None, weights: str | os.PathLike | None = None,
           **kwargs: Any) -> nn.Module:
    """Build model ``name`` with random init (or ``weights`` from a local state-dict file).

    Args:
        name: one of :func:`names`; an unknown name raises ValueError listing close matches.
        num_classes: classifier outputs; None takes the model's default (1000 for torchvision and mobilenet_v1,
            10 for the cifar models, 2 for xor_mlp).
        weights: path to a local file holding a state dict (``torch.save(model.state_dict(), path)``), loaded with
            ``torch.load(weights_only=True)``; missing files and mismatched keys or shapes raise clear errors.
        **kwargs: architecture arguments of the builder (e.g. ``shortcut="A"`` for cifar_resnet*, ``hidden=10``
            for xor_mlp, ``aux_logits=False`` for torchvision's googlenet). They must be JSON-serialisable.

    Returns:
        The model in train mode, with ``model.pybench_spec`` set.
    """
    entry = _entry(name)
    if num_classes is None:
        num_classes = entry.default_num_classes
    takes_none = num_classes is None and entry.family in ("reference", "plugin")  # a builder without num_classes
    if not takes_none and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"zoo: num_classes must be a positive int, got {num_classes!r}")
    spec_kwargs = _resolved_kwargs(name, entry, num_classes, kwargs)
    try:
        spec_kwargs = json.loads(json.dumps(spec_kwargs))
    except (TypeError, ValueError) as e:
        raise TypeError(f"zoo: kwargs of {name!r} must be JSON-serialisable so the model can be rebuilt from "
                        f"model.pybench_spec ({e}); got {kwargs!r}") from None
    try:
        model = entry.builder(num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise TypeError(f"zoo: bad arguments for {name!r}: {e}") from e
    if weights is not None:
        load_weights(model, weights)
    model.pybench_spec = {"name": name, "kwargs": spec_kwargs}
    if weights is not None:
        model.pybench_spec["weights"] = os.fspath(weights)
    return model


def check_kwargs(name: str, kwargs: dict[str, Any], num_classes: int | None = None) -> None:
    """Raise TypeError naming the bad argument when model ``name``'s builder does not take ``kwargs`` -- by its
    signature, or (for builders taking ``**kwargs``, as torchvision's and timm's do) by building it on the meta
    device, which allocates nothing."""
    entry = _entry(name)
    classes = entry.default_num_classes if num_classes is None else num_classes
    sig = inspect.signature(entry.builder)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        _resolved_kwargs(name, entry, classes, kwargs)
        return
    try:
        with torch.device("meta"):
            entry.builder(num_classes=classes, **kwargs)
    except TypeError as e:
        raise TypeError(f"zoo: bad arguments for {name!r}: {e}") from None


def _resolved_kwargs(name: str, entry: Entry, num_classes: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """num_classes + kwargs, with the builder's defaults filled in where its signature lists them all, so a
    saved spec rebuilds the same architecture even if a default changes later."""
    sig = inspect.signature(entry.builder)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):  # torchvision: defaults live deeper
        return {"num_classes": num_classes, **kwargs}
    try:
        bound = sig.bind(num_classes=num_classes, **kwargs)
    except TypeError as e:
        valid = ", ".join(sig.parameters)
        raise TypeError(f"zoo: bad arguments for {name!r}: {e}; it accepts {valid}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state dict from the local file ``path`` into ``model`` (strict: same keys and shapes).

    Accepts a bare state dict or a checkpoint dict holding one under ``"state_dict"`` or ``"model"``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"zoo: weights file {path!r} {what}; weights= takes a local file written by "
                                "torch.save(model.state_dict(), path) (pybench never downloads weights)")
    state = load_data(path, "a weights file", "; weights= takes a state dict written by "
                      "torch.save(model.state_dict(), path)")
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"zoo: weights file {path!r} does not hold a state dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise ValueError(f"zoo: weights file {path!r} does not match the model: {'; '.join(parts)}. Create the "
                         "model with the same name, num_classes and kwargs as the one that was saved")
    model.load_state_dict(state, strict=True)
    return model
