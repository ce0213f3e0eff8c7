"""Layers called in their functional form from a module's own forward (timm's BatchNormAct2d, Conv2dSame, plain
parameters passed to F.conv2d / F.linear / F.batch_norm): traced through, pruned, pruned == masked, and the layers'
attributes tell the truth afterwards. Both tracers give the same graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _engine_util import assert_apply_equals_mask

import pybench as pb


class BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in short: a BatchNorm2d whose forward calls F.batch_norm, then an activation."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)
        return F.relu(x)


class ConvSame(nn.Conv2d):
    """timm's Conv2dSame in short: pad, then F.conv2d with the conv's own weight."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class GNSub(nn.GroupNorm):
    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class PlainLayers(nn.Module):
    """Weights as bare parameters and buffers, used through the functional forms."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.b = nn.Parameter(torch.randn(cout) * 0.1)
        self.gamma = nn.Parameter(torch.rand(cout) + 0.5)
        self.beta = nn.Parameter(torch.randn(cout) * 0.1)
        self.register_buffer("mean", torch.randn(cout) * 0.1)
        self.register_buffer("var", torch.rand(cout) + 0.5)

    def forward(self, x):
        x = F.conv2d(x, self.w, self.b, 1, 1)
        return F.relu(F.batch_norm(x, self.mean, self.var, self.gamma, self.beta, False, 0.1, 1e-5))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvSame(3, 16, 3, bias=False)
        self.bn1 = BNAct(16)
        self.plain = PlainLayers(16, 24)
        self.conv = nn.Conv2d(24, 32, 1)
        self.gn = GNSub(4, 32)
        self.fc_w = nn.Parameter(torch.randn(20, 32) * 0.2)
        self.fc_b = nn.Parameter(torch.randn(20) * 0.1)
        self.head = nn.Linear(20, 5)

    def forward(self, x):
        x = self.plain(self.bn1(self.stem(x)))
        x = F.relu(self.gn(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(F.relu(F.linear(x, self.fc_w, self.fc_b)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = Net().eval()
    for bn in (m.bn1,):
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return m, torch.randn(2, 3, 12, 12)


def test_functional_layers_are_traced_through_and_pruned(net):
    m, x = net
    g = pb.trace(m, x)
    assert g.pinned == ["model output"], g.pinned
    assert sorted(g.size for g in g.groups) == [16, 20, 24, 32]
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=0.5)
    pruned, _, out = assert_apply_equals_mask(m, p, x)
    assert out.shape == (2, 5)
    # the torch.nn layers called functionally keep their attributes true; the bare parameters are sliced
    assert (pruned.stem.out_channels, pruned.stem.weight.shape[0]) == (8, 8)
    assert (pruned.bn1.num_features, pruned.bn1.running_mean.shape) == (8, (8,))
    assert pruned.plain.w.shape == (12, 8, 3, 3) and pruned.plain.b.shape == (12,)
    assert all(t.shape == (12,) for t in (pruned.plain.gamma, pruned.plain.beta, pruned.plain.mean, pruned.plain.var))
    assert pruned.conv.weight.shape == (16, 12, 1, 1) and pruned.gn.num_channels == 16 and pruned.gn.num_groups == 4
    assert pruned.fc_w.shape == (10, 16) and pruned.fc_b.shape == (10,) and pruned.head.in_features == 10
    assert isinstance(pruned.fc_w, nn.Parameter) and pruned.fc_w.requires_grad


def test_both_tracers_give_the_same_graph(net):
    m, x = net
    a, b = pb.trace(m, x), pb.trace(m, x, tracer="fx")
    assert a.slots.keys() == b.slots.keys()
    assert [g.size for g in a.groups] == [g.size for g in b.groups] and a.pinned == b.pinned
    assert a.consumed == b.consumed == {("param", "plain.w", 1), ("param", "fc_w", 1)}


def test_mask_zeroes_the_input_columns_of_a_functional_consumer(net):
    m, x = net
    g = pb.trace(m, x)
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=0.5)
    masked = pb.mask(m, p)
    dropped = (masked.plain.w.abs().sum(dim=(0, 2, 3)) == 0).sum().item()
    assert dropped == 8 and (m.plain.w.abs().sum(dim=(0, 2, 3)) > 0).all()
    assert (masked.fc_w.abs().sum(dim=0) == 0).sum().item() == 16


class StdConv(nn.Conv2d):
    """Weight standardisation (timm's StdConv2d): the conv's weight is computed in forward."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_a_computed_weight_keeps_its_channels_and_says_why():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), StdConv(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 10, 10)
    g = pb.trace(m, x)
    assert [grp.size for grp in g.groups] == []
    assert any("computed in forward" in r for r in g.pinned), g.pinned


def test_functional_norms_across_channels_outside_their_module_are_kept():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.g = nn.Parameter(torch.ones(8))

        def forward(self, x):
            y = self.conv(x)
            return F.group_norm(y, 2, self.g), F.layer_norm(y, y.shape[2:]), F.layer_norm(y.movedim(1, -1), (8,))

    g = pb.trace(Odd().eval(), torch.randn(1, 3, 6, 6))
    assert g.groups == [] and any("group_norm across channels" in r for r in g.pinned)


def test_layer_norm_over_spatial_axes_passes_channels():
    class Spatial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(F.layer_norm(y, y.shape[2:]))

    m, x = Spatial().eval(), torch.randn(2, 3, 6, 6)
    g = pb.trace(m, x)
    assert [grp.size for grp in g.groups] == [8]
    assert_apply_equals_mask(m, pb.plan(g, pb.score(m, g, "l1"), ratio=0.5), x)


def test_a_computed_per_channel_argument_is_kept():
    class Computed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
            self.scale = nn.Parameter(torch.ones(8))

        def forward(self, x):
            y = self.conv(x)
            return self.out(F.batch_norm(y, None, None, self.scale * 2, None, True))

    g = pb.trace(Computed().eval(), torch.randn(2, 3, 6, 6))
    assert g.groups == [] and any("computed tensor" in r for r in g.pinned), g.pinned


TIMM = ["efficientnet_b0", "mobilenetv3_small_100", "regnety_002", "resnetv2_50", "densenet121", "cspresnet50",
        "dla34", "ghostnet_100", "repvgg_a0", "lcnet_050"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM)
def test_timm_models_prune_through_their_functional_layers(name):
    timm = pytest.importorskip("timm", reason="timm is the [timm] extra")
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    before = sum(p.numel() for p in m.parameters())
    g = pb.trace(m, x)
    assert not any("batch_norm: no channel rule" in r for r in g.pinned), g.pinned
    pruned, _, out = assert_apply_equals_mask(m, pb.plan(g, pb.score(m, g, "l1"), ratio=0.5), x)
    assert out.shape == (2, 10)
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * before  # about half the channels: ~1/4 the weights


def test_pins_are_counted_listed_and_warned_about():
    import warnings

    from pybench.prune.pipeline import PinnedChannelsWarning, pin_summary

    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), StdConv(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 10, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, plan = pb.prune(m, x, ratio=0.5)
    pinned = dict(plan.pinned)
    assert pinned["model output"] == 4
    # the reason names the module ("2") and the operation; it keeps the channels it reads and those it makes
    assert pinned["2: conv2d: convolution with a weight or bias computed in forward (no parameter to slice)"] == 24
    summary = pin_summary(plan.graph)
    assert (summary["channels"], summary["pinned"]) == (24, 24)
    msgs = [str(w.message) for w in caught if issubclass(w.category, PinnedChannelsWarning)]
    assert len(msgs) == 1 and "24 of its 24 channels cannot be pruned" in msgs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PinnedChannelsWarning)  # a model that prunes fine: no warning
        _, plan = pb.prune(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), x)
    assert pin_summary(plan.graph) == {"channels": 8, "pinned": 0, "reasons": []}


def test_pad_passes_channels_unless_it_pads_them():
    class Pads(nn.Module):
        def __init__(self, pad) -> None:
            super().__init__()
            self.a, self.b, self.pad = nn.Conv2d(3, 8, 3), nn.Conv2d(8 + sum(pad[4:6]), 4, 1), pad

        def forward(self, x):
            return self.b(F.pad(self.a(x), self.pad))

    x = torch.randn(2, 3, 8, 8)
    spatial = Pads((1, 2, 0, 1)).eval()
    g = pb.trace(spatial, x)
    assert [grp.size for grp in g.groups] == [8]
    assert_apply_equals_mask(spatial, pb.plan(g, pb.score(spatial, g, "l1"), ratio=0.5), x)
    g = pb.trace(Pads((0, 0, 0, 0, 1, 1)).eval(), x)  # pads the channel axis: those channels stay
    assert g.groups == [] and any("pads the channel axis" in r for r in g.pinned)


@pytest.mark.parametrize("groups,cin,cout", [(2, 8, 16), (4, 16, 8), (2, 6, 10)])
def test_grouped_convs_of_different_widths_prune_inputs_and_outputs_apart(groups, cin, cout):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, cin, 3), nn.BatchNorm2d(cin), nn.ReLU(),
                      nn.Conv2d(cin, cout, 3, groups=groups), nn.BatchNorm2d(cout), nn.ReLU(),
                      nn.Conv2d(cout, 5, 1)).eval()
    x = torch.randn(2, 3, 9, 9)
    g = pb.trace(m, x)
    assert sorted(grp.size for grp in g.groups) == sorted([cin, cout]) and g.pinned == ["model output"]
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=0.5)
    pruned, _, _ = assert_apply_equals_mask(m, p, x)
    conv = pruned[3]
    kin = cin - (cin // 2 // groups) * groups  # the same number removed in every group
    kout = cout - (cout // 2 // groups) * groups
    assert (conv.in_channels, conv.out_channels, conv.groups) == (kin, kout, groups)
    assert conv.weight.shape == (kout, kin // groups, 3, 3)


def test_prune_within_a_detector_prunes_its_backbone_and_the_detector_still_runs():
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    m = m.eval()
    images = [torch.rand(3, 160, 200)]
    body = m.backbone.body
    before = sum(p.numel() for p in body.parameters())
    pruned, plan = pb.prune(m, (images,), ratio=0.5, within="backbone.body")
    assert sum(p.numel() for p in pruned.backbone.body.parameters()) < 0.5 * before
    assert pruned.backbone.fpn is not m.backbone.fpn and m.backbone.body is body  # a copy; the model is untouched
    with torch.no_grad():
        dets = pruned(images)
        seen = []
        hook = m.backbone.body.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
        m(images)
        hook.remove()
        feats = pruned.backbone.body(seen[0])
        want = pb.mask(body, plan)(seen[0])
    assert set(dets[0]) == {"boxes", "labels", "scores"}
    for k in feats:  # the channels leaving the backbone stay, so the FPN reads what it always read
        torch.testing.assert_close(feats[k], want[k], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"within='backbone.nope': FasterRCNN has no such submodule"):
        pb.prune(m, (images,), within="backbone.nope")


class MixedConv(nn.Module):
    """timm's MixedConv2d in short: split the input at self.splits, one conv per part, concatenate."""

    def __init__(self, splits: list[int], cout: int) -> None:
        super().__init__()
        self.splits = splits
        self.convs = nn.ModuleList(nn.Conv2d(s, cout, 3, padding=1) for s in splits)

    def forward(self, x):
        return torch.cat([c(p) for c, p in zip(self.convs, torch.split(x, self.splits, 1), strict=True)], 1)


class Res2(nn.Module):
    """Res2Net's split in short: x.split(self.width) into equal parts, each added to the previous part's output."""

    def __init__(self, width: int, scale: int) -> None:
        super().__init__()
        self.width, self.scale = width, scale
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(scale - 1))

    def forward(self, x):
        parts, outs, sp = x.split(self.width, 1), [], None
        for i, conv in enumerate(self.convs):
            sp = parts[i] if sp is None else sp + parts[i]
            sp = F.relu(conv(sp))
            outs.append(sp)
        return torch.cat([*outs, parts[-1]], 1)


def test_splits_at_module_attributes_prune_inside_each_part():
    torch.manual_seed(0)  # (fx cannot trace these: iterating a split's result is control flow to it)
    m = nn.Sequential(nn.Conv2d(3, 12, 1), nn.ReLU(), MixedConv([4, 8], 6), nn.ReLU(),
                      nn.Conv2d(12, 12, 1), nn.ReLU(), Res2(4, 3), nn.Conv2d(12, 5, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    g = pb.trace(m, x)
    assert g.pinned == ["model output"], g.pinned
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=0.5)
    pruned, _, _ = assert_apply_equals_mask(m, p, x)
    assert pruned[2].splits == [2, 4] and [c.in_channels for c in pruned[2].convs] == [2, 4]
    assert pruned[6].width == 2 and pruned[6].scale == 3  # Res2's parts shrink alike; its part count stays
    assert pruned[6]._pybench_size_attrs == ("width",) and pruned[2]._pybench_size_attrs == ("splits",)


def test_split_sizes_from_elsewhere_are_kept():
    class Literal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.b(x) + torch.split(self.a(x), 4, 1)[0]  # 4 is a literal, not an attribute

    g = pb.trace(Literal().eval(), torch.randn(1, 3, 4, 4))
    assert any("splits channels at fixed sizes" in r for r in g.pinned)
    g = pb.trace(nn.Sequential(nn.Conv2d(3, 16, 1), Res2(4, 4)).eval(), torch.randn(1, 3, 4, 4))
    assert any("splits channels at fixed sizes" in r for r in g.pinned)  # width == scale: which one? keep them


class LayerScaleBlock(nn.Module):
    """timm's ConvNeXt block in short: a per-channel gain reshaped to (1, C, 1, 1), then a residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x + self.pw(self.conv(x)).mul(self.gamma.reshape(1, -1, 1, 1))


@pytest.mark.parametrize("tracer", ["eager", "fx"])
def test_a_reshaped_parameter_is_sliced_with_its_channels(tracer):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), LayerScaleBlock(8), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 9, 9)
    g = pb.trace(m, x, tracer=tracer)
    assert g.pinned == ["model output"] and [grp.size for grp in g.groups] == [8]
    assert ("param", "1.gamma", 0) in g.slots
    pruned, _, _ = assert_apply_equals_mask(m, pb.plan(g, pb.score(m, g, "l1"), ratio=0.5), x)
    assert pruned[1].gamma.shape == (4,)


class GlobalResponseNorm(nn.Module):
    """timm's GRN (ConvNeXt-V2), as timm writes it: a mean over the channels of each channel's spatial L2 norm."""

    def __init__(self, dim: int, channels_last: bool) -> None:
        super().__init__()
        self.eps = 1e-6
        self.spatial_dim, self.channel_dim, self.wb_shape = ((1, 2), -1, (1, 1, 1, -1)) if channels_last else \
            ((2, 3), 1, (1, -1, 1, 1))
        self.weight = nn.Parameter(torch.randn(dim))
        self.bias = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        x_g = x.norm(p=2, dim=self.spatial_dim, keepdim=True)
        x_n = x_g / (x_g.mean(dim=self.channel_dim, keepdim=True) + self.eps)
        return x + torch.addcmul(self.bias.view(self.wb_shape), self.weight.view(self.wb_shape), x * x_n)


class GrnMlp(nn.Module):
    """ConvNeXt-V2's MLP: fc1 -> GELU -> GRN -> fc2, channels-last (Linear) or channels-first (1x1 conv)."""

    def __init__(self, c: int, hidden: int, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        lin = nn.Linear if channels_last else (lambda i, o: nn.Conv2d(i, o, 1))
        self.fc1, self.grn, self.fc2 = lin(c, hidden), GlobalResponseNorm(hidden, channels_last), lin(hidden, c)

    def forward(self, x):
        y = x.permute(0, 2, 3, 1) if self.channels_last else x
        y = self.fc2(self.grn(F.gelu(self.fc1(y))))
        return x + (y.permute(0, 3, 1, 2) if self.channels_last else y)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("tracer", ["eager", "fx"])
def test_grn_channels_prune_with_gamma_and_beta(tracer, channels_last):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), GrnMlp(8, 16, channels_last), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 9, 9)
    g = pb.trace(m, x, tracer=tracer)
    assert g.pinned == ["model output"] and sorted(grp.size for grp in g.groups) == [8, 16]
    assert g.reducers == {"1.grn": "grn"}  # pb.mask normalises over the kept channels, as the pruned GRN does
    pruned, masked, _ = assert_apply_equals_mask(m, pb.plan(g, pb.score(m, g, "l1"), ratio=0.5), x)
    assert pruned[1].grn.weight.shape == pruned[1].grn.bias.shape == (8,)
    assert (pruned[1].fc1.out_features if channels_last else pruned[1].fc1.out_channels) == 8
    assert type(masked[1].grn).__name__ == "MaskedGlobalResponseNorm"


class SelectiveKernel(nn.Module):
    """timm's SK unit in short: the input split evenly over the paths by ``in_channels // num_paths``, the paths
    stacked, a softmax over the path axis of a 1x1 conv's output viewed (paths, channels), a weighted sum."""

    def __init__(self, cin: int, cout: int, paths: int = 2) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.num_paths = cin, cout, paths
        self.paths = nn.ModuleList(nn.Sequential(nn.Conv2d(cin // paths, cout, 3, padding=1 + i, dilation=1 + i),
                                                 nn.BatchNorm2d(cout), nn.ReLU()) for i in range(paths))
        self.fc_reduce, self.fc_select = nn.Conv2d(cout, 4, 1), nn.Conv2d(4, cout * paths, 1)

    def forward(self, x):
        parts = torch.split(x, self.in_channels // self.num_paths, 1)
        x = torch.stack([op(p) for op, p in zip(self.paths, parts, strict=True)], dim=1)
        a = self.fc_select(self.fc_reduce(x.sum(1).mean((2, 3), keepdim=True)).relu())
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, self.num_paths, c // self.num_paths, h, w), dim=1)
        return (x * a).sum(dim=1)


def test_split_attention_prunes_inside_the_paths_and_rewrites_the_split():
    torch.manual_seed(0)  # eager only: torch.fx cannot iterate the split's parts (a Proxy), as for timm's own SK
    m = nn.Sequential(nn.Conv2d(3, 8, 3), SelectiveKernel(8, 8), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 9, 9)
    g = pb.trace(m, x)
    assert g.pinned == ["model output"], g.pinned
    assert sorted(grp.size for grp in g.groups) == [4, 8, 8]  # fc_reduce; SK's input (blocked in halves); output
    pruned, _, _ = assert_apply_equals_mask(m, pb.plan(g, pb.score(m, g, "l1"), ratio=0.5), x)
    sk = pruned[1]
    assert sk.in_channels == 4 and [p[0].in_channels for p in sk.paths] == [2, 2]  # the split's size follows
    assert sk.fc_select.out_channels == 8 and [p[0].out_channels for p in sk.paths] == [4, 4]


def test_softmax_over_the_channel_axis_itself_stays_pinned():
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Softmax(dim=1), nn.Conv2d(8, 4, 1)).eval()
    g = pb.trace(m, torch.randn(1, 3, 4, 4))
    assert any("normalises across channels" in r for r in g.pinned) and not g.groups
