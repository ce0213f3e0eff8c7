"""pb.apply and pb.mask: pruned == masked outputs, truthful attributes, exact counts, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from _engine_util import assert_apply_equals_mask, calibrate, count_params

import pybench as pb

FAMILIES = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "densenet121", "efficientnet_b0", "regnet_y_400mf",
            "shufflenet_v2_x0_5", "convnext_tiny", "squeezenet1_1", "googlenet", "mnasnet0_5", "resnext50_32x4d"]


def _model(name: str) -> nn.Module:
    kw = {"init_weights": True, "aux_logits": False} if name == "googlenet" else {}
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kw)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("scope", ["local", "global"])
def test_apply_equals_mask(name, scope):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m = calibrate(_model(name), x)
    g = pb.trace(m, x)
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=0.5, scope=scope)
    before = copy.deepcopy(m.state_dict())
    pruned, masked, out = assert_apply_equals_mask(m, p, x)
    assert out.shape == (2, 10)
    assert count_params(pruned) < count_params(m) and count_params(masked) == count_params(m)
    # the input model is untouched
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    _assert_attributes_tell_the_truth(pruned)


def _assert_attributes_tell_the_truth(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            assert m.weight.shape[0] == m.out_channels, name
            assert m.weight.shape[1] * m.groups == m.in_channels, name
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name
            if m.bias is not None:
                assert m.bias.shape == (m.out_channels,), name
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), name
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            assert m.weight.shape == m.running_mean.shape == (m.num_features,), name
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            assert tuple(m.weight.shape) == tuple(m.normalized_shape), name
        elif isinstance(m, nn.GroupNorm):
            assert m.weight.shape == (m.num_channels,) and m.num_channels % m.num_groups == 0, name


def _conv_params(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def _resnet18_params(widths: list[int], inner: list[list[int]], classes: int) -> int:
    """Parameters of a torchvision-style ResNet-18 with the given stage widths and per-block inner widths."""
    bn = 2
    total = _conv_params(3, widths[0], 7) + bn * widths[0]
    cin = widths[0]
    for s, w in enumerate(widths):
        for b in range(2):
            mid = inner[s][b]
            total += _conv_params(cin, mid, 3) + bn * mid + _conv_params(mid, w, 3) + bn * w
            if b == 0 and s > 0:
                total += _conv_params(cin, w, 1) + bn * w  # downsample
            cin = w
    return total + cin * classes + classes


def test_resnet18_counts_pinned():
    m = torchvision.models.resnet18().eval()  # 1000 classes, as Torch-Pruning's figure
    assert count_params(m) == _resnet18_params([64, 128, 256, 512], [[64, 64], [128, 128], [256, 256],
                                                                      [512, 512]], 1000) == 11_689_512
    g = pb.trace(m, torch.randn(1, 3, 224, 224))
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=0.5)
    pruned = pb.apply(m, p)
    kept = {n: p.keep[g.group_of(n)].numel() for n in ("conv1", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2")}
    widths = [kept["conv1"], kept["layer2.0.conv2"], kept["layer3.0.conv2"], kept["layer4.0.conv2"]]
    inner = [[p.keep[g.group_of(f"layer{s + 1}.{b}.conv1")].numel() for b in range(2)] for s in range(4)]
    assert widths == [32, 64, 128, 256] and inner == [[32, 32], [64, 64], [128, 128], [256, 256]]
    expected = _resnet18_params(widths, inner, 1000)
    assert count_params(pruned) == expected == 3_055_880  # residual groups pruned too: Torch-Pruning's figure


def _vgg11_params(convs: list[int], hidden: int, classes: int) -> int:
    total, cin = 0, 3
    for c in convs:
        total += _conv_params(cin, c, 3, bias=True)
        cin = c
    return total + (cin * 49 * hidden + hidden) + (hidden * hidden + hidden) + hidden * classes + classes


def test_vgg11_counts_pinned():
    m = torchvision.models.vgg11().eval()
    widths = [64, 128, 256, 256, 512, 512, 512, 512]
    assert count_params(m) == _vgg11_params(widths, 4096, 1000) == 132_863_336
    g = pb.trace(m, torch.randn(1, 3, 224, 224))
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=0.5)
    pruned = pb.apply(m, p)
    convs = [i for i, layer in enumerate(m.features) if isinstance(layer, nn.Conv2d)]
    kept = [p.keep[g.group_of(f"features.{i}")].numel() for i in convs]
    hidden = p.keep[g.group_of("classifier.0")].numel()
    assert kept == [w // 2 for w in widths] and hidden == 2048
    assert count_params(pruned) == _vgg11_params(kept, hidden, 1000) == 34_243_752
    assert pruned.classifier[0].in_features == 256 * 49


def test_plan_for_another_model_is_refused():
    a = torchvision.models.resnet18(num_classes=10).eval()
    b = torchvision.models.resnet34(num_classes=10).eval()
    g = pb.trace(a, torch.randn(1, 3, 64, 64))
    p = pb.plan(g, pb.score(a, g, "l1"), ratio=0.5)
    with pytest.raises(ValueError, match="plan was made for a different model"):
        pb.apply(b, p)
    with pytest.raises(ValueError, match="different model"):
        pb.mask(b, p)
    with pytest.raises(TypeError, match="plan must be a PrunePlan"):
        pb.apply(a, {"not": "a plan"})
    c = torchvision.models.resnet18(num_classes=10).eval()  # same architecture, other weights: fine
    assert count_params(pb.apply(c, p)) == count_params(pb.apply(a, p))


class _Couplings(nn.Module):
    """Every coupling in one small net: grouped conv + GroupNorm, SE product, concat, chunk, shuffle, layer scale,
    channels-last LayerNorm + Linear, flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.GroupNorm(4, 16), nn.ReLU())
        self.se1, self.se2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.branch = nn.Conv2d(16, 8, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.shuffle = nn.ChannelShuffle(2)
        self.scale = nn.Parameter(torch.rand(24, 1, 1))
        self.ln = nn.LayerNorm(24)
        self.lin = nn.Linear(24, 24)
        self.pw = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.grouped(x) + x
        y = y * torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        z = torch.cat([y, self.branch(y)], 1)
        z = self.shuffle(self.dw(z)) * self.scale
        z = z + self.lin(self.ln(z.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        a, b = z.chunk(2, dim=1)
        z = self.pw(a * b)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 4), 1))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_all_couplings_in_one_net(ratio):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    m = calibrate(_Couplings(), x)
    g = pb.trace(m, x)
    assert g.group_of("stem.0") is g.group_of("grouped.0") is g.group_of("se2")  # residual + SE + grouped
    p = pb.plan(g, pb.score(m, g, "random", seed=1), ratio=ratio)
    assert p.n_removed > 0
    pruned, _, _ = assert_apply_equals_mask(m, p, x)
    _assert_attributes_tell_the_truth(pruned)


def test_prune_pipeline_matches_steps():
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned, p = pb.prune(m, x, ratio=0.5, criterion="l2", scope="global")
    g = pb.trace(m, x)
    p2 = pb.plan(g, pb.score(m, g, "l2"), ratio=0.5, scope="global")
    assert [k.tolist() for k in p.keep.values()] == [k.tolist() for k in p2.keep.values()]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), pb.apply(m, p2)(x))
