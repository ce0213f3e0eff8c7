"""The eager forward captured once into a CUDA graph and replayed (static inputs), CUDA only."""

from __future__ import annotations

from typing import Any

import torch

from pybench.bench.backends.base import Backend, register


@register("cuda_graphs")
class CudaGraphs(Backend):
    name = "cuda_graphs"
    devices = ("cuda",)

    def prepare(self, model: Any, inputs: Any) -> Any:
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        dev = xs[0].device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graph requires
                model(*xs)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(*xs)

        def run(*_: Any) -> Any:  # the graph reads the captured (static) input buffers and refills `out`
            graph.replay()
            return out

        return run
