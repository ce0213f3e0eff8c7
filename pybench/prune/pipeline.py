"""``prune(model, example_inputs, ratio, criterion, scope)``: trace -> score -> plan -> apply in one call."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch.nn as nn

from pybench.prune.criteria import score
from pybench.prune.graph import trace
from pybench.prune.planning import PrunePlan, plan
from pybench.prune.surgery import apply

__all__ = ["PinnedChannelsWarning", "pin_summary", "prune", "warn_if_mostly_pinned"]

_OUTPUT = "model output"  # the classifier's outputs: pinned in every model, not a reason to warn


class PinnedChannelsWarning(UserWarning):
    """More than half of a model's channels cannot be pruned; the message says why."""


def pin_summary(graph: Any, top: int = 5) -> dict[str, Any]:
    """What keeps a model from shrinking: ``channels`` (tracked, the model's outputs left out), ``pinned`` (of
    those, kept by pins) and ``reasons`` ([reason, channels] of the ``top`` biggest pins)."""
    pins = graph.pinned_channels()
    rest = [(r, n) for r, n in pins if r != _OUTPUT]
    outputs = sum(n for r, n in pins if r == _OUTPUT)
    return {"channels": graph.n_channels - outputs, "pinned": sum(n for _, n in rest),
            "reasons": [[r, n] for r, n in rest[:top] if n]}


def warn_if_mostly_pinned(graph: Any, model_name: str = "model") -> None:
    """Warn when pins other than the model's outputs keep more than half of the channels the trace tracked."""
    s = pin_summary(graph, top=3)
    if s["channels"] and s["pinned"] > s["channels"] / 2:
        top = "; ".join(f"{n} by {r}" for r, n in s["reasons"])
        warnings.warn(f"{model_name}: {s['pinned']} of its {s['channels']} channels cannot be pruned ({top}); "
                      "plan.pinned lists every reason", PinnedChannelsWarning, stacklevel=3)


def prune(model: nn.Module, example_inputs: Any, ratio: float = 0.5, criterion: str = "l1", scope: str = "local",
          *, data: Any = None, round_to: int = 1, min_channels: int = 1, ignore: Iterable[str] = (),
          normalize_by: str = "mean", within: str | None = None, latency_budget: float | None = None,
          lut: Any = None, layers: Iterable[str] = (), max_ratio: float = 1.0,
          **criterion_kw: Any) -> tuple[nn.Module, PrunePlan]:
    """Prune ``model`` at ``ratio`` by ``criterion``; returns ``(pruned copy, plan)``. ``model`` is untouched.

    See :func:`pybench.trace`, :func:`pybench.score`, :func:`pybench.plan` and :func:`pybench.apply` for the
    arguments (``normalize_by``: how a global scope makes the groups' scores comparable, see
    :func:`pybench.prune.planning.normalize`); ``data`` feeds data-driven criteria. Warns
    (:class:`PinnedChannelsWarning`) when pins keep more than half of the model's channels; ``plan.pinned`` lists
    why each channel stays.

    ``within``: the name of a submodule to prune inside the whole model, for models whose forward cannot be traced
    as a whole (a detector's box decoding, say). ``example_inputs`` are the whole model's: one forward records what
    the submodule receives, the submodule is traced and pruned on that, keeping every channel that leaves it, and
    the copy of the whole model gets the pruned submodule (so it still runs). The plan is the submodule's.

    ``layers``: the layers that choose filters (module type names or module names); ``max_ratio``: the most of any
    one group removed (see :func:`pybench.plan`).

    ``latency_budget`` with ``lut``: prune to that fraction of the dense latency as ``lut`` (a latency table of this
    model on the target, :func:`pybench.latency_table`) predicts, instead of to ``ratio``; see :func:`pybench.plan`.
    """
    if within is not None:
        return _prune_within(model, example_inputs, within, ratio=ratio, criterion=criterion, scope=scope, data=data,
                             round_to=round_to, min_channels=min_channels, ignore=ignore, normalize_by=normalize_by,
                             latency_budget=latency_budget, lut=lut, layers=layers, max_ratio=max_ratio,
                             **criterion_kw)
    graph = trace(model, example_inputs)
    warn_if_mostly_pinned(graph, type(model).__name__)
    scores = score(model, graph, criterion, data=data, **criterion_kw)
    p = plan(graph, scores, ratio=ratio, scope=scope, round_to=round_to, min_channels=min_channels, ignore=ignore,
             normalize_by=normalize_by, latency_budget=latency_budget, lut=lut, layers=layers, max_ratio=max_ratio)
    return apply(model, p), p


def _prune_within(model: nn.Module, example_inputs: Any, within: str, **kw: Any) -> tuple[nn.Module, PrunePlan]:
    import copy

    import torch

    if not isinstance(within, str) or not within:
        raise ValueError(f"within must be a submodule's name, got {within!r}")
    try:
        sub = model.get_submodule(within)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"within={within!r}: {type(model).__name__} has no such submodule (its children: "
                         f"{', '.join(names)})") from None
    seen: list[tuple[tuple, dict]] = []

    def record(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        if not seen:
            seen.append((args, kwargs))

    handle = sub.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
            model(*inputs)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"within={within!r}: the model's forward never called that submodule")
    args, kwargs = seen[0]
    if kwargs:
        raise ValueError(f"within={within!r}: the submodule is called with keyword arguments ({', '.join(kwargs)}), "
                         "which pybench cannot trace")
    pruned_sub, plan = prune(sub, args if len(args) != 1 else args[0], **kw)
    out = copy.deepcopy(model)
    out.set_submodule(within, pruned_sub)
    return out, plan
