"""CIFAR ResNets of He et al. 2016, section 4.2: ResNet-20/32/56/110.

A 3x3 stem of 16 channels, three stages of n = (depth - 2) / 6 basic blocks with 16, 32 and 64 channels (the
first block of stages 2 and 3 has stride 2), global average pooling and one fully connected layer. At 32x32 the
convolutions of ResNet-20 cost 0.44 M MACs (stem), 2.36 M per full-width 3x3 conv and 1.18 M per strided one,
40.55 M in all (Sandor et al., Table 2) plus what the shortcuts add.

Shortcuts where the shape changes (``shortcut=``):

- ``"B"`` (default): a 1x1 stride-2 convolution + BatchNorm projection. It is a plain conv + BN, so the pruning
  engine prunes the residual channel space through it like any other layer. It adds 2 x (conv + BN) = 2,752
  parameters and 0.26 M MACs to ResNet-20 (272,474 parameters, 40.81 M MACs).
- ``"A"`` (the paper's CIFAR setting): parameter-free, stride-2 subsampling and zero-padded channels
  (269,722 parameters and 40.55 M MACs for ResNet-20: He et al.'s "0.27 M"). The padding is a fixed channel
  count, so pruning the residual channel space of such a model needs the padding amounts to follow the kept
  channels; an engine that cannot do that must leave the residual channels of those stages alone.

Default "B" because it prunes cleanly and its numbers differ from "A" by 1 % of parameters and 0.6 % of MACs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._init import he_init
from ._registry import register

__all__ = ["CifarResNet", "BasicBlock", "PadShortcut", "cifar_resnet"]

_SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A shortcut: take every ``stride``-th pixel and zero-pad ``pad_before`` / ``pad_after`` channels."""

    def __init__(self, stride: int, pad_before: int, pad_after: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = pad_before
        self.pad_after = pad_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_before={self.pad_before}, pad_after={self.pad_after}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            extra = planes - in_planes
            self.shortcut = PadShortcut(stride, extra // 2, extra - extra // 2)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of ``depth = 6 n + 2`` layers."""

    def __init__(self, depth: int = 20, num_classes: int = 10, shortcut: str = "B", in_channels: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"cifar_resnet: depth must be 6n + 2 with n >= 1 (20, 32, 56, 110, ...), got {depth}")
        if shortcut not in _SHORTCUTS:
            raise ValueError(f"cifar_resnet: shortcut must be 'A' (zero-pad) or 'B' (1x1 conv + BN projection), "
                             f"got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. initialisation (their reference [13]) for convolutions; BN starts as identity.
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def cifar_resnet(depth: int, num_classes: int = 10, shortcut: str = "B", in_channels: int = 3) -> CifarResNet:
    """Build a CIFAR ResNet; see the module docstring for ``shortcut``."""
    return CifarResNet(depth=depth, num_classes=num_classes, shortcut=shortcut, in_channels=in_channels)


def _make(depth: int):
    def build(num_classes: int = 10, shortcut: str = "B", in_channels: int = 3) -> CifarResNet:
        return cifar_resnet(depth, num_classes=num_classes, shortcut=shortcut, in_channels=in_channels)

    build.__name__ = f"cifar_resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for 32x32 inputs (He et al. 2016); shortcut 'B' (default) or 'A'."
    return build


for _depth in (20, 32, 56, 110):
    register(f"cifar_resnet{_depth}", input_size=(3, 32, 32), default_num_classes=10,
             family="cifar_resnet")(_make(_depth))
