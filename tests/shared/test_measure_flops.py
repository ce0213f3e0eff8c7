"""pb.measure.flops: FlopCounterMode counts against analytic per-layer formulas and the seed papers' tables."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import pybench as pb
from pybench.measure import MeasureInputError

# Sándor et al. 2020, Table 2: "#FLOPs" (multiply-accumulates) of ResNet-20's 19 conv layers at 32x32, in millions.
SANDOR_TABLE2_M = [0.44] + [2.35] * 6 + [1.17] + [2.35] * 5 + [1.17] + [2.35] * 5
SANDOR_TOTAL_M = 40.5


def analytic_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Per Conv2d / Linear MACs from the textbook formula, with output shapes taken by forward hooks."""
    macs: dict[str, int] = {}

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                macs[name] = out.numel() * k
            else:
                macs[name] = out.numel() * mod.in_features
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return macs


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_per_module_macs_match_the_formula(name: str) -> None:
    model = getattr(torchvision.models, name)(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    report = pb.measure.flops(model, x)
    expected = analytic_macs(model, x)
    assert report.per_module == expected  # every conv/linear, nothing else (BN, ReLU, adds count zero)
    assert report.total_macs == sum(expected.values())
    assert report.total_flops == 2 * report.total_macs
    assert report.params == sum(p.numel() for p in model.parameters())


def test_module_macs_sums_children_and_root_work_is_kept() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 3, 3, 3))
            self.head = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(nn.functional.conv2d(x, self.w).mean((2, 3)))

    report = pb.measure.flops(Functional(), torch.randn(2, 3, 10, 10))
    conv = 2 * 8 * 8 * 8 * 3 * 9  # batch x out-channels x 8x8 positions x 3x3x3 kernel
    assert report.per_module == {"": conv, "head.0": 2 * 8 * 6, "head.2": 2 * 6 * 4}
    assert report.module_macs("head") == 2 * 8 * 6 + 2 * 6 * 4
    assert report.module_macs("") == report.total_macs
    assert report.per_op == {"convolution": conv, "addmm": 2 * 8 * 6 + 2 * 6 * 4}
    json.dumps(report.to_dict())


def test_cifar_resnet20_matches_sandor_table2() -> None:
    model = pb.zoo.create("cifar_resnet20", num_classes=10)
    report = pb.measure.flops(model, torch.randn(1, 3, 32, 32))
    # Table 2's 19 layers: the stem and the 3x3 convs of the residual blocks, in network order
    layers = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]
    got = [report.per_module[n] / 1e6 for n in layers]
    assert got == pytest.approx(SANDOR_TABLE2_M, abs=0.011)  # the paper truncates 1.1796 M to 1.17
    assert sum(got) == pytest.approx(SANDOR_TOTAL_M, abs=0.06)


def test_cifar_resnet20_option_a_total_is_sandors() -> None:
    model = pb.zoo.create("cifar_resnet20", num_classes=10, shortcut="A")  # He et al.'s parameter-free shortcuts
    report = pb.measure.flops(model, torch.randn(1, 3, 32, 32))
    assert report.total_macs / 1e6 == pytest.approx(SANDOR_TOTAL_M, abs=0.06)
    assert report.total_macs - report.per_module["fc"] == 442368 + 16 * 2359296 + 2 * 1179648


def test_alexnet_10_classes_has_martineaus_57m_params() -> None:
    report = pb.measure.flops(torchvision.models.alexnet(num_classes=10), torch.randn(1, 3, 224, 224))
    assert round(report.params / 1e6, 1) == 57.0  # Martineau, "Comparing AlexNet attributes", 0 % column


def test_input_that_does_not_fit_names_model_and_shape() -> None:
    with pytest.raises(MeasureInputError, match=r"ResNet.*\[1, 4, 32, 32\]"):
        pb.measure.flops(torchvision.models.resnet18(), torch.randn(1, 4, 32, 32))


def test_model_is_not_modified() -> None:
    model = torchvision.models.resnet18(num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pb.measure.flops(model, torch.randn(2, 3, 32, 32))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
