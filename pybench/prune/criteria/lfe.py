"""LFE (Sándor et al. 3.1): a group's channels scored by the loss of random channel masks, fitted by least squares.

:func:`masked_consumers` masks a group's channels at the inputs of the modules that read them (what pb.mask does
for a plan, here per sample and without a copy); :func:`lfe_group` scores one group, the ``lfe`` criterion all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from pybench.prune.criteria.base import register
from pybench.prune.criteria.data_driven import (
    _channel_dim,
    _device,
    _eval_mode,
    _iter_batches,
    _require_data,
    per_sample_loss,
)
from pybench.prune.graph import ChannelGraph, Group
from pybench.train import logits_of

__all__ = ["lfe_group", "lfe_masks", "lfe_solve", "masked_consumers"]


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


_lfe.options_from = lfe_group  # its options are lfe_group's (pybench.prune.criteria.criterion_options)
