"""pb.measure.memory: parameter/buffer bytes, peak growth of a forward on CPU (live tensors by default, RSS as an
option) and CUDA."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torchvision
from torch import nn

import pybench as pb
from pybench.measure.memory import can_reset_peak_rss

MiB = 2**20
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Scratch(nn.Module):
    """A forward that holds ``nbytes`` of touched scratch memory for a while, then returns a scalar."""

    def __init__(self, nbytes: int, hold_s: float = 0.1) -> None:
        super().__init__()
        self.n = nbytes // 4
        self.hold_s = hold_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(self.n, device=x.device)  # ones, not empty: untouched pages are not resident
        time.sleep(self.hold_s)  # long enough for the 1 ms RSS sampler to see it on a loaded machine
        return scratch[:1] + x.sum()


class BigBuffer(nn.Module):
    def __init__(self, nbytes: int) -> None:
        super().__init__()
        self.register_buffer("table", torch.ones(nbytes // 4))
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_param_and_buffer_bytes() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    r = pb.measure.memory(model, torch.randn(1, 3, 32, 32))
    assert r.param_bytes == 4 * n_params
    # BN running mean/var are fp32, num_batches_tracked int64
    n_tracked = sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert r.buffer_bytes == 4 * (n_buffers - n_tracked) + 8 * n_tracked
    r16 = pb.measure.memory(model, torch.randn(1, 3, 32, 32), dtype="bf16")
    assert r16.param_bytes == 2 * n_params
    json.dumps(r.to_dict())


def test_shared_parameters_count_once() -> None:
    lin = nn.Linear(10, 10)
    r = pb.measure.memory(nn.Sequential(lin, lin), torch.randn(1, 10))
    assert r.param_bytes == 4 * (100 + 10)


@pytest.mark.parametrize("method", ["clear_refs+VmHWM", "psutil-sampling"])
def test_cpu_peak_is_the_growth_of_the_forward(method: str) -> None:
    if method == "clear_refs+VmHWM" and not can_reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    r = pb.measure.memory(Scratch(96 * MiB), torch.randn(1, 3), cpu_method=method)
    assert r.method == method and r.error is None
    assert 92 * MiB <= r.peak_bytes <= 96 * MiB + 24 * MiB
    assert r.peak_total_bytes - r.baseline_bytes == r.peak_bytes


def test_cpu_peak_excludes_what_was_resident_before() -> None:
    r = pb.measure.memory(BigBuffer(128 * MiB), torch.randn(4, 3))
    assert r.buffer_bytes == 128 * MiB
    assert r.peak_bytes < 16 * MiB  # the buffer was resident before the forward: not part of its peak


def test_batch_size_scales_the_activation_peak() -> None:
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
    small = pb.measure.memory(model, torch.randn(1, 3, 128, 128), batch_size=2)
    large = pb.measure.memory(model, torch.randn(1, 3, 128, 128), batch_size=16)
    act = 64 * 128 * 128 * 4  # bytes of one item's 64-channel activation
    assert small.batch_size == 2 and large.batch_size == 16
    assert large.peak_bytes >= 16 * act  # at least one full activation of the batch is live at once
    assert large.peak_bytes > small.peak_bytes


def test_cpu_peak_counts_live_tensor_bytes_exactly() -> None:
    """A hand-counted net: conv(3->8, 3x3, no bias), BN(8), ReLU, conv(8->4): fp32, 1 x 3 x 16 x 16 input."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1, bias=False))
    r = pb.measure.memory(model, torch.randn(1, 3, 16, 16))
    assert r.method == "mem_tracker" and r.error is None
    assert r.param_bytes == 4 * (8 * 3 * 9 + 8 + 8 + 4 * 8 * 9)  # conv weights, BN gamma and beta
    assert r.buffer_bytes == 4 * (8 + 8) + 8  # running mean and var, num_batches_tracked (int64)
    assert r.input_bytes == 4 * 3 * 16 * 16
    plane = 4 * 16 * 16  # one fp32 channel
    # the peak: conv1's output (8 channels) still held while BN writes its own (8); ReLU's, then conv2's (4),
    # come after conv1's output is freed
    assert r.activation_peak_bytes == r.peak_bytes == 2 * 8 * plane
    assert r.baseline_bytes == r.param_bytes + r.buffer_bytes + r.input_bytes
    assert r.peak_total_bytes == r.baseline_bytes + r.peak_bytes


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11"])
def test_pruned_at_half_never_peaks_above_dense(name: str) -> None:
    model = torchvision.models.get_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned, _ = pb.prune(model, x, ratio=0.5)
    dense, small = pb.measure.memory(model, x), pb.measure.memory(pruned, x)
    assert small.peak_bytes <= dense.peak_bytes and small.peak_total_bytes < dense.peak_total_bytes
    assert small.param_bytes < dense.param_bytes


def test_out_of_memory_is_reported() -> None:
    class Huge(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.empty(2**50, dtype=torch.uint8)

    r = pb.measure.memory(Huge(), torch.randn(1, 3))
    assert r.error is not None and r.error.startswith("out of memory during memory on cpu") and r.peak_bytes is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="cpu_method='top'"):
        pb.measure.memory(nn.Linear(3, 2), torch.randn(1, 3), cpu_method="top")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda:0' is not available"):
            pb.measure.memory(nn.Linear(3, 2), torch.randn(1, 3), device="cuda:0")


@cuda
@pytest.mark.cuda
def test_cuda_peak_matches_the_allocation() -> None:
    r = pb.measure.memory(Scratch(64 * MiB, hold_s=0), torch.randn(1, 3), device="cuda")
    assert r.method == "cuda.max_memory_allocated"
    assert 64 * MiB <= r.peak_bytes <= 64 * MiB + 4 * MiB
    assert r.reserved_peak_bytes >= r.peak_total_bytes
