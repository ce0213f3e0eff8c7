"""torchvision's classification models, always built with ``weights=None`` (random init, never a hub download)."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from ._model_entry import Builder

__all__ = ["build", "models"]

# inception_v3 is defined for 299x299 inputs; every other torchvision classifier for 224x224.
_INPUT_SIZES = {"inception_v3": (3, 299, 299)}


def build(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)``."""
    import torchvision

    if "weights" in kwargs or "weights_backbone" in kwargs:
        # pybench never downloads: a weights= argument of pb.zoo.create is a local file, handled by the caller.
        raise ValueError(f"zoo: torchvision weights enums are not accepted for {name!r}; pass weights=<local path "
                         "to a state dict> to pybench.zoo.create instead")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def models() -> list[tuple[str, tuple[int, ...], Builder]]:
    """(name, input size, builder) of every model of ``torchvision.models.list_models(module=torchvision.models)``;
    the zoo registers those whose names it does not have."""
    import torchvision

    return [(name, _INPUT_SIZES.get(name, (3, 224, 224)), partial(build, name))
            for name in torchvision.models.list_models(module=torchvision.models)]
