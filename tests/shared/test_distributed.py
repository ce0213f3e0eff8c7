"""pybench.distributed: DDP fine-tuning over 2 gloo processes gives the one-process result."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pybench import distributed, train


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).to(dtype)


def _loader(n: int = 51, batch_size: int = 7, drop_last: bool = False,
            dtype: torch.dtype = torch.float32) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=g).to(dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    # 51 = 7 batches of 7 (split 4 + 3: uneven slices) + one of 2 (1 + 1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(0))


KW = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "seed": 3, "progress": False}


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


@pytest.fixture(scope="module")
def one_process() -> tuple[nn.Module, list]:
    m = _model()
    hist = train.fine_tune(m, _loader(), 2, **KW)
    return m, hist


def test_two_gloo_processes_equal_one_process(one_process):
    ref, ref_hist = one_process
    start = _model()
    m = copy.deepcopy(start)
    hist = distributed.fine_tune(m, _loader(), 2, nprocs=2, backend="gloo", **KW)
    assert _max_diff(m, start) > 1e-2  # it trained
    diff = _max_diff(m, ref)
    print(f"float32: 2 gloo processes vs 1 process, max |difference| over weights and BN statistics: {diff:.2e}")
    for key, v in m.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[key], rtol=1e-4, atol=1e-5, msg=key)
    assert m[1].num_batches_tracked.item() == ref[1].num_batches_tracked.item() == 16
    assert len(hist) == len(ref_hist) == 2


def test_float64_is_exact():
    """In float64 the rounding differences vanish: what is left would be an algorithmic difference (a wrong split,
    a wrong weight, unsynchronised statistics), so the tolerance can be tiny."""
    ref = _model(torch.float64)
    train.fine_tune(ref, _loader(dtype=torch.float64), 2, **KW)
    m = _model(torch.float64)
    distributed.fine_tune(m, _loader(dtype=torch.float64), 2, nprocs=2, backend="gloo", **KW)
    diff = _max_diff(m, ref)
    print(f"float64: 2 gloo processes vs 1 process, max |difference|: {diff:.2e}")
    assert diff < 1e-10


def test_without_synchronised_batchnorm_the_result_differs(one_process):
    """The control: per-process BatchNorm statistics (plain DDP on the CPU) move away from the one-process run."""
    ref, _ = one_process
    m = _model()
    distributed.fine_tune(m, _loader(), 2, nprocs=2, backend="gloo", sync_batchnorm=False, **KW)
    assert _max_diff(m, ref) > 1e-3


def test_slices_partition_each_batch():
    for n in (2, 7, 8, 63, 64):
        for size in (2, 3, 4):
            if n < size:
                continue
            parts = [distributed._slice(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[i][1] == parts[i + 1][0] for i in range(size - 1))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_shard_loader_walks_the_one_process_order():
    loader = _loader()
    loader.generator.manual_seed(5)
    whole = [batch[1].tolist() for batch in loader]
    parts = []
    for rank in range(2):
        loader.generator.manual_seed(5)
        parts.append([batch[1].tolist() for batch in distributed.shard_loader(loader, rank, 2)])
    assert [a + b for a, b in zip(*parts, strict=True)] == whole
    assert [len(b) for b in parts[0]] == [4] * 7 + [1] and [len(b) for b in parts[1]] == [3] * 7 + [1]


def test_bad_input():
    m = _model()
    with pytest.raises(ValueError, match=r"last batch holds 1 sample\(s\).*drop_last=True"):
        distributed.fine_tune(m, _loader(n=50), 1, nprocs=2, backend="gloo", **KW)
    with pytest.raises(ValueError, match="batch_size 1 is smaller than the 2 processes"):
        distributed.fine_tune(m, _loader(batch_size=1), 1, nprocs=2, backend="gloo", **KW)
    with pytest.raises(ValueError, match="nprocs must be an int >= 1"):
        distributed.fine_tune(m, _loader(), 1, nprocs=0, backend="gloo")
    with pytest.raises(ValueError, match="backend 'mpi'"):
        distributed.fine_tune(m, _loader(), 1, nprocs=2, backend="mpi")
    with pytest.raises(TypeError, match="must be a torch DataLoader"):
        distributed.fine_tune(m, [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))], 1, nprocs=2,
                              backend="gloo")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'nccl' needs CUDA GPUs"):
            distributed.fine_tune(m, _loader(), 1, nprocs=2, backend="nccl")


def test_a_short_last_batch_is_fine_when_max_batches_stops_before_it():
    loader = _loader(n=50)  # 7 batches of 7, then 1 sample: too few for 2 processes
    distributed._check_batches(loader, 2, max_batches=7)  # an epoch of 7 batches never draws it
    with pytest.raises(ValueError, match=r"last batch holds 1 sample\(s\)"):
        distributed._check_batches(loader, 2, max_batches=8)
    with pytest.raises(ValueError, match=r"last batch holds 1 sample\(s\)"):
        distributed._check_batches(loader, 2)


def test_one_process_is_plain_fine_tune(one_process):
    ref, _ = one_process
    m = _model()
    distributed.fine_tune(m, _loader(), 2, nprocs=1, **KW)
    assert _max_diff(m, ref) == 0.0


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_nccl_processes_equal_one_process():
    ref = _model().cuda()
    train.fine_tune(ref, _loader(), 2, **KW)
    m = _model().cuda()
    distributed.fine_tune(m, _loader(), 2, nprocs=2, backend="nccl", **KW)
    for key, v in m.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[key], rtol=1e-3, atol=1e-4, msg=key)
