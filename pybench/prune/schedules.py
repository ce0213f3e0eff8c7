"""Pruning schedules of the seed papers: when to score, how much to remove, when to fine-tune.

    pruned, history = pb.schedules.one_shot(model, x, macs_target=0.5, criterion="l1", train_loader=tr,
                                            val_loader=va, fine_tune_epochs=2)
    pruned, history = pb.schedules.iterative(model, x, ratio=0.5, steps=3, ...)        # Martineau
    pruned, history = pb.schedules.layerwise_alpha(model, x, tr, va, alpha=0.005)      # Sándor et al.
    pruned, history = pb.schedules.gradual_global(model, x, tr, va, target=0.9, rate=0.1)  # Wang et al.

Every schedule works on a copy (the input model is never modified, also when it raises), returns the pruned model
and a :class:`pybench.train.History` with one record per step: ``step``, ``macs``, ``params``, ``accuracy`` and
``loss`` (on ``val_loader``; None without one), ``time_s`` (the step's wall time: scoring, pruning, fine-tuning)
and what the step did. Fine-tuning goes through :func:`pybench.train.fine_tune`, which builds a fresh optimizer on
every call: the optimizer is reset after each pruning step (Martineau). ``fine_tune_kw`` passes its settings (lr,
momentum, ...; default the seed papers' SGD, lr 0.01). ``progress=False`` silences the tqdm bars.

Data-parallel fine-tuning: with ``nprocs`` (and / or ``backend``, ``sync_batchnorm``) in ``fine_tune_kw`` each
fine-tuning step runs through :func:`pybench.distributed.fine_tune` instead, over ``nprocs`` processes spawned for
it (``backend="gloo"`` on the CPU, ``"nccl"`` with one GPU each); scoring, pruning and evaluation stay in the
calling process. Inside an initialised process group (a script started by ``torchrun`` that called
``torch.distributed.init_process_group()``) every fine-tuning step joins that group instead: run the same schedule
on every rank (scoring and pruning are deterministic, so the ranks prune alike). The result is the one-process
result to float tolerance (each step sees the same global batches; see :mod:`pybench.distributed`)::

    pruned, history = pb.schedules.iterative(model, x, ratio=0.5, train_loader=tr,
                                             fine_tune_kw={"lr": 0.01, "nprocs": 2, "backend": "gloo"})
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pybench._registry import Registry
from pybench.measure import flops
from pybench.prune.criteria import CRITERIA, lfe, score
from pybench.prune.criteria import data_driven as cd
from pybench.prune.criteria.lfe import lfe_group
from pybench.prune.graph import ChannelGraph, Group, trace
from pybench.prune.pipeline import prune
from pybench.prune.planning import PrunePlan, plan
from pybench.prune.surgery import apply
from pybench.train import History, evaluate, fine_tune

__all__ = ["SCHEDULES", "gradual_global", "iterative", "layerwise_alpha", "one_shot", "tune"]

SCHEDULES: Registry = Registry("schedule")  # name -> fn(model, example_inputs, ...) -> (pruned, History)


# ---------------------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------------------
def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_loader(loader: Any, arg: str, required: bool = True) -> None:
    if loader is None:
        if required:
            raise ValueError(f"{arg} is required: pass a DataLoader (or any iterable of (inputs, targets) batches)")
        return
    try:
        n = len(loader)
    except TypeError:
        return
    if n == 0:
        raise ValueError(f"{arg} is empty (0 batches); give it a non-empty loader")


def _check_criterion(criterion: str, data: Any) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    if criterion in cd.DATA_CRITERIA:
        cd._require_data(criterion, data)


def _check_epochs(epochs: Any, train_loader: Any, fine_tune_kw: Mapping[str, Any] | None = None) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fine_tune_epochs must be an int >= 0, got {epochs!r}")
    if epochs:
        _check_loader(train_loader, "train_loader (needed when fine_tune_epochs > 0)")
    kw = fine_tune_kw or {}
    # checked here, before the scoring and pruning that the first fine-tuning step would otherwise wait for
    n = kw.get("nprocs")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"fine_tune_kw: nprocs must be an int >= 1 (processes that fine-tune data-parallel), "
                         f"got {n!r}")
    if kw.get("backend") not in (None, "gloo", "nccl"):
        raise ValueError(f"fine_tune_kw: backend {kw['backend']!r}; expected 'gloo' (CPU processes) or 'nccl' "
                         "(one CUDA GPU per process)")


class _Recorder:
    """Builds the history records (MACs / params through pb.measure.flops, accuracy / loss on the val loader)."""

    def __init__(self, example_inputs: Any, val_loader: Any) -> None:
        self.x = example_inputs
        self.val = val_loader
        self.history = History()

    def metrics(self, model: nn.Module) -> dict[str, Any]:
        rep = flops(model, self.x)
        out: dict[str, Any] = {"macs": int(rep.total_macs), "params": int(rep.params), "accuracy": None,
                               "loss": None}
        if self.val is not None:
            m = evaluate(model, self.val)
            out.update(accuracy=m["top1"], loss=m["loss"])
        return out

    def add(self, step: int, model: nn.Module, t0: float, metrics: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
        rec = {"step": step, **(metrics if metrics is not None else self.metrics(model)), **extra,
               "time_s": time.perf_counter() - t0}
        self.history.append(rec)
        return rec


def _scores(model: nn.Module, graph: ChannelGraph, criterion: str, data: Any,
            criterion_kw: Mapping[str, Any] | None) -> dict[Group, torch.Tensor]:
    return score(model, graph, criterion, data=data, **dict(criterion_kw or {}))


def _plan(graph: ChannelGraph, scores: Mapping[Group, torch.Tensor], ratio: float, scope: str, normalize_by: str,
          round_to: int, min_channels: int, ignore: Iterable[str], layers: Iterable[str] = (),
          max_ratio: float = 1.0) -> PrunePlan:
    return plan(graph, scores, ratio=ratio, scope=scope, round_to=round_to, min_channels=min_channels, ignore=ignore,
                normalize_by=normalize_by, layers=layers, max_ratio=max_ratio)


_DDP_KEYS = ("nprocs", "backend", "sync_batchnorm")  # pybench.distributed.fine_tune's own arguments


def _in_process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def tune(model: nn.Module, train_loader: Any, epochs: int, fine_tune_kw: Mapping[str, Any] | None) -> None:
    """Fine-tune in place: data-parallel (pybench.distributed) when ``fine_tune_kw`` names processes or a backend,
    or when this process is in an initialised process group (torchrun); else pybench.train.fine_tune."""
    if epochs > 0:
        kw = {"progress": False, **dict(fine_tune_kw or {})}
        if any(k in kw for k in _DDP_KEYS) or _in_process_group():
            from pybench import distributed  # imports torch.distributed machinery only when asked for

            distributed.fine_tune(model, train_loader, epochs, **kw)
        else:
            fine_tune(model, train_loader, epochs, **kw)


def _producer_key(g: Group) -> tuple[str, ...]:
    return tuple(sorted(m.name for m in g.producers)) or tuple(sorted(g.modules))


def _find(graph: ChannelGraph, key: tuple[str, ...]) -> Group | None:
    """The group of a re-traced (pruned) model whose producers are ``key`` (names survive surgery)."""
    for g in graph.groups:
        if _producer_key(g) == key:
            return g
    return None


# ---------------------------------------------------------------------------------------------------------------
# one_shot
# ---------------------------------------------------------------------------------------------------------------
@SCHEDULES.register()
def one_shot(model: nn.Module, example_inputs: Any, ratio: float | None = None, *, macs_target: float | None = None,
             criterion: str = "l1", scope: str = "local", normalize_by: str = "mean", data: Any = None,
             train_loader: Any = None, val_loader: Any = None, fine_tune_epochs: int = 0,
             fine_tune_kw: Mapping[str, Any] | None = None, criterion_kw: Mapping[str, Any] | None = None,
             round_to: int = 1, min_channels: int = 1, ignore: Iterable[str] = (), search_steps: int = 14,
             layers: Iterable[str] = (), max_ratio: float = 1.0, progress: bool = True) -> tuple[nn.Module, History]:
    """Score once, prune once (to ``ratio`` of the channels, or to the smallest channel ratio whose pruned model
    keeps at most ``macs_target`` of the dense MACs), then fine-tune ``fine_tune_epochs`` epochs.

    Args:
        model: the trained dense model (not modified).
        example_inputs: inputs of the model's shape (batch 1 is enough) for tracing and MAC counts.
        ratio: fraction of channels removed (per group for ``scope="local"``, of all for ``"global"``).
        macs_target: fraction of the dense MACs to keep, in (0, 1]; exclusive with ``ratio``. Found by bisection
            over the ratio (``search_steps`` halvings) on the same scores.
        criterion: a name in :data:`pybench.prune.criteria.CRITERIA`; ``data`` feeds the data-driven ones (default:
            ``train_loader``); ``criterion_kw`` its options (e.g. ``{"max_batches": 4}``).
        scope, normalize_by: "local", or "global" ranking after :func:`pybench.prune.planning.normalize`.
        fine_tune_epochs, fine_tune_kw: the fine-tuning after pruning (:func:`pybench.train.fine_tune` arguments;
            ``nprocs`` / ``backend`` make it data-parallel, see the module docstring).
    History: step 0 the dense model, step 1 the pruned (and fine-tuned) model, with ``ratio``.
    """
    _check_model(model)
    if (ratio is None) == (macs_target is None):
        raise ValueError("one_shot: give exactly one of ratio= (fraction of channels removed) or macs_target= "
                         "(fraction of the dense MACs kept)")
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise ValueError(f"one_shot: ratio must be in [0, 1), got {ratio!r}")
    if macs_target is not None and not (isinstance(macs_target, (int, float)) and 0 < macs_target <= 1):
        raise ValueError(f"one_shot: macs_target must be in (0, 1] (fraction of the dense MACs kept), "
                         f"got {macs_target!r}")
    data = train_loader if data is None else data
    _check_criterion(criterion, data)
    _check_epochs(fine_tune_epochs, train_loader, fine_tune_kw)
    _check_loader(val_loader, "val_loader", required=False)
    work = copy.deepcopy(model).eval()
    rec = _Recorder(example_inputs, val_loader)
    bar = tqdm(total=2, desc=f"one_shot {criterion}", disable=not progress, leave=False)
    kw = {"scope": scope, "round_to": round_to, "min_channels": min_channels, "ignore": ignore, "layers": layers,
          "max_ratio": max_ratio,
          "normalize_by": normalize_by}
    if ratio is not None:  # pb.prune: the one one-shot path; it refuses a bad input first, as pb.prune does
        t0 = time.perf_counter()
        out, _ = prune(work, example_inputs, ratio, criterion, data=data, **kw, **dict(criterion_kw or {}))
        pruning_s = time.perf_counter() - t0
        rec.add(0, work, time.perf_counter(), ratio=0.0)
        t0 = time.perf_counter() - pruning_s  # step 1's time is its own: pruning and fine-tuning
    else:
        dense = rec.add(0, work, time.perf_counter(), ratio=0.0)
        t0 = time.perf_counter()
        ratio, out = _macs_search(work, example_inputs, macs_target, dense["macs"], criterion, data, criterion_kw,
                                  search_steps, kw)
    bar.update()
    tune(out, train_loader, fine_tune_epochs, fine_tune_kw)
    bar.update()
    bar.close()
    rec.add(1, out, t0, ratio=float(ratio), criterion=criterion, scope=scope, fine_tune_epochs=fine_tune_epochs)
    return out.eval(), rec.history


def _macs_search(work: nn.Module, example_inputs: Any, macs_target: float, dense_macs: int, criterion: str, data: Any,
                 criterion_kw: Mapping[str, Any] | None, steps: int,
                 plan_kw: dict[str, Any]) -> tuple[float, nn.Module]:
    """(ratio, pruned model): the smallest channel ratio, by ``steps`` halvings on one scoring, whose pruned model
    keeps at most ``macs_target`` of the ``dense_macs``."""
    graph = trace(work, example_inputs)
    scores = _scores(work, graph, criterion, data, criterion_kw)
    lo, hi = 0.0, 1.0 - 1e-6
    best_r, best = None, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        cand = apply(work, plan(graph, scores, ratio=mid, **plan_kw))
        if flops(cand, example_inputs).total_macs <= macs_target * dense_macs:
            best_r, best, hi = mid, cand, mid
        else:
            lo = mid
    if best is None:
        raise ValueError(f"one_shot: no ratio keeps <= {macs_target} of the MACs (min_channels / ignore keep "
                         "too much); raise macs_target")
    return best_r, best


# ---------------------------------------------------------------------------------------------------------------
# iterative (Martineau)
# ---------------------------------------------------------------------------------------------------------------
@SCHEDULES.register()
def iterative(model: nn.Module, example_inputs: Any, ratio: float, steps: int = 3, *, criterion: str = "act_mean",
              scope: str = "local", normalize_by: str = "mean", data: Any = None, train_loader: Any = None,
              val_loader: Any = None, fine_tune_epochs: int = 1, fine_tune_kw: Mapping[str, Any] | None = None,
              criterion_kw: Mapping[str, Any] | None = None, round_to: int = 1, min_channels: int = 1,
              ignore: Iterable[str] = (), layers: Iterable[str] = (), max_ratio: float = 1.0,
              progress: bool = True) -> tuple[nn.Module, History]:
    """``steps`` prune + fine-tune rounds reaching ``ratio`` of the original channels removed: after step i,
    ``ratio * i / steps`` of them are gone; each step re-scores the current model and fine-tunes with a fresh
    optimizer (Martineau). History: step 0 dense, then one record per step with its ``ratio`` (cumulative).
    ``fine_tune_kw`` with ``nprocs`` / ``backend`` fine-tunes each step data-parallel (see the module docstring)."""
    _check_model(model)
    if not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise ValueError(f"iterative: ratio must be in [0, 1), got {ratio!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"iterative: steps must be an int >= 1, got {steps!r}")
    data = train_loader if data is None else data
    _check_criterion(criterion, data)
    _check_epochs(fine_tune_epochs, train_loader, fine_tune_kw)
    _check_loader(val_loader, "val_loader", required=False)
    work = copy.deepcopy(model).eval()
    rec = _Recorder(example_inputs, val_loader)
    rec.add(0, work, time.perf_counter(), ratio=0.0)
    for i in tqdm(range(1, steps + 1), desc=f"iterative {criterion}", disable=not progress, leave=False):
        t0 = time.perf_counter()
        done, goal = ratio * (i - 1) / steps, ratio * i / steps
        step_ratio = 1.0 - (1.0 - goal) / (1.0 - done)  # of the channels still there
        graph = trace(work, example_inputs)
        scores = _scores(work, graph, criterion, data, criterion_kw)
        work = apply(work, _plan(graph, scores, step_ratio, scope, normalize_by, round_to, min_channels, ignore,
                                 layers, max_ratio))
        tune(work, train_loader, fine_tune_epochs, fine_tune_kw)
        work.eval()
        rec.add(i, work, t0, ratio=goal, step_ratio=step_ratio)
    return work, rec.history


# ---------------------------------------------------------------------------------------------------------------
# layerwise_alpha (Sándor et al.)
# ---------------------------------------------------------------------------------------------------------------
def _layer_order(model: nn.Module, graph: ChannelGraph) -> list[tuple[str, ...]]:
    """Groups' producer keys in the order their first producer appears in the model."""
    pos = {name: i for i, (name, _) in enumerate(model.named_modules())}
    groups = [g for g in graph.groups if g.size > 1]
    groups.sort(key=lambda g: min((pos.get(m.name, 1 << 30) for m in g.producers), default=1 << 30))
    return [_producer_key(g) for g in groups]


def _group_scores(model: nn.Module, graph: ChannelGraph, g: Group, criterion: str, data: Any,
                  criterion_kw: Mapping[str, Any] | None) -> torch.Tensor:
    if criterion == "lfe":
        return lfe_group(model, graph, g, data, **dict(criterion_kw or {}))
    return _scores(model, graph, criterion, data, criterion_kw)[g]


@SCHEDULES.register()
def layerwise_alpha(model: nn.Module, example_inputs: Any, train_loader: Any, val_loader: Any, *,
                    alpha: float = 0.005, criterion: str = "lfe", data: Any = None, order: str = "forward",
                    baseline: str = "dense", fine_tune_epochs: int = 1,
                    fine_tune_kw: Mapping[str, Any] | None = None, criterion_kw: Mapping[str, Any] | None = None,
                    macs_target: float | None = None, max_rounds: int = 10, min_channels: int = 1,
                    progress: bool = True) -> tuple[nn.Module, History]:
    """Sándor et al.'s Algorithm 1: layer by layer (``order`` "forward" from the first layer, "backward" from the
    last), score the layer's filters (LFE by default, on ``data``, default ``train_loader``), remove the largest
    number m of its least important filters whose removal costs at most ``alpha`` validation accuracy (a
    fraction: 0.005 = 0.5 %; the search adds filters one at a time on a masked network and stops at the first
    that breaks the threshold), prune them and fine-tune. Sweeps over all layers repeat until a sweep removes
    nothing, the model keeps at most ``macs_target`` of the dense MACs, or ``max_rounds`` sweeps ran.

    ``baseline``: the accuracy drops are measured against the "dense" model's validation accuracy (bounding the
    total drop before fine-tuning) or the "current" model's (per layer, as the paper's section 3.2 reads).
    History: step 0 dense, then one record per pruned layer with ``round``, ``layer`` (its producers), ``removed``
    and ``kept``. ``fine_tune_kw`` with ``nprocs`` / ``backend`` fine-tunes after each layer data-parallel (see the
    module docstring); the accuracy searches stay in this process.
    """
    _check_model(model)
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"layerwise_alpha: alpha must be a number >= 0 (the largest accepted accuracy drop, "
                         f"a fraction: 0.005 = 0.5 %), got {alpha!r}")
    if order not in ("forward", "backward"):
        raise ValueError(f"layerwise_alpha: order must be 'forward' or 'backward', got {order!r}")
    if baseline not in ("dense", "current"):
        raise ValueError(f"layerwise_alpha: baseline must be 'dense' or 'current', got {baseline!r}")
    if macs_target is not None and not 0 < macs_target <= 1:
        raise ValueError(f"layerwise_alpha: macs_target must be in (0, 1], got {macs_target!r}")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"layerwise_alpha: max_rounds must be an int >= 1, got {max_rounds!r}")
    _check_loader(val_loader, "val_loader")
    data = train_loader if data is None else data
    _check_criterion(criterion, data)
    _check_epochs(fine_tune_epochs, train_loader, fine_tune_kw)
    work = copy.deepcopy(model).eval()
    rec = _Recorder(example_inputs, val_loader)
    dense = rec.add(0, work, time.perf_counter())
    ref_acc = dense["accuracy"]
    step = 0
    bar = tqdm(desc=f"layerwise_alpha {criterion}", disable=not progress, leave=False)
    for rnd in range(1, max_rounds + 1):
        keys = _layer_order(work, trace(work, example_inputs))
        if order == "backward":
            keys.reverse()
        removed_this_round = 0
        for key in keys:
            t0 = time.perf_counter()
            graph = trace(work, example_inputs)
            g = _find(graph, key)
            if g is None or g.size <= min_channels:
                continue
            base = ref_acc if baseline == "dense" else evaluate(work, val_loader)["top1"]
            theta = _group_scores(work, graph, g, criterion, data, criterion_kw)
            asc = np.argsort(theta.numpy(), kind="stable")
            m_best = 0
            for m in range(1, g.size - min_channels + 1):
                keep = torch.as_tensor(np.sort(asc[m:]), dtype=torch.long)
                with lfe.masked_consumers(work, graph, g, keep):
                    acc = evaluate(work, val_loader)["top1"]
                if acc < base - alpha - 1e-12:
                    break
                m_best = m
            bar.update()
            if m_best == 0:
                continue
            rank = torch.empty(g.size, dtype=torch.float64)
            rank[torch.as_tensor(asc)] = torch.arange(g.size, dtype=torch.float64)  # distinct: no ties in plan
            p = plan(graph, {g: rank}, ratio=m_best / g.size, scope="local", min_channels=min_channels)
            work = apply(work, p)
            tune(work, train_loader, fine_tune_epochs, fine_tune_kw)
            work.eval()
            step += 1
            removed_this_round += m_best
            r = rec.add(step, work, t0, round=rnd, layer=",".join(key), removed=m_best, kept=g.size - m_best)
            if macs_target is not None and r["macs"] <= macs_target * dense["macs"]:
                bar.close()
                return work, rec.history
        if removed_this_round == 0:
            break
    bar.close()
    return work, rec.history


# ---------------------------------------------------------------------------------------------------------------
# gradual_global (Wang et al.)
# ---------------------------------------------------------------------------------------------------------------
@SCHEDULES.register()
def gradual_global(model: nn.Module, example_inputs: Any, train_loader: Any, val_loader: Any,
                   target: float | None = None, *, target_drop: float | None = None, rate: float = 0.1,
                   criterion: str = "aaws", normalize_by: str = "mean", data: Any = None,
                   fine_tune_epochs: int = 1, fine_tune_kw: Mapping[str, Any] | None = None,
                   criterion_kw: Mapping[str, Any] | None = None, max_steps: int = 50, round_to: int = 1,
                   min_channels: int = 1, ignore: Iterable[str] = (), layers: Iterable[str] = (),
                   max_ratio: float = 1.0, progress: bool = True) -> tuple[nn.Module, History]:
    """Wang et al.'s gradually global pruning: while the validation accuracy P_m >= ``target`` (P_t, a fraction):
    score all filters, normalise per layer (``normalize_by``), remove ``rate`` of all remaining filters in one
    global ranking, fine-tune, re-evaluate. Returns the last model whose accuracy was at or above the target
    (the dense model when the first step already falls below it). ``target_drop`` instead of ``target`` sets
    P_t relative to the dense model: its validation accuracy less ``target_drop`` (0.02: two points below dense,
    which is how a target transfers to another dataset or training run); give exactly one of the two. The target
    used is in the history's step 0 (``target``).

    History: step 0 dense, then every step with ``accepted`` (accuracy >= target) and ``channels`` (prunable
    channels left). Stops after the first rejected step, when nothing can be removed, or after ``max_steps``.
    ``fine_tune_kw`` with ``nprocs`` / ``backend`` fine-tunes each step data-parallel (see the module docstring).
    """
    _check_model(model)
    if (target is None) == (target_drop is None):
        raise ValueError("gradual_global: give exactly one of target (an accuracy fraction, e.g. 0.9) and "
                         f"target_drop (points below the dense model, e.g. 0.02), got target={target!r}, "
                         f"target_drop={target_drop!r}")
    for name, v in (("target", target), ("target_drop", target_drop)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
            raise ValueError(f"gradual_global: {name} must be an accuracy fraction in [0, 1], got {v!r}")
    if not isinstance(rate, (int, float)) or not 0 < rate < 1:
        raise ValueError(f"gradual_global: rate must be in (0, 1) (fraction of remaining filters per step), "
                         f"got {rate!r}")
    _check_loader(val_loader, "val_loader")
    data = train_loader if data is None else data
    _check_criterion(criterion, data)
    _check_epochs(fine_tune_epochs, train_loader, fine_tune_kw)
    work = copy.deepcopy(model).eval()
    rec = _Recorder(example_inputs, val_loader)
    dense = rec.add(0, work, time.perf_counter(), accepted=True)
    if target is None:
        target = dense["accuracy"] - target_drop
    dense["target"] = target
    if dense["accuracy"] < target:
        raise ValueError(f"gradual_global: target {target} is above the dense model's validation accuracy "
                         f"{dense['accuracy']:.4f}; choose a target <= it")
    best = work
    for i in tqdm(range(1, max_steps + 1), desc=f"gradual_global {criterion}", disable=not progress, leave=False):
        t0 = time.perf_counter()
        graph = trace(best, example_inputs)
        scores = _scores(best, graph, criterion, data, criterion_kw)
        p = _plan(graph, scores, rate, "global", normalize_by, round_to, min_channels, ignore, layers, max_ratio)
        if p.n_removed == 0:
            break
        cand = apply(best, p)
        tune(cand, train_loader, fine_tune_epochs, fine_tune_kw)
        cand.eval()
        metrics = rec.metrics(cand)
        ok = metrics["accuracy"] >= target
        rec.add(i, cand, t0, metrics, accepted=ok, removed=p.n_removed,
                channels=sum(g.size for g in graph.groups) - p.n_removed)
        if not ok:
            break
        best = cand
    return best, rec.history
