"""``prune(model, example_inputs, ratio, criterion, scope)``: trace -> score -> plan -> apply in one call."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.nn as nn

from pybench.criteria import score
from pybench.graph import trace
from pybench.planning import PrunePlan, plan
from pybench.surgery import apply

__all__ = ["prune"]


def prune(model: nn.Module, example_inputs: Any, ratio: float = 0.5, criterion: str = "l1", scope: str = "local",
          *, data: Any = None, round_to: int = 1, min_channels: int = 1, ignore: Iterable[str] = (),
          **criterion_kw: Any) -> tuple[nn.Module, PrunePlan]:
    """Prune ``model`` at ``ratio`` by ``criterion``; returns ``(pruned copy, plan)``. ``model`` is untouched.

    See :func:`pybench.trace`, :func:`pybench.score`, :func:`pybench.plan` and :func:`pybench.apply` for the
    arguments; ``data`` feeds data-driven criteria.
    """
    graph = trace(model, example_inputs)
    scores = score(model, graph, criterion, data=data, **criterion_kw)
    p = plan(graph, scores, ratio=ratio, scope=scope, round_to=round_to, min_channels=min_channels, ignore=ignore)
    return apply(model, p), p
