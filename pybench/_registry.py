"""The one registry idiom of pybench: a named table that a decorator fills, as timm's model registry.

    CRITERIA = Registry("criterion")

    @CRITERIA.register("l1")
    def l1(model, graph, data=None, **kw): ...

    CRITERIA["l1"]            # the function; an unknown name raises KeyError listing the known ones
    sorted(CRITERIA)          # the names a suite may use

Criteria, schedules, executors, layer rules (keyed by module type: :meth:`Registry.for_type` walks the MRO so a
subclass finds its base's entry) and surgery's pruners are all tables of this one kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(dict):
    """``{name: entry}`` of one kind of thing, filled by :meth:`register`; a missing name is a clear KeyError."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, *names: Any) -> Callable[[T], T]:
        """Decorator: file the decorated object under each of ``names`` (default: its ``__name__``)."""
        def deco(obj: T) -> T:
            for name in names or (obj.__name__,):  # type: ignore[attr-defined]
                self[name] = obj
            return obj
        return deco

    def __missing__(self, name: Any) -> Any:
        known = ", ".join(sorted(str(k if isinstance(k, str) else getattr(k, "__name__", k)) for k in self))
        raise KeyError(f"unknown {self.kind} {name!r}; known: {known}")

    def for_type(self, cls: type) -> Any | None:
        """The entry of ``cls`` or of its nearest registered base class; None if none is registered."""
        for base in cls.__mro__:
            entry = dict.get(self, base)
            if entry is not None:
                return entry
        return None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(map(str, self))})"
