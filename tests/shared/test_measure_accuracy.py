"""pb.measure.accuracy: loss / top-1 / top-5 through pybench.train.evaluate, against a direct computation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pybench as pb


class TableModel(nn.Module):
    """Logits looked up by item index: the test fixes exactly which predictions are right."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx.long()]


def test_loss_top1_top5_match_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    n, classes = 50, 10
    logits = torch.randn(n, classes, generator=g)
    targets = torch.randint(0, classes, (n,), generator=g)
    loader = DataLoader(TensorDataset(torch.arange(n), targets), batch_size=8)
    model = TableModel(logits).train()
    r = pb.measure.accuracy(model, loader)

    rank = (logits > logits.gather(1, targets[:, None])).sum(1)  # how many classes beat the target
    assert r.top1 == pytest.approx((rank == 0).float().mean().item())
    assert r.top5 == pytest.approx((rank < 5).float().mean().item())
    assert r.loss == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    assert r.samples == n and r.error is None and r.device == "cpu"
    assert model.training  # the caller's mode is restored
    json.dumps(r.to_dict())


def test_max_batches_limits_the_samples() -> None:
    loader = DataLoader(TensorDataset(torch.arange(20), torch.zeros(20, dtype=torch.long)), batch_size=4)
    r = pb.measure.accuracy(TableModel(torch.randn(20, 3)), loader, max_batches=2)
    assert r.samples == 8


def test_out_of_memory_is_reported() -> None:
    class Huge(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.empty(2**50, dtype=torch.uint8)

    loader = DataLoader(TensorDataset(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), batch_size=2)
    r = pb.measure.accuracy(Huge(), loader)
    assert r.error.startswith("out of memory during accuracy on cpu") and r.top1 is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_missing_device_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="device='cuda' is not available"):
        pb.measure.accuracy(nn.Linear(3, 2), [(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))], device="cuda")
