"""pb.measure.latency: statistics, options reaching the model, bad input, out-of-memory reported as a value."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import pybench as pb
import pybench.measure._common
from pybench.measure import MeasureInputError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Recorder(nn.Module):
    """Records what each call saw: input shape, dtype, memory format, grad/inference mode, parameter dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.seen: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append({
            "shape": tuple(x.shape), "dtype": x.dtype, "device": x.device.type,
            "channels_last": x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous(),
            "inference": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled(),
            "param_dtype": self.conv.weight.dtype, "training": self.training,
        })
        return self.conv(x)


class Sleeper(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


class Allocates(nn.Module):
    """Asks the allocator for more than any machine has: a real out-of-memory, raised by torch's CPU allocator."""

    def __init__(self, fail_after: int = 0) -> None:
        super().__init__()
        self.fail_after = fail_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.fail_after:
            torch.empty(2**50, dtype=torch.uint8, device=x.device)
        return x


def test_statistics_are_those_of_the_samples() -> None:
    r = pb.measure.latency(nn.Conv2d(3, 8, 3), torch.randn(2, 3, 16, 16), warmup=2, iters=25)
    s = np.array(r.samples_ms)
    assert r.iters == len(s) == 25 and r.timer == "perf_counter"
    assert r.mean_ms == pytest.approx(s.mean()) and r.std_ms == pytest.approx(s.std(ddof=1))
    assert r.min_ms == s.min() and r.max_ms == s.max()
    assert [r.p50_ms, r.p90_ms, r.p99_ms] == pytest.approx(np.percentile(s, [50, 90, 99]).tolist())
    assert r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert r.throughput == pytest.approx(2 / (r.p50_ms / 1e3)) and r.throughput_basis == "batch_size / p50"
    assert r.error is None
    json.dumps(r.to_dict())


def test_counts_warmup_iters_and_min_time() -> None:
    model = Sleeper(0.004)
    r = pb.measure.latency(model, torch.randn(1, 3), warmup=3, iters=2, min_time=0.06)
    # the caller's module is copied, so count through the result: every sample includes the 4 ms sleep
    assert min(r.samples_ms) >= 4.0
    assert r.total_s >= 0.06 and r.iters >= 2
    assert sum(r.samples_ms) / 1e3 == pytest.approx(r.total_s)
    assert sum(r.samples_ms[:-1]) / 1e3 < 0.06  # it stopped as soon as min_time was reached
    r = pb.measure.latency(model, torch.randn(1, 3), warmup=0, iters=7)
    assert r.iters == 7 and model.calls == 0  # the caller's model itself was never called


def test_options_reach_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Recorder()
    calls: list[list[dict]] = []  # what each measured copy of the model saw
    prepare = pybench.measure._common.prepare_model

    def spy(*args, **kwargs):
        copy = prepare(*args, **kwargs)
        calls.append(copy.seen)
        return copy

    monkeypatch.setattr(pybench.measure._common, "prepare_model", spy)
    r = pb.measure.latency(model, torch.randn(1, 3, 8, 8), dtype="bf16", batch_size=5, channels_last=True,
                           warmup=1, iters=2)
    r2 = pb.measure.latency(model, torch.randn(3, 3, 8, 8), inference_mode=False, iters=1, warmup=0)
    seen = calls[0]
    assert len(seen) == 1 + 1 + 2  # input check, warm-up, timed
    assert all(s["shape"] == (5, 3, 8, 8) and s["dtype"] == torch.bfloat16 and s["param_dtype"] == torch.bfloat16
               and s["channels_last"] and s["inference"] and not s["training"] for s in seen)
    assert r.batch_size == 5 and r.dtype == "bfloat16" and r.channels_last
    assert all(not s["inference"] and not s["grad"] and s["shape"][0] == 3 for s in calls[1])
    assert r2.batch_size == 3 and not r2.inference_mode
    assert model.seen == [] and model.conv.weight.dtype == torch.float32 and model.training  # caller's untouched


def test_threads_are_set_for_the_measurement_and_restored() -> None:
    seen = []

    class Threads(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return t

    before = torch.get_num_threads()
    r = pb.measure.latency(Threads(), torch.randn(1, 3), threads=1, warmup=0, iters=2)
    assert seen == [1, 1, 1] and r.threads == 1 and torch.get_num_threads() == before
    assert pb.measure.latency(Threads(), torch.randn(1, 3), iters=1).threads == before
    with pytest.raises(ValueError, match="threads=0"):
        pb.measure.latency(Threads(), torch.randn(1, 3), threads=0)


def test_batch_size_cuts_and_repeats_items() -> None:
    x = torch.arange(3.0).reshape(3, 1)
    seen = []

    class Keep(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t.clone())
            return t

    pb.measure.latency(Keep(), x, batch_size=7, warmup=0, iters=1)
    assert seen[-1].flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
    pb.measure.latency(Keep(), x, batch_size=2, warmup=0, iters=1)
    assert seen[-1].flatten().tolist() == [0, 1]


def test_tuple_and_dict_inputs() -> None:
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a @ b.T

    assert pb.measure.latency(Two(), (torch.randn(4, 3), torch.randn(4, 3)), iters=2).batch_size == 4
    assert pb.measure.latency(Two(), {"a": torch.randn(2, 3), "b": torch.randn(2, 3)}, iters=2).error is None


def test_bad_device_dtype_and_options() -> None:
    model, x = nn.Linear(3, 2), torch.randn(1, 3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda' is not available.*device='cpu'"):
            pb.measure.latency(model, x, device="cuda")
    with pytest.raises(ValueError, match="device='tpu:0'"):
        pb.measure.latency(model, x, device="tpu:0")
    with pytest.raises(ValueError, match="dtype='int8' is not known"):
        pb.measure.latency(model, x, dtype="int8")
    with pytest.raises(ValueError, match="floating"):
        pb.measure.latency(model, x, dtype=torch.int32)
    with pytest.raises(ValueError, match="iters=0"):
        pb.measure.latency(model, x, iters=0)
    with pytest.raises(ValueError, match="min_time"):
        pb.measure.latency(model, x, min_time=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        pb.measure.latency(model, x, batch_size=0)
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        pb.measure.latency(model, x, cuda_graphs=True)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        pb.measure.latency(lambda t: t, x)


def test_a_model_that_cannot_be_copied_is_a_clear_error() -> None:
    model = nn.Linear(3, 2)
    model.lock = threading.Lock()  # deepcopy cannot copy locks
    with pytest.raises(TypeError, match="model: Linear cannot be deep-copied"):
        pb.measure.latency(model, torch.randn(1, 3))


def test_inputs_that_do_not_fit_name_the_model_and_shape() -> None:
    with pytest.raises(MeasureInputError, match=r"model Sequential cannot run on inputs of shape \[2, 5\] float32"):
        pb.measure.latency(nn.Sequential(nn.Linear(3, 2)), torch.randn(2, 5))


def test_dtype_the_device_cannot_run_names_the_dtype() -> None:
    class Distances(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cdist(x, x)  # no float16 kernel on CPU

    with pytest.raises(MeasureInputError, match=r"dtype=float16 cannot run Distances on cpu.*torch.float32"):
        pb.measure.latency(Distances(), torch.randn(4, 3), dtype="fp16")
    assert pb.measure.latency(Distances(), torch.randn(4, 3), iters=2).error is None


@pytest.mark.parametrize("fail_after", [0, 2])  # during the input check / during the timed loop
def test_out_of_memory_is_reported_not_raised(fail_after: int) -> None:
    r = pb.measure.latency(Allocates(fail_after), torch.randn(1, 3), warmup=1, iters=3)
    assert r.error is not None and r.error.startswith("out of memory during latency on cpu")
    assert r.p50_ms is None and r.samples_ms == [] and r.throughput is None
    json.dumps(r.to_dict())


def test_energy_without_gpu_is_a_reason() -> None:
    r = pb.measure.latency(nn.Linear(3, 2), torch.randn(1, 3), iters=2, energy=True)
    assert r.p50_ms is not None
    assert r.energy is not None and r.energy.energy_j is None and "GPU telemetry" in r.energy.reason
    assert r.to_dict()["energy"]["energy_j"] is None


@pytest.mark.slow
def test_compile_times_the_compiled_model() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    r = pb.measure.latency(model, torch.randn(4, 16), compile=True, warmup=1, iters=5)
    assert r.compile == "default" and r.iters == 5 and r.error is None


@cuda
@pytest.mark.cuda
def test_cuda_events_fp16_channels_last() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
    r = pb.measure.latency(model, torch.randn(1, 3, 64, 64), device="cuda", dtype="fp16", batch_size=8,
                           channels_last=True, iters=20, energy=True)
    assert r.timer == "cuda_events" and r.device.startswith("cuda") and r.iters == 20 and r.p50_ms > 0
    assert r.energy is not None and (r.energy.energy_j is not None or r.energy.reason)


@cuda
@pytest.mark.cuda
def test_cuda_graph_replay() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    r = pb.measure.latency(model, torch.randn(32, 64), device="cuda", cuda_graphs=True, iters=20)
    assert r.cuda_graphs and r.iters == 20 and r.error is None and r.p50_ms > 0


@cuda
@pytest.mark.cuda
def test_cuda_out_of_memory_is_reported_and_released() -> None:
    before = torch.cuda.memory_allocated()
    r = pb.measure.latency(Allocates(1), torch.randn(1, 3), device="cuda", warmup=1, iters=3)
    assert r.error is not None and "out of memory" in r.error
    assert torch.cuda.memory_allocated() == before
