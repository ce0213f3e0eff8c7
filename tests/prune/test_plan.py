"""pb.plan and pb.score: counts per group, rounding, clamps, scopes, criteria and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from _engine_util import create  # noqa: F401

import pybench as pb


@pytest.fixture(scope="module")
def resnet18():
    m = torchvision.models.resnet18(num_classes=10).eval()
    return m, pb.trace(m, torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.7, 0.99])
def test_local_removes_floor_ratio_n(resnet18, ratio):
    m, g = resnet18
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=ratio)
    for grp, kept in p.keep.items():
        assert kept.numel() == max(1, grp.size - math.floor(ratio * grp.size))
        assert torch.equal(kept, kept.sort().values) and kept.unique().numel() == kept.numel()


def test_keeps_the_highest_scores(resnet18):
    m, g = resnet18
    scores = {grp: torch.arange(grp.size, dtype=torch.float64).flip(0) for grp in g.groups}
    p = pb.plan(g, scores, ratio=0.25)
    for grp, kept in p.keep.items():
        n_keep = grp.size - grp.size // 4
        assert torch.equal(kept, torch.arange(n_keep))


def test_round_to_and_min_channels(resnet18):
    m, g = resnet18
    s = pb.score(m, g, "l1")
    p = pb.plan(g, s, ratio=0.3, round_to=8)
    for grp, kept in p.keep.items():
        k = kept.numel()
        assert k % 8 == 0 and grp.size - k <= math.floor(0.3 * grp.size)
    p = pb.plan(g, s, ratio=0.99, min_channels=16)
    assert all(k.numel() == 16 for k in p.keep.values())
    assert len(p.notes) == len(p.keep) and "min_channels=16" in p.notes[0]


def test_global_scope_removes_ratio_of_all_channels(resnet18):
    m, g = resnet18
    p = pb.plan(g, pb.score(m, g, "l1"), ratio=0.5, scope="global")
    total = sum(grp.size for grp in g.groups)
    assert p.n_removed == math.floor(0.5 * total)
    assert all(k.numel() >= 1 for k in p.keep.values())
    # groups are not all cut equally: global ranking differs from local
    fractions = {round(1 - k.numel() / grp.size, 3) for grp, k in p.keep.items()}
    assert len(fractions) > 1


def test_ignore(resnet18):
    m, g = resnet18
    s = pb.score(m, g, "l1")
    p = pb.plan(g, s, ratio=0.5, ignore=["layer4"])
    assert g.group_of("layer4.0.conv1") not in p.keep and g.group_of("layer4.0.conv1") in p.ignored
    assert g.group_of("layer3.0.conv1") in p.keep
    with pytest.raises(ValueError, match="ignore names 'layer9'"):
        pb.plan(g, s, ratio=0.5, ignore=["layer9"])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "half"])
def test_bad_ratio(resnet18, bad):
    m, g = resnet18
    with pytest.raises(ValueError, match="ratio must be a number in \\[0, 1\\)"):
        pb.plan(g, pb.score(m, g, "l1"), ratio=bad)


def test_bad_scope_and_scores(resnet18):
    m, g = resnet18
    s = pb.score(m, g, "l1")
    with pytest.raises(ValueError, match="scope must be"):
        pb.plan(g, s, scope="layer")
    grp = g.groups[0]
    with pytest.raises(ValueError, match=f"must have shape \\({grp.size},\\)"):
        pb.plan(g, {grp: torch.ones(grp.size + 1)})


def test_unknown_criterion_lists_valid_ones(resnet18):
    m, g = resnet18
    with pytest.raises(ValueError, match="'l1'.*'l2'|'aaws'.*'bn_scale'.*'l1'"):
        pb.score(m, g, "l7")


def test_l1_sums_producers_of_a_residual_group(resnet18):
    m, g = resnet18
    s = pb.score(m, g, "l1")
    grp = g.group_of("conv1")
    expected = sum(m.get_submodule(n).weight.detach().abs().sum((1, 2, 3)).double()
                   for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2"))
    torch.testing.assert_close(s[grp], expected, rtol=1e-5, atol=1e-6)


def test_weight_criteria_against_eager(resnet18):
    m, g = resnet18
    grp = g.group_of("layer2.0.conv1")  # one producer
    w = m.layer2[0].conv1.weight.detach().double()
    torch.testing.assert_close(pb.score(m, g, "l2")[grp], w.pow(2).sum((1, 2, 3)).sqrt(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pb.score(m, g, "aaws")[grp], w.abs().mean((1, 2, 3)), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        m.layer2[0].bn1.weight.copy_(torch.linspace(-1, 1, 128))
    torch.testing.assert_close(pb.score(m, g, "bn_scale")[grp], torch.linspace(-1, 1, 128).abs().double())
    r1, r2 = pb.score(m, g, "random", seed=3), pb.score(m, g, "random", seed=3)
    assert torch.equal(r1[grp], r2[grp]) and not torch.equal(r1[grp], pb.score(m, g, "random", seed=4)[grp])


def test_grouped_conv_prunes_equally_per_group():
    m = nn.Sequential(nn.Conv2d(3, 32, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=4),
                      nn.GroupNorm(4, 32), nn.ReLU(), nn.Conv2d(32, 5, 1)).eval()
    g = pb.trace(m, torch.randn(1, 3, 8, 8))
    grp = g.group_of("0")
    assert grp is g.group_of("3") and grp.blocks == 4
    s = {grp: torch.from_numpy(np.random.default_rng(0).random(32))}
    p = pb.plan(g, s, ratio=0.5)
    kept = p.keep[grp].numpy()
    assert np.bincount(grp.block_of[kept], minlength=4).tolist() == [4, 4, 4, 4]
