"""Eager PyTorch: the model called as it is (the default backend)."""

from __future__ import annotations

from typing import Any

from pybench.bench.backends.base import Backend, register


@register("eager")
class Eager(Backend):
    name = "eager"

    def prepare(self, model: Any, inputs: Any) -> Any:
        return model
