"""Loss, top-1 and top-5 of a model over a data loader, through ``pybench.train.evaluate``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pybench.measure import _common as C


@dataclass
class AccuracyResult:
    """``loss``, ``top1`` and ``top5`` as ``pybench.train.evaluate`` reports them; None with ``error`` on OOM."""

    device: str
    loss: float | None = None
    top1: float | None = None
    top5: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy(model: nn.Module, loader: Iterable[Any], device: str | torch.device = "cpu") -> AccuracyResult:
    """Evaluate ``model`` on ``loader`` (batches of (inputs, targets)) on ``device``.

    Delegates to ``pybench.train.evaluate`` so training and measurement agree on the definition of each metric.
    An out-of-memory is caught, memory released, and returned as ``error``; a device that is not there raises
    ValueError.
    """
    from pybench.train import evaluate  # imported here: measure must not pull in training at import time

    dev = C.resolve_device(device)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    result = AccuracyResult(device=str(dev))
    try:
        metrics = evaluate(model, loader, device=dev)
    except Exception as e:
        if not C.is_oom(e):
            raise
        C.release_memory(dev)
        result.error = C.oom_message("accuracy", e, dev)
        return result
    result.loss, result.top1, result.top5 = (float(metrics[k]) for k in ("loss", "top1", "top5"))
    return result
