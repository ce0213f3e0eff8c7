"""MobileNet v1 (Howard et al. 2017) as Babel prunes it (the Keras MobileNet-224, width 1.0).

A regular 3x3 stride-2 conv of 32 channels, then 13 depthwise-separable blocks (depthwise 3x3 + BN + ReLU6,
pointwise 1x1 + BN + ReLU6) up to 1024 channels, global average pooling, dropout and a classifier with bias.
Convolutions have no bias (BN follows each). At 1000 classes it has exactly 4,231,976 parameters (the Keras
model's trainable count; BN running statistics are buffers) and takes 224x224 inputs.
Only the regular and pointwise convs choose their filters; each depthwise conv is coupled to its input.
"""

from __future__ import annotations

import torch
from torch import nn

from ._init import he_init
from ._registry import register

__all__ = ["MobileNetV1", "BLOCKS"]

# (out_channels, stride) of the 13 depthwise-separable blocks at width 1.0
BLOCKS: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                                       (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (+BN+ReLU6) then pointwise 1x1 (+BN+ReLU6)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = _conv_bn(cin, cin, 3, stride, groups=cin)
        self.pointwise = _conv_bn(cin, cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(nn.Module):
    """MobileNet v1 with width multiplier ``width_mult``."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 1e-3,
                 in_channels: int = 3) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"mobilenet_v1: width_mult must be > 0, got {width_mult}")

        def w(c: int) -> int:
            return max(8, int(c * width_mult))

        c = w(32)
        self.stem = _conv_bn(in_channels, c, 3, 2)
        blocks = []
        for cout, stride in BLOCKS:
            blocks.append(DepthwiseSeparable(c, w(cout), stride))
            c = w(cout)
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, num_classes)
        he_init(self)  # the classifier is the last module, so the RNG draws keep their order
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(self.dropout(x))


@register("mobilenet_v1", input_size=(3, 224, 224), default_num_classes=1000, family="mobilenet_v1")
def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 1e-3,
                 in_channels: int = 3) -> MobileNetV1:
    """MobileNet v1 (Keras MobileNet-224 layout); 4,231,976 parameters at width 1.0 and 1000 classes."""
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, dropout=dropout, in_channels=in_channels)
