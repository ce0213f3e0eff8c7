"""TensorRT through torch-tensorrt's dynamo path (``torch_tensorrt.compile(..., ir="dynamo")``), CUDA only."""

from __future__ import annotations

from typing import Any

from pybench.bench.backends.base import Backend, register


@register("tensorrt")
class TensorRT(Backend):
    name = "tensorrt"
    devices = ("cuda",)
    dtypes = {"cuda": ("float32", "float16")}
    packages = ("torch_tensorrt",)
    distributions = ("torch", "torch-tensorrt", "tensorrt")
    extra = "gpu"

    def prepare(self, model: Any, inputs: Any) -> Any:
        import torch_tensorrt

        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return torch_tensorrt.compile(model, ir="dynamo", inputs=list(xs), enabled_precisions={xs[0].dtype})
