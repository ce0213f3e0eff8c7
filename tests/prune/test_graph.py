"""pb.trace: which channels are coupled, where they live, and what is never pruned."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from _engine_util import create  # noqa: F401  (also silences the reference-ops warning)

import pybench as pb
from pybench.prune.graph import TraceError, TrainingModeWarning


def _producers(group) -> set[str]:
    return {m.name for m in group.producers}


def test_resnet18_residual_group_spans_the_stage():
    m = torchvision.models.resnet18(num_classes=10).eval()
    g = pb.trace(m, torch.randn(1, 3, 64, 64))
    stem = g.group_of("conv1")
    # the stem and every block's last conv of layer1 add into one channel space (Martineau's warning)
    assert _producers(stem) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert stem.size == 64
    layer2 = g.group_of("layer2.0.conv2")
    assert _producers(layer2) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}
    assert g.group_of("layer1.0.conv1") is not stem and g.group_of("layer1.0.conv1").size == 64
    # BN follows its conv; the next block's conv1 consumes
    names = {(mb.name, mb.role) for mb in stem.members}
    assert {("bn1", "out"), ("layer1.0.bn2", "out"), ("layer1.0.conv1", "in"), ("layer2.0.downsample.0", "in")} <= names
    # the classifier's outputs are never pruned; its inputs are the last residual group
    assert g.group_of("fc", "out") is None
    assert g.group_of("fc", "in") is g.group_of("layer4.1.conv2")
    assert len(g.groups) == 4 + 8  # 4 residual spaces + one inner space per basic block


def test_depthwise_couples_input_and_output():
    m = torchvision.models.mobilenet_v2(num_classes=10).eval()
    g = pb.trace(m, torch.randn(1, 3, 64, 64))
    expand = g.group_of("features.2.conv.0.0")
    assert g.group_of("features.2.conv.1.0") is expand  # depthwise 3x3 follows the expansion 1x1
    roles = {(mb.name, mb.role) for mb in expand.members}
    assert ("features.2.conv.1.0", "in") in roles and ("features.2.conv.1.1", "out") in roles
    assert ("features.2.conv.2", "in") in roles  # the projection consumes
    assert g.group_of("features.2.conv.2") is not expand


def test_squeeze_excitation_product_merges_channels():
    m = torchvision.models.efficientnet_b0(num_classes=10).eval()
    g = pb.trace(m, torch.randn(1, 3, 64, 64))
    dw = g.group_of("features.2.0.block.1.0")  # depthwise conv of an MBConv
    assert g.group_of("features.2.0.block.2.fc2") is dw  # SE scale multiplies the depthwise output
    assert g.group_of("features.2.0.block.0.0") is dw  # expansion conv feeds the depthwise


def test_concat_offsets_densenet():
    m = torchvision.models.densenet121(num_classes=10).eval()
    g = pb.trace(m, torch.randn(1, 3, 64, 64))
    grp = g.group_of("features.denseblock1.denselayer1.conv2")
    consumer = next(mb for mb in grp.members if mb.name == "features.denseblock1.denselayer2.conv1" and mb.role == "in")
    # denselayer2 reads cat(init features (64), layer1's 32 new channels): the new ones sit at offset 64
    idx = np.concatenate([consumer.indices(j) for j in range(grp.size)])
    np.testing.assert_array_equal(np.sort(idx), np.arange(64, 96))


def test_flatten_to_linear_maps_blocks():
    m = torchvision.models.vgg11(num_classes=10).eval()
    g = pb.trace(m, torch.randn(1, 3, 224, 224))
    last = g.group_of("features.18")
    lin = next(mb for mb in last.members if mb.name == "classifier.0")
    for j in (0, 5, 511):
        np.testing.assert_array_equal(lin.indices(j), np.arange(j * 49, (j + 1) * 49))


def test_convnext_layer_scale_and_channels_last():
    m = torchvision.models.convnext_tiny(num_classes=10).eval()
    g = pb.trace(m, torch.randn(1, 3, 64, 64))
    stream = g.group_of("features.1.0.block.0")  # depthwise conv on the residual stream
    names = {(mb.name, mb.kind, mb.role) for mb in stream.members}
    assert ("features.1.0.layer_scale", "param", 0) in names
    assert ("features.1.0.block.2", "module", "out") in names  # LayerNorm over C in channels-last
    assert ("features.1.0.block.5", "module", "out") in names  # the linear back to C
    hidden = g.group_of("features.1.0.block.3")  # Linear C -> 4C
    assert hidden.size == 4 * 96 and g.group_of("features.1.0.block.5", "in") is hidden


def test_shufflenet_branch_groups_and_chunk_constraints():
    m = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    g = pb.trace(m, torch.randn(2, 3, 64, 64))
    # inside each unit: 1x1 conv -> depthwise 3x3 couple; the projection's channels meet chunk + shuffle
    inner = g.group_of("stage3.2.branch2.0")
    assert inner is g.group_of("stage3.2.branch2.3") and inner.size == 48
    # the chunk(2) / shuffle stream needs equal halves at every unit; where they cannot all hold it stays whole
    assert g.group_of("stage3.2.branch2.5") is None
    assert any("equal-partition" in r for r in g.pinned)


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y = torch.fft.fft2(y).real  # no rule for this op
        return self.head(self.b(y))


def test_unknown_op_pins_channels_and_strict_names_it():
    m = _Custom().eval()
    g = pb.trace(m, torch.randn(1, 3, 8, 8))
    assert g.group_of("a") is None  # read by fft2: kept whole
    assert g.group_of("b") is not None
    assert any("fft2" in r for r in g.pinned)
    with pytest.raises(TraceError, match="fft2"):
        pb.trace(m, torch.randn(1, 3, 8, 8), strict=True)


def test_wrong_input_shape_names_the_module():
    m = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(TraceError, match=r"conv1 \(Conv2d\) expects 3 input channels"):
        pb.trace(m, torch.randn(1, 4, 64, 64))
    v = torchvision.models.vgg11(num_classes=10).eval()
    v.avgpool = nn.Identity()
    with pytest.raises(TraceError, match=r"classifier.0 \(Linear\) expects 25088 input features"):
        pb.trace(v, torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match="example_inputs"):
        pb.trace(m, "not a tensor")


class _Shared(nn.Module):
    """One conv used twice on different inputs: both inputs' channels must merge."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1)
        self.c2 = nn.Conv2d(3, 6, 1)
        self.shared = nn.Conv2d(6, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.shared(self.c1(x)) + self.shared(self.c2(x)))


def test_shared_module_merges_its_inputs():
    g = pb.trace(_Shared().eval(), torch.randn(1, 3, 4, 4))
    assert g.group_of("c1") is g.group_of("c2") is not None
    assert g.group_of("shared") is not None and g.group_of("shared") is not g.group_of("c1")


def test_model_output_channels_are_pinned():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 3)).eval()
    g = pb.trace(m, torch.randn(1, 3, 8, 8))
    assert g.group_of("2") is None and g.group_of("0").size == 8
    assert "model output" in g.pinned


def test_training_mode_is_flagged():
    m = torchvision.models.resnet18(num_classes=10)  # train mode: BN uses batch statistics
    with pytest.warns(TrainingModeWarning, match=r"training mode and bn1 \(BatchNorm2d\).*model.eval\(\)"):
        pb.trace(m, torch.randn(2, 3, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)  # nothing mode-sensitive: no warning
        pb.trace(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(1, 2))


def test_training_mode_that_changes_the_graph_is_an_error():
    m = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False)  # train mode: aux heads
    m.aux1.eval()  # a module's own flag survives the check
    with pytest.raises(TraceError, match=r"GoogLeNet is in training mode and its graph differs from eval mode.*"
                                         r"call model.eval\(\) before tracing"):
        pb.trace(m, torch.randn(2, 3, 64, 64))
    assert m.training and m.aux2.training and not m.aux1.training
    g = pb.trace(m.eval(), torch.randn(2, 3, 64, 64))
    assert g.groups
