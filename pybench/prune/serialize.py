"""``save(pruned, path)`` / ``load(path)``: a pruned model from a file alone, without unpickling code.

The file is a ``torch.save`` of plain data, readable by ``torch.load(weights_only=True)``::

    {"format": "pybench.pruned/1", "spec": "<json>", "state_dict": {name: tensor}}

``spec`` says how to rebuild the base model -- a zoo name and its kwargs (``model.pybench_spec``, set by
``pb.zoo.create``), or an importable ``"module:callable"`` with JSON kwargs for user models -- and lists every
module's size attributes (``in_channels``, ``out_channels``, ``groups``, ``num_features``, ``in_features``,
``normalized_shape``...). ``load`` rebuilds the base model, resizes each module to those attributes and to the
saved tensors' shapes (the timm ``_prune.py`` precedent), then loads the weights strictly.

Loading never imports code the file names: a base model from pybench's registry (zoo names, ``timm:NAME``,
``pybench.models`` plugins of installed packages) is rebuilt; a ``"module:callable"`` is refused unless the caller
trusts it by name (``load(path, trust=["mymodels:build_net"])``, or a package: ``trust=["mymodels"]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from pybench._torch_load import load_data

__all__ = ["load", "save"]

FORMAT = "pybench.pruned/1"
SIZE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features",
              "normalized_shape", "num_channels", "num_groups", "num_parameters")


def _base_spec(model: nn.Module, spec: dict | str | None, kwargs: dict | None) -> dict:
    if spec is None:
        spec = getattr(model, "pybench_spec", None)
        if spec is None:
            raise ValueError("save needs to know how to rebuild the base model: create it with pb.zoo.create (which "
                             "sets model.pybench_spec) or pass spec='package.module:callable' (and kwargs=...)")
    if isinstance(spec, str):
        if ":" not in spec:
            raise ValueError(f"spec must be 'package.module:callable', got {spec!r}")
        spec = {"callable": spec, "kwargs": dict(kwargs or {})}
    if not isinstance(spec, dict) or not ("name" in spec or "callable" in spec):
        raise ValueError(f"spec must be a dict with 'name' (zoo) or 'callable', and 'kwargs'; got {spec!r}")
    spec = {k: v for k, v in spec.items() if k in ("name", "callable", "kwargs")}
    spec.setdefault("kwargs", {})
    try:
        json.dumps(spec)
    except TypeError as exc:
        raise ValueError(f"the base model's spec must be JSON-serialisable: {exc}") from exc
    return spec


def _attrs(model: nn.Module) -> dict[str, dict[str, Any]]:
    out = {}
    for name, m in model.named_modules():
        names = (*SIZE_ATTRS, *getattr(m, "_pybench_size_attrs", ()))  # + split sizes surgery rewrote
        # instance attributes only: a property (timm's ConvNormAct.in_channels) follows what it reads
        values = {a: m.__dict__[a] for a in names if isinstance(m.__dict__.get(a), (int, tuple, list))}
        if values:
            out[name] = {"type": type(m).__name__,
                         "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}
    return out


def save(model: nn.Module, path: str | os.PathLike, spec: dict | str | None = None,
         kwargs: dict | None = None) -> None:
    """Write ``model`` (pruned or not) to ``path``.

    Args:
        model: made by ``pb.zoo.create`` (possibly pruned by ``pb.apply``), or any model with ``spec``.
        spec: how to rebuild the base model: ``"package.module:callable"`` (called with ``kwargs``) or a dict
            ``{"name": zoo name, "kwargs": {...}}``; defaults to ``model.pybench_spec``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    doc = {"base": _base_spec(model, spec, kwargs), "modules": _attrs(model)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "spec": json.dumps(doc), "state_dict": state}, path)


def _build_base(path: str | os.PathLike, base: Any, trust: Iterable[str]) -> nn.Module:
    from pybench import zoo

    name = base.get("name", base.get("callable")) if isinstance(base, dict) else None
    kwargs = base.get("kwargs", {}) if isinstance(base, dict) else None
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise ValueError(f"{path}: the base model's spec {base!r} is not {{'name': str, 'kwargs': dict}}; the file is "
                         "damaged or was not written by pb.save")
    if not zoo.from_registry(name) and not zoo.trusted(name, trust):
        raise PermissionError(f"{path} names the base-model builder {name!r}, code outside pybench's model registry; "
                              "loading would import and call it. Load it only if you trust it: "
                              f"pb.load(path, trust=[{name!r}]) (CLI: --trust {name})")
    return zoo.create(name, **kwargs)


def _read(path: str | os.PathLike, map_location: Any) -> dict:
    """The file's dict: plain data only (:func:`pybench._torch_load.load_data`), in pb.save's format."""
    blob = load_data(path, "a pybench model file", "; write the model with pb.save or `pybench prune --output`",
                     map_location)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pybench pruned-model file (expected format {FORMAT!r})")
    return blob


def _spec(path: str | os.PathLike, blob: dict) -> dict:
    """The JSON spec of a file, its shape checked: {"base": {...}, "modules": {name: {"type", "attrs"}}}."""
    try:
        doc = json.loads(blob.get("spec"))
    except (TypeError, ValueError):
        doc = None
    ok = isinstance(doc, dict) and isinstance(doc.get("modules"), dict) and isinstance(blob.get("state_dict"), dict)
    ok = ok and all(isinstance(e, dict) and isinstance(e.get("type"), str) and isinstance(e.get("attrs"), dict)
                    for e in doc["modules"].values())
    if not ok:
        raise ValueError(f"{path}: its spec or state dict is damaged (expected {{'base', 'modules'}} and a dict of "
                         "tensors); the file was not written by pb.save")
    return doc


def _check_size_attr(path: str | os.PathLike, name: str, m: nn.Module, key: str, value: Any) -> None:
    """A file sets only size attributes -- pybench's list, or one the rebuilt module already holds as an int or a
    sequence -- and only to ints or lists of ints."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    held = m.__dict__.get(key)
    known = key in SIZE_ATTRS or is_int(held) or isinstance(held, (tuple, list))
    if not known or not (is_int(value) or (isinstance(value, list) and all(is_int(v) for v in value))):
        raise ValueError(f"{path}: module {name!r}: {key!r} = {value!r} is not a size attribute pb.save writes; "
                         "the file is damaged or was not written by pb.save")


def _resize(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = dict(model.state_dict(keep_vars=True))
    for key, t in state.items():
        cur = own.get(key)
        if cur is None or tuple(cur.shape) == tuple(t.shape):
            continue
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        empty = torch.empty(t.shape, dtype=t.dtype)
        if isinstance(cur, nn.Parameter):
            setattr(owner, attr, nn.Parameter(empty, requires_grad=cur.requires_grad))
        else:
            owner.register_buffer(attr, empty, persistent=attr not in owner._non_persistent_buffers_set)


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu",
         trust: Iterable[str] = ()) -> nn.Module:
    """Rebuild the model saved by :func:`save` (eval mode); only tensors and JSON are read from the file.

    Args:
        trust: ``"module:callable"`` builders (or packages above them) that the file may name; any other
            builder outside pybench's model registry raises PermissionError instead of being imported.
    """
    if isinstance(trust, str):
        trust = (trust,)
    blob = _read(path, map_location)
    doc = _spec(path, blob)
    model = _build_base(path, doc["base"], trust)
    modules = dict(model.named_modules())
    for name, entry in doc["modules"].items():
        m = modules.get(name)
        if m is None or type(m).__name__ != entry["type"]:
            found = "missing" if m is None else type(m).__name__
            raise ValueError(f"{path}: module {name!r} should be a {entry['type']} but the rebuilt base model has "
                             f"{found}; the base model's code or kwargs changed since it was saved")
        for k, v in entry["attrs"].items():
            _check_size_attr(path, name, m, k, v)
            setattr(m, k, tuple(v) if isinstance(v, list) else v)
    _resize(model, blob["state_dict"])
    model.load_state_dict(blob["state_dict"], strict=True)
    model.pybench_spec = {"name": doc["base"].get("name", doc["base"].get("callable")),
                          "kwargs": doc["base"]["kwargs"]}
    return model.eval()
