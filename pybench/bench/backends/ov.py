"""OpenVINO on the CPU: the model exported with torch.export, converted with ``openvino.convert_model`` and compiled
for latency."""

from __future__ import annotations

from typing import Any

import torch

from pybench.bench.backends.base import Backend, register


@register("openvino")
class OpenVino(Backend):
    name = "openvino"
    devices = ("cpu",)
    dtypes = {"cpu": ("float32",)}
    packages = ("openvino",)
    distributions = ("torch", "openvino")
    extra = "backends"

    def prepare(self, model: Any, inputs: Any) -> Any:
        import openvino as ov

        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        # through torch.export (the maintained path; convert_model would otherwise fall back on torch.jit.trace)
        converted = ov.convert_model(torch.export.export(model, xs))
        # f32 as asked: on CPUs with bf16 / AMX units OpenVINO would otherwise lower precision by itself
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        request = ov.Core().compile_model(converted, "CPU", config).create_infer_request()

        def run(*args: torch.Tensor) -> torch.Tensor:
            result = request.infer([a.numpy() for a in args])
            return torch.from_numpy(result.to_tuple()[0])

        return run
