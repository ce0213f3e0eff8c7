"""pybench._clone.clone_module: a deep copy of a module tree, as copy.deepcopy gives."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from pybench._clone import clone_module


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.again = self.conv  # the same module twice: one copy, referenced twice
        self.bn = nn.BatchNorm2d(4)
        self.gru = nn.GRU(4, 4)  # a class with its own __setstate__: copied by copy.deepcopy
        self.register_buffer("table", torch.arange(4.0))
        self.sizes = [1, 2, 3]
        self.config = {"a": [1, 2]}
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.again(x)) * self.scale[:, None, None]


def _assert_deep_copy(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
        assert sa[k].data_ptr() != sb[k].data_ptr() or sa[k].numel() == 0, f"{k} shares storage"
    for (na, ma), (nb, mb) in zip(a.named_modules(), b.named_modules(), strict=True):
        assert na == nb and ma is not mb
        assert type(ma) is type(mb) or isinstance(mb, torch.fx.GraphModule)  # deepcopy makes a class per copy
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and type(pa) is type(pb) and pa.requires_grad == pb.requires_grad


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "convnext_tiny", "vit_b_16"])
def test_torchvision_models_copy_like_deepcopy(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    clone = clone_module(model)
    _assert_deep_copy(model, clone)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
        next(clone.parameters()).add_(1.0)  # the copy is independent of the original
    assert not torch.equal(next(clone.parameters()), next(model.parameters()))


def test_shared_modules_containers_hooks_and_fallbacks():
    model = _Shared()
    calls = []
    model.bn.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    clone = clone_module(model)
    _assert_deep_copy(model, clone)
    assert clone.again is clone.conv and clone.conv is not model.conv
    assert clone.sizes == [1, 2, 3] and clone.sizes is not model.sizes
    assert clone.config == {"a": [1, 2]} and clone.config["a"] is not model.config["a"]
    assert clone.gru is not model.gru and clone.gru.weight_hh_l0 is not model.gru.weight_hh_l0
    clone(torch.randn(1, 3, 8, 8))
    assert calls == ["BatchNorm2d"]  # forward hooks are copied, as deepcopy does


def test_memo_replaces_tensors():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    new_w = nn.Parameter(torch.zeros(4, 3, 3, 3))
    new_mean = torch.ones(4)
    clone = clone_module(model, {id(model[0].weight): new_w, id(model[1].running_mean): new_mean})
    assert clone[0].weight is new_w and clone[1].running_mean is new_mean
    assert clone[0].bias is not model[0].bias and torch.equal(clone[0].bias, model[0].bias)


def test_fx_graph_module_falls_back_to_deepcopy():
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    clone = clone_module(gm)
    x = torch.randn(2, 3)
    torch.testing.assert_close(clone(x), gm(x))
    _assert_deep_copy(gm, clone)
    assert copy.deepcopy(gm).code == clone.code
