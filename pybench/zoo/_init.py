"""Weight initialisation shared by the zoo's own families."""

from __future__ import annotations

from torch import nn


def he_init(model: nn.Module) -> None:
    """He et al. (fan-out, ReLU) for convolutions; batch norms start as the identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
