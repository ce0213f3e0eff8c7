"""Property: for random small architectures mixing every coupling pb.trace knows, apply == mask.

Each example draws a chain of blocks -- conv/BN, residual (identity or projected), inverted residual with a depthwise
conv (optionally a channel multiplier), grouped conv + GroupNorm, squeeze-excitation, concat of branches,
chunk / split, channel shuffle, a channels-last block (permute, LayerNorm, Linear, layer scale) and dropout -- a head
(global pooling or flatten -> linear), a ratio, a scope and random scores.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from _engine_util import calibrate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pybench as pb

BLOCKS = ["conv", "residual", "project", "inverted", "grouped", "se", "concat", "chunk", "split", "shuffle",
          "channels_last", "dropout"]


class Block(nn.Module):
    def __init__(self, kind: str, cin: int, width: int, k: int, rng: torch.Generator) -> None:
        super().__init__()
        self.kind = kind
        c = cin
        if kind == "conv":
            self.body = nn.Sequential(nn.Conv2d(c, width, k, padding=k // 2), nn.BatchNorm2d(width), nn.ReLU())
            self.cout = width
        elif kind == "residual":
            self.body = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, c, 3, padding=1, bias=True), nn.BatchNorm2d(c))
            self.cout = c
        elif kind == "project":
            self.body = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width))
            self.proj = nn.Conv2d(c, width, 1, bias=True)
            self.cout = width
        elif kind == "inverted":
            mult = 1 + int(torch.randint(0, 2, (1,), generator=rng))
            self.body = nn.Sequential(nn.Conv2d(c, width, 1), nn.BatchNorm2d(width), nn.ReLU6(),
                                      nn.Conv2d(width, width * mult, 3, padding=1, groups=width),
                                      nn.BatchNorm2d(width * mult), nn.ReLU6(), nn.Conv2d(width * mult, c, 1))
            self.cout = c
        elif kind == "grouped":
            w = 4 * max(1, width // 4)
            self.body = nn.Sequential(nn.Conv2d(c, w, 1), nn.GroupNorm(2, w), nn.ReLU(),
                                      nn.Conv2d(w, w, 3, padding=1, groups=4), nn.BatchNorm2d(w), nn.ReLU())
            self.cout = w
        elif kind == "se":
            self.fc1, self.fc2 = nn.Conv2d(c, max(1, c // 2), 1), nn.Conv2d(max(1, c // 2), c, 1)
            self.cout = c
        elif kind == "concat":
            self.a = nn.Sequential(nn.Conv2d(c, width, 1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(c, width + 1, 3, padding=1), nn.ReLU())
            self.cout = c + 2 * width + 1
        elif kind == "chunk":
            w = 2 * max(1, width // 2)
            self.pre = nn.Conv2d(c, w, 1)
            self.post = nn.Conv2d(w // 2, w // 2, 3, padding=1, groups=w // 2)
            self.cout = w
        elif kind == "split":
            self.pre = nn.Conv2d(c, width + 2, 1)
            self.cout = width + 2
        elif kind == "shuffle":
            w = 2 * max(1, width // 2)
            self.pre = nn.Conv2d(c, w, 1)
            self.shuffle = nn.ChannelShuffle(2)
            self.cout = w
        elif kind == "channels_last":
            self.ln = nn.LayerNorm(c)
            self.fc1, self.fc2 = nn.Linear(c, width), nn.Linear(width, c)
            self.scale = nn.Parameter(torch.rand(c, 1, 1, generator=rng) + 0.5)
            self.cout = c
        elif kind == "dropout":
            self.body = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(c, width, 1), nn.Hardswish())
            self.cout = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.kind
        if kind in ("conv", "dropout"):
            return self.body(x)
        if kind in ("residual", "inverted"):
            return torch.relu(x + self.body(x))
        if kind == "project":
            return torch.relu(self.body(x) + self.proj(x))
        if kind == "grouped":
            return self.body(x)
        if kind == "se":
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
            return x * s
        if kind == "concat":
            return torch.cat([x, self.a(x), self.b(x)], dim=1)
        if kind == "chunk":
            a, b = self.pre(x).chunk(2, dim=1)
            return torch.cat([a, self.post(b)], dim=1)
        if kind == "split":
            y = self.pre(x)
            a, b = torch.split(y, [2, y.shape[1] - 2], dim=1)
            return torch.cat([b, a * 2], dim=1)
        if kind == "shuffle":
            return self.shuffle(torch.relu(self.pre(x)))
        y = x.permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.ln(y)))).permute(0, 3, 1, 2)
        return x + self.scale * y


class RandomNet(nn.Module):
    def __init__(self, kinds: list[str], widths: list[int], ks: list[int], head: str, seed: int) -> None:
        super().__init__()
        rng = torch.Generator().manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        blocks, c = [], 6
        for kind, w, k in zip(kinds, widths, ks, strict=True):
            b = Block(kind, c, w, k, rng)
            blocks.append(b)
            c = b.cout
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.fc = nn.Linear(c * (4 if head == "flatten" else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        if self.head == "flatten":
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 2), 1))
        return self.fc(x.mean((2, 3)))


@st.composite
def architectures(draw):
    n = draw(st.integers(1, 5))
    kinds = draw(st.lists(st.sampled_from(BLOCKS), min_size=n, max_size=n))
    widths = draw(st.lists(st.integers(2, 10), min_size=n, max_size=n))
    ks = draw(st.lists(st.sampled_from([1, 3]), min_size=n, max_size=n))
    head = draw(st.sampled_from(["pool", "flatten"]))
    return kinds, widths, ks, head


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), seed=st.integers(0, 2**16), ratio=st.floats(0.0, 0.9),
       scope=st.sampled_from(["local", "global"]), criterion=st.sampled_from(["random", "l1", "bn_scale"]))
def test_random_architectures_apply_equals_mask(arch, seed, ratio, scope, criterion):
    kinds, widths, ks, head = arch
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 8, 8)
    m = calibrate(RandomNet(kinds, widths, ks, head, seed), x)
    g = pb.trace(m, x)
    p = pb.plan(g, pb.score(m, g, criterion, seed=seed), ratio=ratio, scope=scope)
    pruned = pb.apply(m, p).eval()
    masked = pb.mask(m, p).eval()
    with torch.no_grad():
        a, b, ref = pruned(x), masked(x), m(x)
    assert a.shape == ref.shape == (2, 3)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if ratio == 0.0:
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-6)
    n_params = sum(t.numel() for t in pruned.parameters())
    assert n_params <= sum(t.numel() for t in m.parameters())
