"""Name -> builder registry of the model zoo (timm-style: one file per family registers its builders here).

A builder is a plain function ``fn(num_classes=..., **kwargs) -> nn.Module``. Families register theirs with
:func:`register` when :mod:`pybench.zoo` imports them; torchvision's classification models are added lazily
(listing them imports torchvision.models, which is slow enough to keep out of ``import pybench.zoo``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["Entry", "register", "get", "all_names"]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Entry:
    """One zoo model: how to build it and the input it expects by default (without the batch dim)."""

    name: str
    builder: Builder
    input_size: tuple[int, ...]
    default_num_classes: int
    family: str


_ENTRIES: dict[str, Entry] = {}
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

        torchvision_models.register_all()
        _torchvision_loaded = True


def get(name: str) -> Entry | None:
    """The entry for ``name``, or None if no such model exists."""
    if name not in _ENTRIES:
        _ensure_torchvision()
    return _ENTRIES.get(name)


def all_names() -> list[str]:
    """Every registered name, sorted."""
    _ensure_torchvision()
    return sorted(_ENTRIES)
