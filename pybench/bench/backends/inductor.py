"""torch.compile with the inductor backend; the mode is selectable (``inductor:max-autotune``)."""

from __future__ import annotations

from typing import Any

import torch

from pybench.bench.backends.base import Backend, register


@register("inductor")
class Inductor(Backend):
    name = "inductor"
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

    def prepare(self, model: Any, inputs: Any) -> Any:
        # a fresh compile cache per model: dense and pruned must not share guards or graphs
        torch._dynamo.reset()
        return torch.compile(model, mode=None if self.mode == "default" else self.mode, dynamic=False)
