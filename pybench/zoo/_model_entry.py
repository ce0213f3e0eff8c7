"""What the zoo knows of one model (its own module: the registry and the reference resolver both make entries)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["Builder", "Entry"]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Entry:
    """One zoo model: how to build it and the input it expects by default (without the batch dim)."""

    name: str
    builder: Builder
    input_size: tuple[int, ...]
    default_num_classes: int | None  # None: the builder takes no num_classes
    family: str
