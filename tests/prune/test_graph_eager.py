"""The eager tracer (pb.trace's default): the same graphs as the fx tracer, and what only running forward can do."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_prune_properties import RandomNet, architectures

import pybench as pb
from pybench.prune.graph import TraceError


def _structure(g: pb.ChannelGraph) -> tuple:
    """Everything surgery and planning read: slots, groups (units, partitions) and which units are pinned."""
    return ({k: v.tolist() for k, v in g.slots.items()},
            [(gr.size, gr.blocks, gr.comps.tolist(), None if gr.block_of is None else gr.block_of.tolist())
             for gr in g.groups], g.pinned_units.tolist(), g.n_units)


def _same_as_fx(model: nn.Module, x: torch.Tensor) -> pb.ChannelGraph:
    eager = pb.trace(model, x)
    fx = pb.trace(model, x, tracer="fx")
    assert _structure(eager) == _structure(fx)
    return eager


# Every coupling of the zoo: residuals, depthwise + SE, concat, shuffle via x.size(), grouped convs, channels-last
# LayerNorm and layer scale, flatten -> linear, aux branches, fixed-size reshapes of a transformer.
ZOO = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "densenet121", "efficientnet_b0", "regnet_y_400mf",
       "convnext_tiny", "vgg11", "squeezenet1_1", "googlenet", "vit_b_32"]


@pytest.mark.parametrize("name", ZOO)
def test_eager_equals_fx_on_the_zoo(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    g = _same_as_fx(model, torch.randn(1, 3, 224, 224))
    assert g.groups


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), seed=st.integers(0, 2**16))
def test_eager_equals_fx_on_random_architectures(arch, seed: int):
    kinds, widths, ks, head = arch
    torch.manual_seed(seed)
    _same_as_fx(RandomNet(kinds, widths, ks, head, seed).eval(), torch.randn(2, 3, 8, 8))


def _apply_equals_mask(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> nn.Module:
    g = pb.trace(model, x)
    plan = pb.plan(g, pb.score(model, g, "l1"), ratio=ratio)
    pruned, masked = pb.apply(model, plan).eval(), pb.mask(model, plan).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), rtol=1e-4, atol=1e-5)
    return pruned


class ShapeBranch(nn.Module):
    """Python control flow on shapes: fx cannot trace it, running forward can."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        if x.shape[1] > 4 and x.size(-1) % 2 == 0:
            x = torch.relu(self.b(x))
        return self.head(x.mean((2, 3)))


def test_shape_control_flow_traces_and_prunes():
    model, x = ShapeBranch().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(TraceError, match="torch.fx could not trace"):
        pb.trace(model, x, tracer="fx")
    g = pb.trace(model, x)
    # the branch reads a's channel count: pruning a could flip it, so a's channels are kept; b prunes
    assert {m.name for gr in g.groups for m in gr.producers} == {"b"}
    assert any("compares a channel count" in r for r in g.pinned)
    pruned = _apply_equals_mask(model, x)
    assert (pruned.a.out_channels, pruned.b.in_channels, pruned.b.out_channels, pruned.head.in_features) == (8, 8, 4, 4)


class ShuffleBySize(nn.Module):
    """Channel shuffle with sizes read from the tensor (ShuffleNet's way): the sizes follow the pruned width."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.head(self.b(x).mean((2, 3)))


def test_sizes_read_from_a_tensor_follow_its_channels():
    model, x = ShuffleBySize().eval(), torch.randn(2, 3, 4, 4)
    g = _same_as_fx(model, x)
    assert g.group_of("a") is not None  # the shuffle keeps it prunable, in pairs
    pruned = _apply_equals_mask(model, x)
    assert pruned.a.out_channels == 4 and pruned.b.in_channels == 4


class WithConstant(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a, self.head = nn.Conv2d(3, 6, 1), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        if self.op == "tensor":  # a tensor made in forward, as wide as the channels: they must stay
            x = torch.ones(1, 6, 1, 1) + x
        elif self.op == "transpose":  # x.mT: no rule, the channels it reads are kept
            x = x.mT.mT
        elif self.op == "new_module":  # a module made inside forward is no submodule: its channels are kept
            x = nn.BatchNorm2d(6).eval()(x)
        elif self.op == "new_conv":  # one of a class the model has (Conv2d) is seen as a module call, and kept
            with torch.random.fork_rng():  # the same weights every call, so that pruned and masked compare
                torch.manual_seed(0)
                conv = nn.Conv2d(6, 6, 1)
            x = conv(x)
        elif self.op == "new_relu":  # a parameter-free one runs its forward: F.relu, which keeps the channels
            x = nn.ReLU()(x)
        return self.head(x.mean((2, 3)))


def test_a_parameter_free_module_made_inside_forward_is_traced_through():
    model, x = WithConstant("new_relu").eval(), torch.randn(2, 3, 4, 4)
    g = pb.trace(model, x)
    assert g.group_of("a").size == 6 and g.group_of("head", "in") is g.group_of("a")
    _apply_equals_mask(model, x)


@pytest.mark.parametrize("op", ["tensor", "transpose", "new_module", "new_conv"])
def test_what_no_rule_understands_keeps_its_channels(op):
    model, x = WithConstant(op).eval(), torch.randn(2, 3, 4, 4)
    g = pb.trace(model, x)
    assert g.group_of("a") is None and g.pinned
    _apply_equals_mask(model, x)
    if op in ("transpose", "new_conv"):  # the others are pinned by rules that know them
        with pytest.raises(TraceError, match="no channel rule"):
            pb.trace(model, x, strict=True)


class ValueBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 1))
        self.inner = Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.block(x))


class Inner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(7, -1)


def test_clear_errors_and_patches_restored():
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    with pytest.raises(TraceError, match="depends on a tensor's values"):
        pb.trace(ValueBranch(), torch.randn(1, 3, 4, 4))
    with pytest.raises(TraceError, match=r"inner: Tensor.view: failed on the example inputs' shapes"):
        pb.trace(Broken(), torch.randn(1, 3, 4, 4))
    with pytest.raises(TypeError, match="example_inputs has 2 tensors"):
        pb.trace(Broken(), (torch.randn(1, 3, 4, 4), torch.randn(1)))
    with pytest.raises(ValueError, match="tracer must be one of"):
        pb.trace(Broken(), torch.randn(1, 3, 4, 4), tracer="jit")
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_
    # modules run normally after a failed trace
    assert Broken().block(torch.randn(1, 3, 4, 4)).shape == (1, 4, 4, 4)


def test_parameters_read_in_forward_are_named():
    """ConvNeXt's layer scale is read by its block's forward: the eager tracer slices it like fx does."""
    model = torchvision.models.convnext_tiny(num_classes=10).eval()
    g = pb.trace(model, torch.randn(1, 3, 64, 64))
    scales = [k for k in g.slots if k[0] == "param" and k[1].endswith("layer_scale")]
    assert len(scales) == 18  # 3 + 3 + 9 + 3 blocks
