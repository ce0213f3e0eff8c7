"""ONNX Runtime: the model exported with ``torch.onnx.export(..., dynamo=True)`` (torch.export underneath) and run in
an InferenceSession: the CPU execution provider, or CUDA's with onnxruntime-gpu."""

from __future__ import annotations

from typing import Any

import torch

from pybench.bench.backends.base import Backend, register


def onnx_bytes(model: Any, xs: tuple) -> bytes:
    """The model as an ONNX file's bytes, exported at the inputs' static shapes."""
    program = torch.onnx.export(model, xs, dynamo=True, verbose=False, optimize=True)
    return program.model_proto.SerializeToString()


@register("onnxruntime")
class OnnxRuntime(Backend):
    name = "onnxruntime"
    dtypes = {"cpu": ("float32",), "cuda": ("float32", "float16")}
    packages = ("onnx", "onnxruntime", "onnxscript")
    distributions = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript")
    extra = "backends"

    def __init__(self, mode: str = "") -> None:
        super().__init__(mode)
        self.profile_prefix: str | None = None  # set: each session writes ONNX Runtime's own profile (JSON)
        self.sessions: list[Any] = []

    def end_profiling(self) -> list[str]:
        """Close the profiles of the sessions made since ``profile_prefix`` was set; their file paths."""
        paths = [s.end_profiling() for s in self.sessions if self.profile_prefix]
        self.sessions = []
        return paths

    def unavailable_here(self, device: str) -> str | None:
        if device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return ("backend 'onnxruntime' on CUDA needs onnxruntime-gpu (this onnxruntime has "
                        f"{', '.join(ort.get_available_providers())}): pip install 'pybench[gpu]'")
        return None

    def prepare(self, model: Any, inputs: Any) -> Any:
        import onnxruntime as ort

        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # as many as eager has ([metrics] threads)
        opts.inter_op_num_threads = 1
        if self.profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = f"{self.profile_prefix}-{len(self.sessions)}"
        cuda = xs[0].is_cuda
        providers = [("CUDAExecutionProvider", {"device_id": xs[0].device.index or 0})] if cuda else \
            ["CPUExecutionProvider"]
        session = ort.InferenceSession(onnx_bytes(model, xs), opts, providers=providers)
        self.sessions.append(session)
        names = [i.name for i in session.get_inputs()]
        if cuda:
            return _cuda_runner(session, names, xs)

        def run(*args: torch.Tensor) -> torch.Tensor:
            outs = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
            return torch.from_numpy(outs[0])

        return run


def _cuda_runner(session: Any, names: list[str], xs: tuple) -> Any:
    """Inputs and the output bound on the GPU (IOBinding), so a call copies nothing through the host."""
    out_meta = session.get_outputs()[0]
    binding = session.io_binding()

    def run(*args: torch.Tensor) -> Any:
        for n, a in zip(names, args, strict=True):
            a = a.contiguous()
            binding.bind_input(n, "cuda", a.device.index or 0, _np_dtype(a.dtype), list(a.shape), a.data_ptr())
        binding.bind_output(out_meta.name, "cuda")
        session.run_with_iobinding(binding)
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])

    return run


def _np_dtype(dtype: torch.dtype) -> Any:
    import numpy as np

    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]
