"""torchvision's classification models, always built with ``weights=None`` (random init, never a hub download)."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from ._registry import _ENTRIES, register

__all__ = ["register_all", "build"]

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


def register_all() -> None:
    """Register every name of ``torchvision.models.list_models(module=torchvision.models)`` not already taken."""
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        if name in _ENTRIES:  # a pybench model of the same name wins (none today)
            continue
        register(name, input_size=_INPUT_SIZES.get(name, (3, 224, 224)), default_num_classes=1000,
                 family="torchvision")(partial(build, name))
