"""Data-driven and geometric criteria: fpgm, act_mean, act_std, apoz, taylor (lfe: :mod:`pybench.prune.criteria.lfe`).

Importing this module registers the criteria in :data:`pybench.prune.criteria.CRITERIA`, so that
``pb.score(model, graph, "lfe", data=loader)`` finds them. Conventions are those of :mod:`pybench.prune.criteria`: a
criterion returns one float per channel unit of the graph (higher = more important) and a group's figure sums its
members'.

Where a channel's activation is read: at the input of every module that consumes the group's channels (the next
conv / linear), i.e. the post-activation tensor the next layer sees. Consumers reading the very same tensor (a
residual block's first conv and its shortcut) are counted once. A residual group lives in several tensors (the
stream between blocks); its figure sums theirs, as weight criteria sum their producers.

- ``act_mean`` / ``act_std`` / ``apoz``: one pass over a calibration loader, forward pre-hooks feeding
  ``ops.activation_stats`` (Welford + Chan merge) for all groups at once; apoz scores ``1 - APoZ`` (higher = fewer
  zeros = more important).
- ``taylor`` (Molchanov): ``|mean over space of a * dL/da|`` per sample and channel, averaged over samples; one
  backward per batch, gradients taken for the activations only (parameters' ``.grad`` are left alone).
- ``fpgm`` (He et al.): Euclidean distance of each filter to the geometric median (Weiszfeld) of its layer's filters.

Global ranking (per-group normalisation by "mean", "max", "l2" or "none") is the planner's:
``pb.plan(graph, scores, ratio, scope="global", normalize_by=...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from pybench import ops
from pybench.prune import layers
from pybench.prune.criteria.base import register, unit_scores_from_filters
from pybench.prune.graph import ChannelGraph
from pybench.train import logits_of

__all__ = ["DATA_CRITERIA", "fpgm_distances", "per_sample_loss"]

DATA_CRITERIA = ("act_mean", "act_std", "apoz", "taylor", "lfe")  # the criteria that need data
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# data and model helpers
# ---------------------------------------------------------------------------------------------------------------
def _require_data(name: str, data: Any) -> None:
    if data is None:
        raise ValueError(f"criterion {name!r} is data-driven: pass data= (a DataLoader or any iterable of "
                         "(inputs, targets) batches, e.g. a few batches of the training split)")
    try:
        n = len(data)
    except TypeError:
        return
    if n == 0:
        raise ValueError(f"criterion {name!r}: data is empty (0 batches); give it a non-empty loader")


def _split(batch: Any, name: str, need_target: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        x, y = batch, None
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        x, y = batch[0], batch[1] if len(batch) > 1 else None
    else:
        raise TypeError(f"criterion {name!r}: data must yield tensors or (inputs, targets) tuples, "
                        f"got {type(batch).__name__}")
    if need_target and not isinstance(y, torch.Tensor):
        raise ValueError(f"criterion {name!r} needs targets: data must yield (inputs, targets) batches")
    return x, y


def _iter_batches(data: Iterable, name: str, need_target: bool, max_batches: int | None,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    seen = 0
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        x, y = _split(batch, name, need_target)
        seen += 1
        yield x.to(device), (y.to(device) if y is not None else None)
    if seen == 0:
        raise ValueError(f"criterion {name!r}: data yielded no batches; give it a non-empty loader")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (batch norms use, and do not update, their running statistics); the mode is restored after."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def per_sample_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample (BCE-with-logits for a single-logit binary model), as :mod:`pybench.train`."""
    if logits.dim() == 2 and logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, target, reduction="none")


def _channel_dim(m: nn.Module) -> int:
    """Which dim of a consumer's input holds its channels: 1 for convs, the last for linear layers."""
    return -1 if isinstance(m, nn.Linear) else 1


# ---------------------------------------------------------------------------------------------------------------
# consumer taps: where each group's channels are read
# ---------------------------------------------------------------------------------------------------------------
def _fx_inputs(model: nn.Module) -> dict[str, tuple] | None:
    """{module name: identity of its first input node} from torch.fx (None where fx cannot trace the model)."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # fx fails on data-dependent control flow; then consumers are simply not deduplicated
        return None
    out: dict[str, tuple] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.args and isinstance(n.args[0], torch.fx.Node):
            out.setdefault(str(n.target), (n.args[0].name,))
    return out


def _taps(model: nn.Module, graph: ChannelGraph) -> list[tuple[str, np.ndarray]]:
    """(consumer module name, unit label per input index) for every module whose inputs carry prunable channels,
    one consumer per distinct input tensor."""
    modules = dict(model.named_modules())
    fx_in = _fx_inputs(model)
    taps: list[tuple[str, np.ndarray]] = []
    seen: set = set()
    for (kind, name, role), lab in graph.slots.items():
        if kind != "module" or role != "in" or name not in modules:
            continue
        live = (lab >= 0) & (graph.unit_group[np.maximum(lab, 0)] >= 0)
        if not live.any():
            continue
        key = (fx_in.get(name, (name,)) if fx_in is not None else (name,), lab.tobytes())
        if key in seen:
            continue
        seen.add(key)
        taps.append((name, np.where(live, lab, -1)))
    return taps


def _to_units(graph: ChannelGraph, lab: np.ndarray, values: torch.Tensor, total: np.ndarray) -> None:
    v = values.detach().to(torch.float64).cpu().numpy()
    ok = lab >= 0
    np.add.at(total, lab[ok], v[ok])


def _channels_first(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    """A consumer's input as [N, C, ...] (linear inputs [..., C] become [N, C])."""
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    return x


# ---------------------------------------------------------------------------------------------------------------
# activation criteria: one pass, all groups
# ---------------------------------------------------------------------------------------------------------------
def _activation_states(model: nn.Module, graph: ChannelGraph, data: Iterable, name: str,
                       max_batches: int | None) -> tuple[list[tuple[str, np.ndarray]], dict[str, torch.Tensor]]:
    taps = _taps(model, graph)
    modules = dict(model.named_modules())
    states: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(mname: str) -> Callable:
        m = modules[mname]

        def hook(mod: nn.Module, args: tuple) -> None:
            x = _channels_first(args[0].detach(), m)
            states[mname] = ops.activation_stats(x, states.get(mname))

        return hook

    for mname, _ in taps:
        handles.append(modules[mname].register_forward_pre_hook(hook_for(mname)))
    try:
        with _eval_mode(model), torch.no_grad():
            for x, _ in _iter_batches(data, name, False, max_batches, _device(model)):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return taps, states


def _activation_criterion(field: str, name: str) -> Callable[..., np.ndarray]:
    def fn(model: nn.Module, graph: ChannelGraph, data: Any = None, max_batches: int | None = None,
           **kw: Any) -> np.ndarray:
        _require_data(name, data)
        taps, states = _activation_states(model, graph, data, name, max_batches)
        total = np.zeros(graph.n_units, dtype=np.float64)
        for mname, lab in taps:
            if mname not in states:
                continue  # a consumer the forward never reached
            s = ops.activation_summary(states[mname])
            v = 1.0 - s["apoz"] if field == "apoz" else s[field]
            _to_units(graph, lab, v, total)
        return total

    fn.__name__ = f"_{name}"
    fn.__doc__ = {"mean": "Martineau / Wang: mean of the post-activation output over samples and space.",
                  "std": "Wang: standard deviation of the post-activation output over samples and space.",
                  "apoz": "1 - APoZ (average percentage of zeros after the activation; Hu et al.)."}[field]
    return fn


register("act_mean")(_activation_criterion("mean", "act_mean"))
register("act_std")(_activation_criterion("std", "act_std"))
register("apoz")(_activation_criterion("apoz", "apoz"))


# ---------------------------------------------------------------------------------------------------------------
# taylor
# ---------------------------------------------------------------------------------------------------------------
@register("taylor")
def _taylor(model: nn.Module, graph: ChannelGraph, data: Any = None, max_batches: int | None = None,
            loss_fn: LossFn | None = None, **kw: Any) -> np.ndarray:
    """Molchanov et al.: |mean over space of a * dL/da| per sample and channel, averaged over samples.

    One forward and one backward per batch; the gradient is taken for the activations only, so the parameters'
    ``.grad`` stay as they were. ``loss_fn(logits, targets)`` returns a scalar (default: mean cross-entropy).
    """
    _require_data("taylor", data)
    taps = _taps(model, graph)
    modules = dict(model.named_modules())
    loss_fn = loss_fn or (lambda lo, t: per_sample_loss(lo, t).mean())
    sums: dict[str, torch.Tensor] = {}
    n = 0
    acts: list[tuple[str, torch.Tensor]] = []
    handles = []

    def hook_for(mname: str) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> None:
            if args[0].requires_grad:
                acts.append((mname, args[0]))

        return hook

    for mname, _ in taps:
        handles.append(modules[mname].register_forward_pre_hook(hook_for(mname)))
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:  # activations need a graph; the gradient is taken for them only
            p.requires_grad_(True)
        with _eval_mode(model), torch.enable_grad():
            for x, y in _iter_batches(data, "taylor", True, max_batches, _device(model)):
                acts.clear()
                loss = loss_fn(logits_of(model(x)), y)
                if not acts:
                    break
                grads = torch.autograd.grad(loss, [a for _, a in acts], allow_unused=True)
                for (mname, a), g in zip(acts, grads, strict=True):
                    if g is None:
                        continue
                    m = modules[mname]
                    prod = _channels_first((a * g).detach(), m)
                    if isinstance(m, nn.Linear) and a.dim() > 2:
                        prod = prod.reshape(a.shape[0], -1, a.shape[-1]).mean(1)
                    per = prod.flatten(2).mean(2) if prod.dim() > 2 else prod  # [N, C]
                    v = per.abs().sum(0).double()
                    sums[mname] = sums[mname] + v if mname in sums else v
                n += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
        acts.clear()
    total = np.zeros(graph.n_units, dtype=np.float64)
    for mname, lab in taps:
        if mname in sums:
            _to_units(graph, lab, sums[mname] / max(n, 1), total)
    return total


# ---------------------------------------------------------------------------------------------------------------
# fpgm
# ---------------------------------------------------------------------------------------------------------------
def _geometric_median(w: torch.Tensor, iters: int = 100, eps: float = 1e-10) -> torch.Tensor:
    """Weiszfeld's iteration for the point minimising the sum of Euclidean distances to the rows of ``w``."""
    y = w.mean(0)
    for _ in range(iters):
        d = (w - y).norm(dim=1).clamp_min(eps)
        inv = 1.0 / d
        y_new = (inv[:, None] * w).sum(0) / inv.sum()
        if (y_new - y).norm() <= 1e-12 * (1 + y.norm()):
            return y_new
        y = y_new
    return y


def fpgm_distances(weight: torch.Tensor) -> torch.Tensor:
    """Distance of each filter (row of ``weight`` flattened) to the geometric median of all of them (float64)."""
    w = weight.detach().flatten(1).to(torch.float64)
    return (w - _geometric_median(w)).norm(dim=1)


@register("fpgm")
def _fpgm(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """He et al. (FPGM): filters near their layer's geometric median are the most replaceable (lowest score)."""
    mods = dict(model.named_modules())
    return unit_scores_from_filters(graph, mods, lambda n, m: fpgm_distances(m.weight), module_types=layers.PRODUCERS)
