"""Name -> builder registry of the model zoo (timm-style: one file per family registers its builders here).

A builder is a plain function ``fn(num_classes=..., **kwargs) -> nn.Module``. Families register theirs with
:func:`register` when :mod:`pybench.zoo` imports them; torchvision's classification models are added lazily
(listing them imports torchvision.models, which is slow enough to keep out of ``import pybench.zoo``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._model_entry import Builder, Entry
from ._references import TIMM_PREFIX, ModelReferenceError, is_reference, plugin_builders, plugin_entry, reference_entry

__all__ = ["Entry", "MissingExtraError", "ModelReferenceError", "TIMM_PREFIX", "register", "get", "known",
           "from_registry", "all_names"]

_ENTRIES: dict[str, Entry] = {}
_OTHERS: dict[str, Entry | None] = {}  # timm:NAME and package.module:callable, resolved once
_torchvision_loaded = False


def register(name: str, *, input_size: tuple[int, ...], default_num_classes: int,
             family: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn`` under ``name``. Registering a name twice is a programming error."""

    def deco(fn: Builder) -> Builder:
        if name in _ENTRIES:
            raise ValueError(f"zoo: model name {name!r} is registered twice")
        _ENTRIES[name] = Entry(name, fn, tuple(input_size), default_num_classes, family)
        return fn

    return deco


def _ensure_torchvision() -> None:
    global _torchvision_loaded
    if not _torchvision_loaded:
        from . import torchvision_models

        for name, input_size, builder in torchvision_models.models():
            if name not in _ENTRIES:  # a pybench model of the same name wins (none today)
                register(name, input_size=input_size, default_num_classes=1000, family="torchvision")(builder)
        _torchvision_loaded = True


class MissingExtraError(ImportError):
    """A model family whose package is an optional extra that is not installed."""


def _timm_entry(name: str) -> Entry | None:
    """``timm:NAME``: timm's model NAME with random init (``pretrained=False``: pybench never downloads), its
    default input size from timm's pretrained config; None when timm has no such model."""
    try:
        import timm
    except ImportError:
        raise MissingExtraError(f"zoo: {name!r} needs timm, which is not installed: pip install 'pybench[timm]' "
                                "(or pip install timm)") from None
    arch = name[len(TIMM_PREFIX):]
    if arch not in timm.list_models():
        return None
    cfg = timm.models.get_pretrained_cfg(arch)
    size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    classes = int(getattr(cfg, "num_classes", None) or 1000)

    def build(num_classes: int = classes, **kwargs: object) -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)

    return Entry(name, build, size, classes, "timm")


def get(name: str) -> Entry | None:
    """The entry for ``name``, or None if no such model exists.

    ``timm:NAME`` names timm's models (raises :class:`MissingExtraError` when timm is not installed); a
    ``package.module:callable`` reference imports its module (raises :class:`ModelReferenceError` when it does not
    import or names no callable); a ``pybench.models`` entry point of an installed package is loaded by its name.
    """
    if name not in _ENTRIES:
        if name.startswith(TIMM_PREFIX) or is_reference(name):  # cached apart: names() lists registered models
            if name not in _OTHERS:
                _OTHERS[name] = _timm_entry(name) if name.startswith(TIMM_PREFIX) else reference_entry(name)
            return _OTHERS[name]
        _ensure_torchvision()
        if name not in _ENTRIES and name in plugin_builders():
            _ENTRIES[name] = plugin_entry(name)
    return _ENTRIES.get(name)


def known(name: str) -> bool:
    """Whether ``name`` is a zoo model: a registered name, a plugin, an existing ``timm:NAME`` or an importable
    ``package.module:callable``."""
    return get(name) is not None


def from_registry(name: str) -> bool:
    """Whether ``name`` resolves without importing code a file could name: a registered zoo name, a plugin of an
    installed package, or ``timm:NAME`` -- never a ``package.module:callable`` reference."""
    return isinstance(name, str) and not is_reference(name)


def all_names() -> list[str]:
    """Every registered name and installed plugin, sorted."""
    _ensure_torchvision()
    return sorted({*_ENTRIES, *plugin_builders()})
