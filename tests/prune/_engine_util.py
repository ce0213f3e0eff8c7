"""Shared helpers of the pruning-engine tests (pruned == masked oracle, small inputs, calibrated BN)."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torchvision

warnings.filterwarnings("ignore", message="pybench._C is not available")

# input size per model family: small where the architecture allows
_SIZES = {"inception_v3": 96, "maxvit_t": 224, "swin": 64, "vit_h_14": 56, "vit": 64}


def example_input(name: str, batch: int = 2) -> torch.Tensor:
    """A small input for ``name``: 64x64 images where the architecture allows, the zoo's own size otherwise."""
    try:
        import pybench.zoo as zoo

        shape = tuple(zoo.input_size(name))
    except (ImportError, ValueError, KeyError):
        shape = (3, 224, 224)
    if len(shape) == 3 and shape[1] > 64:
        size = next((s for prefix, s in _SIZES.items() if name.startswith(prefix)), 64)
        shape = (shape[0], size, size)
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch, *shape), generator=g)


def model_kwargs(name: str) -> dict:
    if name.startswith("vit_"):
        return {"image_size": 56 if name.endswith("_14") else 64}  # a multiple of the patch size
    if name in ("googlenet", "inception_v3"):
        return {"init_weights": True, "aux_logits": False}
    return {}


def zoo_names() -> list[str]:
    try:
        import pybench.zoo as zoo  # the model zoo, once it exists
    except ImportError:
        return sorted(torchvision.models.list_models(module=torchvision.models))
    return sorted(zoo.names())


def create(name: str, num_classes: int = 10) -> nn.Module:
    if name == "xor_mlp":
        num_classes = 2  # two logits (or one)
    try:
        import pybench.zoo as zoo
    except ImportError:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **model_kwargs(name))
    return zoo.create(name, num_classes=num_classes, **model_kwargs(name))


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BN layers the statistics of ``x`` so that random-init activations stay O(1) (float tolerances mean
    something), then switch to eval mode."""
    saved = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved[m] = m.momentum
            m.momentum = None  # cumulative average: one batch sets the statistics
            m.reset_running_stats()
    if saved:
        model.train()
        model(x)
        for m, mom in saved.items():
            m.momentum = mom
    return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def assert_apply_equals_mask(model: nn.Module, plan, x: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5):
    import pybench as pb

    pruned = pb.apply(model, plan).eval()
    masked = pb.mask(model, plan).eval()
    with torch.no_grad():
        a, b = pruned(x), masked(x)
    if isinstance(a, (tuple, list)):
        a, b = a[0], b[0]
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    return pruned, masked, a
