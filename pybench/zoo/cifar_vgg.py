"""VGG-16 for CIFAR (32x32) as in Wang et al.'s CIFAR-10 table: 13 conv3x3 + BN + ReLU layers in five stages
(64, 64 | 128, 128 | 256 x 3 | 512 x 3 | 512 x 3, max-pool after each stage), so a 32x32 input reaches 1x1x512;
then fc1 (512 -> 512, ReLU, dropout) and the classifier (512 -> num_classes).
"""

from __future__ import annotations

import torch
from torch import nn

from ._init import he_init
from ._registry import register

__all__ = ["CifarVGG", "VGG16_CFG"]

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                    512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG with BN for 32x32 inputs, fc1 of ``fc_width`` and a linear classifier."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10, fc_width: int = 512,
                 dropout: float = 0.5, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # 1x1 already at 32x32; keeps other input sizes working
        self.fc1 = nn.Linear(c, fc_width)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(fc_width, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(self.dropout(self.relu(self.fc1(x))))


@register("cifar_vgg16", input_size=(3, 32, 32), default_num_classes=10, family="cifar_vgg")
def cifar_vgg16(num_classes: int = 10, fc_width: int = 512, dropout: float = 0.5, in_channels: int = 3) -> CifarVGG:
    """VGG-16 (13 convs with BN) + fc1 of 512 + classifier, for 32x32 inputs."""
    return CifarVGG(VGG16_CFG, num_classes=num_classes, fc_width=fc_width, dropout=dropout, in_channels=in_channels)
