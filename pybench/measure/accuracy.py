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
    """Mean loss, top-1 and top-5 accuracy as fractions in [0, 1] (``pybench.train.evaluate``'s definitions) over
    ``samples`` items; None with ``error`` on out-of-memory."""

    device: str
    loss: float | None = None
    top1: float | None = None
    top5: float | None = None
    samples: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy(model: nn.Module, loader: Iterable[Any], device: str | torch.device = "cpu",
             max_batches: int | None = None) -> AccuracyResult:
    """Evaluate ``model`` on ``loader`` (batches of (inputs, targets)) on ``device``, at most ``max_batches``.

    The model is evaluated in eval mode on a copy when it has to move to ``device``; the caller's model keeps its
    device and mode.
    Delegates to ``pybench.train.evaluate`` so training and measurement agree on the definition of each metric.
    An out-of-memory is caught, memory released, and returned as ``error``; a device that is not there raises
    ValueError.
    """
    from pybench.train import evaluate  # imported here: measure must not pull in training at import time

    dev = C.resolve_device(device)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    result = AccuracyResult(device=str(dev))
    m: Any = None
    try:
        m = C.on_device_or_copy(model, dev)
        metrics = evaluate(m, loader, device=dev, max_batches=max_batches)
    except Exception as e:
        if not C.is_oom(e):
            raise
        result.error = C.oom_message("accuracy", e, dev)
    if result.error is not None:
        m = None  # outside the except block, so the traceback no longer holds the tensors
        C.release_memory(dev)
        return result
    result.loss, result.top1, result.top5 = (float(metrics[k]) for k in ("loss", "top1", "top5"))
    result.samples = int(metrics["n"]) if "n" in metrics else None
    return result
