"""Data-driven and geometric criteria (fpgm, act_mean, act_std, apoz, taylor, lfe) and global-scope normalisation.

Importing this module registers the criteria in :data:`pybench.criteria.CRITERIA`, so that
``pb.score(model, graph, "lfe", data=loader)`` finds them. Conventions are those of :mod:`pybench.criteria`: a
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
- ``lfe`` (Sándor et al. 3.1): see :func:`lfe_group`.

Global scope: :func:`normalize` (per-group score normalisation: "mean" (Wang), "max", "l2", "none") and
:func:`plan_global` (a global plan under any of them, built on :func:`pybench.plan`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from pybench import ops
from pybench.criteria import CRITERIA, register, unit_scores_from_filters
from pybench.graph import ChannelGraph, Group
from pybench.planning import PrunePlan, global_removals, plan
from pybench.train import logits_of

__all__ = ["DATA_CRITERIA", "NORMALIZATIONS", "lfe_group", "masked_consumers", "normalize", "plan_global",
           "per_sample_loss"]

DATA_CRITERIA = ("act_mean", "act_std", "apoz", "taylor", "lfe")
NORMALIZATIONS = ("mean", "max", "l2", "none")
_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
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
    return unit_scores_from_filters(graph, mods, lambda n, m: fpgm_distances(m.weight), module_types=_PRODUCERS)


# ---------------------------------------------------------------------------------------------------------------
# channel masks through consumer inputs (what pb.mask does for a plan, here per sample and without a copy)
# ---------------------------------------------------------------------------------------------------------------
def _consumer_index_maps(graph: ChannelGraph, group: Group, model: nn.Module) -> list[tuple[str, np.ndarray]]:
    """(module name, group channel of each of its input indices or -1) for the group's consumer modules."""
    if any(name in graph.reducers for name in group.modules):
        raise NotImplementedError(f"{group!r} is normalised across channels (LayerNorm / GroupNorm); masking its "
                                  "consumers' inputs would not match pb.mask for it")
    modules = dict(model.named_modules())
    out = []
    for m in group.members:
        if m.kind == "module" and m.role == "in" and m.name in modules:
            out.append((m.name, m.unit_of_index))
    if not out:
        raise ValueError(f"{group!r} has no consumer module whose input could be masked")
    return out


def _index_mask(z: torch.Tensor, uoi: np.ndarray) -> torch.Tensor:
    """Per-index multipliers [K, n_in] from group masks z [K, N]: z[:, unit] where the index is the group's, else 1."""
    idx = torch.as_tensor(uoi, dtype=torch.long, device=z.device)
    own = idx >= 0
    out = torch.ones(z.shape[0], idx.numel(), dtype=z.dtype, device=z.device)
    out[:, own] = z[:, idx[own]]
    return out


def _apply_mask(x: torch.Tensor, mult: torch.Tensor, m: nn.Module) -> torch.Tensor:
    """x [K*B, ...] times per-index multipliers mult [K, C], one mask per block of B samples."""
    k = mult.shape[0]
    xs = x.reshape(k, x.shape[0] // k, *x.shape[1:])
    if _channel_dim(m) == 1:
        shape = (k, 1, mult.shape[1]) + (1,) * (x.dim() - 2)
    else:
        shape = (k,) + (1,) * (x.dim() - 1) + (mult.shape[1],)
    return (xs * mult.reshape(shape).to(x.dtype)).reshape(x.shape)


@contextlib.contextmanager
def masked_consumers(model: nn.Module, graph: ChannelGraph, group: Group, keep: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model`` computes what ``pb.mask`` gives for a plan that keeps only ``keep`` of ``group``
    (its other channels zeroed at every consumer's input); nothing is copied and the hooks are removed after."""
    z = torch.zeros(1, group.size, dtype=torch.float32)
    z[0, torch.as_tensor(keep, dtype=torch.long)] = 1.0
    maps = _consumer_index_maps(graph, group, model)
    modules = dict(model.named_modules())
    handles = []
    for mname, uoi in maps:
        mult = _index_mask(z, uoi).to(_device(model))
        m = modules[mname]
        handles.append(m.register_forward_pre_hook(
            lambda mod, args, mult=mult, m=m: (_apply_mask(args[0], mult, m),) + tuple(args[1:])))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------------------
# lfe
# ---------------------------------------------------------------------------------------------------------------
def lfe_masks(n: int, fraction: float = 0.3, n_masks: int | None = None, seed: int = 0) -> torch.Tensor:
    """M random binary masks [M, n] (float64), each with round(fraction * n) zeros (at least 1, at most n - 1)."""
    if not 0 < fraction < 1:
        raise ValueError(f"lfe: fraction must be in (0, 1) (the share of filters each mask turns off), got {fraction}")
    if n < 2:
        raise ValueError(f"lfe: a group needs at least 2 channels to rank, got {n}")
    m = 10 * n if n_masks is None else int(n_masks)
    if m < 1:
        raise ValueError(f"lfe: n_masks must be >= 1, got {n_masks}")
    off = min(n - 1, max(1, int(round(fraction * n))))
    g = torch.Generator().manual_seed(int(seed))
    order = torch.rand(m, n, generator=g).argsort(dim=1)
    z = torch.ones(m, n, dtype=torch.float64)
    z.scatter_(1, order[:, :off], 0.0)
    return z


def lfe_solve(z: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Importances theta minimising ||s - Z theta||^2 with s = 1 - (L - Lmin) / (Lmax - Lmin) (eqs. 2-3)."""
    losses = losses.to(torch.float64)
    lo, hi = losses.min(), losses.max()
    s = torch.ones_like(losses) if hi - lo <= 0 else 1.0 - (losses - lo) / (hi - lo)
    return torch.linalg.lstsq(z.to(torch.float64), s[:, None]).solution[:, 0]


class _SuffixRunner:
    """Runs a model's fx graph with the prefix before a group's consumers computed once per batch and the rest for
    K masks at once (the batch replicated K times, each block of samples with its own channel mask)."""

    def __init__(self, model: nn.Module, consumers: list[tuple[str, np.ndarray]]) -> None:
        self.gm = torch.fx.symbolic_trace(model)
        self.modules = dict(self.gm.named_modules())
        self.maps = dict(consumers)
        nodes = list(self.gm.graph.nodes)
        self.nodes = nodes
        dep: set[torch.fx.Node] = set()
        for n in nodes:  # topological order: a node depends on the masks if it is a consumer or reads such a node
            if (n.op == "call_module" and str(n.target) in self.maps) or any(a in dep for a in n.all_input_nodes):
                dep.add(n)
        if not any(n.op == "call_module" and str(n.target) in self.maps for n in nodes):
            raise ValueError("lfe: the group's consumers do not appear in the model's fx graph")
        self.dep = dep
        # shared non-tensor values (x.size(0), shapes) that feed the suffix are recomputed there on the replicated
        # batch, so that view(x.size(0), -1) sees K*B
        self.recompute: set[torch.fx.Node] = set()
        self.shared_last_use: dict[torch.fx.Node, int] = {}

    def _fetch(self, target: str) -> Any:
        v: Any = self.gm
        for part in target.split("."):
            v = getattr(v, part)
        return v

    def _call(self, n: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
        if n.op == "call_module":
            return self.modules[str(n.target)](*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "get_attr":
            return self._fetch(str(n.target))
        raise RuntimeError(f"lfe: unexpected fx node {n.op}")

    def prefix(self, x: torch.Tensor) -> dict[torch.fx.Node, Any]:
        """Evaluate every node that does not depend on the masks; keep what the suffix reads."""
        env: dict[torch.fx.Node, Any] = {}
        needed = {a for n in self.dep for a in n.all_input_nodes if a not in self.dep}
        # non-tensor shared values that feed the suffix: recompute them (and their non-tensor inputs) there
        placeholder_done = False
        for n in self.nodes:
            if n in self.dep or n.op == "output":
                continue
            if n.op == "placeholder":
                if placeholder_done:
                    raise ValueError("lfe: batched masks support models with one input tensor")
                env[n] = x
                placeholder_done = True
                continue
            env[n] = self._call(n, torch.fx.node.map_arg(n.args, lambda a: env[a]),
                                torch.fx.node.map_arg(n.kwargs, lambda a: env[a]))
        rec: set[torch.fx.Node] = set()
        stack = [a for a in needed if not isinstance(env[a], torch.Tensor)]
        while stack:
            a = stack.pop()
            if a in rec or a.op in ("placeholder", "get_attr"):
                continue
            rec.add(a)
            stack.extend(b for b in a.all_input_nodes if not isinstance(env[b], torch.Tensor))
        self.recompute = rec
        keep = needed | {b for a in rec for b in a.all_input_nodes}
        return {n: v for n, v in env.items() if n in keep}

    def suffix(self, shared: dict[torch.fx.Node, Any], mults: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
        """The model's output for K = len(mask) replicas of the batch, replica k under masks ``mults[*][k]``."""
        k = next(iter(mults.values())).shape[0]
        env: dict[torch.fx.Node, Any] = {}

        def get(a: torch.fx.Node) -> Any:
            if a in env:
                return env[a]
            v = shared[a]
            if isinstance(v, torch.Tensor) and a.op != "get_attr" and v.dim() > 0 and v.shape[0] == batch:
                v = v.unsqueeze(0).expand(k, *v.shape).reshape(k * batch, *v.shape[1:])
                env[a] = v  # replicate a shared activation once per chunk
            return v

        users_left = {n: len(n.users) for n in self.nodes}
        out = None
        for n in self.nodes:
            if n.op == "output":
                out = torch.fx.node.map_arg(n.args[0], get)
                break
            if n not in self.dep and n not in self.recompute:
                continue
            args = torch.fx.node.map_arg(n.args, get)
            kwargs = torch.fx.node.map_arg(n.kwargs, get)
            if n.op == "call_module" and str(n.target) in mults:
                m = self.modules[str(n.target)]
                args = (_apply_mask(args[0], mults[str(n.target)], m),) + tuple(args[1:])
            env[n] = self._call(n, args, kwargs)
            for a in n.all_input_nodes:  # free activations the rest of the suffix no longer reads
                users_left[a] -= 1
                if users_left[a] == 0 and a in env and a in self.dep:
                    del env[a]
        return logits_of(out)


def lfe_group(model: nn.Module, graph: ChannelGraph, group: Group, data: Iterable, *, fraction: float = 0.3,
              n_masks: int | None = None, seed: int = 0, max_batches: int | None = None,
              masks_per_forward: int | None = None, batched: bool = True,
              return_losses: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LFE importances of one group's channels (Sándor et al. 3.1), float64 [group.size], higher = more important.

    M = ``n_masks`` (default 10 x N) random masks turn off ``fraction`` of the group's N channels each; the loss
    L_i of the network under mask i is averaged over ``data`` (eq. 1); s_i = 1 - (L_i - Lmin) / (Lmax - Lmin)
    (eq. 2); the importances solve min ||s - Z theta||^2 through ``torch.linalg.lstsq`` (eq. 3). A mask zeroes
    channels where they are consumed (as ``pb.mask``).

    ``batched=True`` evaluates ``masks_per_forward`` masks per forward (the batch replicated once per mask) and
    computes the network prefix before the group's consumers once per batch; ``batched=False`` runs one full
    forward per mask (the reference; same importances to float tolerance). ``return_losses`` also returns
    ``(Z, L)``.
    """
    _require_data("lfe", data)
    if not isinstance(group, Group) or group.graph is not graph:
        raise ValueError("lfe: group must be one of graph.groups")
    z = lfe_masks(group.size, fraction, n_masks, seed)
    maps = _consumer_index_maps(graph, group, model)
    dev = _device(model)
    zf = z.to(device=dev, dtype=torch.float32)
    mults_all = {name: _index_mask(zf, uoi) for name, uoi in maps}
    losses = torch.zeros(z.shape[0], dtype=torch.float64)
    n_seen = 0
    with _eval_mode(model), torch.no_grad():
        runner = _SuffixRunner(model, maps) if batched else None
        for x, y in _iter_batches(data, "lfe", True, max_batches, dev):
            b = x.shape[0]
            if runner is not None:
                k = masks_per_forward or max(1, min(z.shape[0], 4096 // max(b, 1)))
                shared = runner.prefix(x)
                for s in range(0, z.shape[0], k):
                    mults = {name: mu[s:s + k] for name, mu in mults_all.items()}
                    kk = next(iter(mults.values())).shape[0]
                    logits = runner.suffix(shared, mults, b)
                    loss = per_sample_loss(logits, y.repeat(kk)).reshape(kk, b).sum(1)
                    losses[s:s + kk] += loss.double().cpu()
                del shared
            else:
                modules = dict(model.named_modules())
                for i in range(z.shape[0]):
                    handles = [modules[name].register_forward_pre_hook(
                        lambda mod, args, mu=mults_all[name][i:i + 1], m=modules[name]:
                        (_apply_mask(args[0], mu, m),) + tuple(args[1:])) for name, _ in maps]
                    try:
                        logits = logits_of(model(x))
                    finally:
                        for h in handles:
                            h.remove()
                    losses[i] += per_sample_loss(logits, y).sum().double().cpu()
            n_seen += b
    losses /= max(n_seen, 1)
    theta = lfe_solve(z, losses)
    return (theta, z, losses) if return_losses else theta


@register("lfe")
def _lfe(model: nn.Module, graph: ChannelGraph, data: Any = None, **kw: Any) -> np.ndarray:
    """Sándor et al.: linear filter ensembles, every group scored on its own (see :func:`lfe_group` for options)."""
    _require_data("lfe", data)
    total = np.zeros(graph.n_units, dtype=np.float64)
    for g in graph.groups:
        if g.size < 2:
            continue
        theta = lfe_group(model, graph, g, data, **kw)
        total[g.comps] = theta.numpy()
    return total


_lfe.options_from = lfe_group  # its options are lfe_group's (pybench.criteria.criterion_options)


# ---------------------------------------------------------------------------------------------------------------
# scopes: per-group normalisation and a global plan under any of them
# ---------------------------------------------------------------------------------------------------------------
def normalize(scores: Mapping[Group, torch.Tensor], method: str = "mean") -> dict[Group, torch.Tensor]:
    """Per-group normalisation for a global ranking: ``"mean"`` divides each group's scores by their mean absolute
    value (Wang et al.), ``"max"`` by their maximum absolute value, ``"l2"`` by their Euclidean norm, ``"none"``
    leaves them. A group whose scores are all 0 is left as is."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {method!r}")
    out: dict[Group, torch.Tensor] = {}
    for g, s in scores.items():
        s = torch.as_tensor(s, dtype=torch.float64)
        if method == "none":
            d = 1.0
        elif method == "mean":
            d = float(s.abs().mean()) if s.numel() else 1.0
        elif method == "max":
            d = float(s.abs().max()) if s.numel() else 1.0
        else:
            d = float(s.norm())
        out[g] = s / (d if d > 0 and math.isfinite(d) else 1.0)
    return out


def plan_global(graph: ChannelGraph, scores: Mapping[Group, torch.Tensor], ratio: float = 0.5,
                normalize_by: str = "mean", round_to: int = 1, min_channels: int = 1,
                ignore: Iterable[str] = ()) -> PrunePlan:
    """A global plan: all groups' channels ranked together after :func:`normalize` (``normalize_by``); the
    ``floor(ratio * total)`` least important go, no group below ``min_channels``; then each group's kept count
    follows :func:`pybench.plan`'s rules (``round_to``). With ``normalize_by="mean"`` this is
    ``pb.plan(..., scope="global")``."""
    base = plan(graph, scores, ratio=0.0, scope="local", round_to=1, min_channels=min_channels, ignore=ignore)
    arrays = {g: s for g, s in normalize(scores, normalize_by).items() if g in base.keep}
    if not arrays:
        return plan(graph, scores, ratio=ratio, scope="global", round_to=round_to, min_channels=min_channels,
                    ignore=ignore)
    groups = list(arrays)
    taken = global_removals([arrays[g].numpy() for g in groups], ratio, min_channels)
    keep: dict[Group, torch.Tensor] = {}
    notes: list[str] = []
    for i, g in enumerate(groups):
        r = taken[i] / g.size
        p = plan(graph, {g: scores[g]}, ratio=min(r, 1 - 1e-12), scope="local", round_to=round_to,
                 min_channels=min_channels)
        keep[g] = p.keep[g]
        notes += p.notes
    return PrunePlan(graph, keep, float(ratio), "global", round_to, min_channels, base.ignored, notes)


_ = CRITERIA  # the registry this module fills
