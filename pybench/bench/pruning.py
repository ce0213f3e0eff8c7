"""The pruning side of a worker: a cell's dense model pruned per its criterion, schedule and [prune] settings,
through the engine's schedules registry, then fine-tuned per [fine_tune]; pruned models are cached in the run
folder (pb.save's format: tensors and JSON, never a pickle)."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import time
import warnings
from typing import Any

from pybench.bench.config import Cell, FineTuneSettings, PruneSettings, jsonable
from pybench.bench.dense import Context, digest, example_input
from pybench.bench.protocol import atomic_write


def _criterion_options(cell: Cell) -> dict[str, Any]:
    """The suite's criterion_options that this cell's criterion takes (a suite of several criteria lists the
    options of all; the suite refused keys none of them takes)."""
    from pybench.prune.criteria import criterion_options

    allowed = criterion_options(cell.criterion)
    return {k: v for k, v in cell.prune.criterion_options.items() if k in allowed}


def fine_tune_kw(ft: FineTuneSettings | None, processes: int = 1, backend: str = "") -> dict[str, Any]:
    """pybench.train.fine_tune arguments of [fine_tune]; with more than one process also ``nprocs`` / ``backend``
    (the schedules then fine-tune through pybench.distributed). The runner fine-tunes on the CPU unless the
    backend is "nccl" (one GPU per process)."""
    if ft is None:
        return {}
    kw: dict[str, Any] = {"lr": ft.lr, "momentum": ft.momentum, "weight_decay": ft.weight_decay,
                          "optimizer": ft.optimizer, "scheduler": ft.scheduler or None,
                          "max_batches": ft.max_batches or None}
    if processes > 1:
        kw.update(nprocs=processes, backend=backend or "gloo")
    return kw


def prune_with(dense: Any, x: Any, *, criterion: str, schedule: str, level: float, settings: PruneSettings,
               data: Any = None, loaders: Any = None, fine_tune: FineTuneSettings | None = None,
               fine_tune_processes: int = 1, fine_tune_backend: str = "",
               criterion_kw: dict[str, Any] | None = None, fine_tune_device: str | None = None) -> Any:
    """Prune ``dense`` by the named schedule of :data:`pybench.prune.schedules.SCHEDULES` at ``level`` (its
    ``ratio``; for layerwise_alpha, which has none, ``macs_target = 1 - level``); returns the pruned model. The
    schedules but one_shot fine-tune between their steps with ``fine_tune``, data-parallel over
    ``fine_tune_processes`` processes when more than one (on ``fine_tune_device``, default where the model is;
    "nccl" picks a GPU per process); a one_shot model is fine-tuned by :func:`fine_tune_once`."""
    from pybench.prune.schedules import SCHEDULES

    fn = SCHEDULES[schedule]
    params = inspect.signature(fn).parameters
    # one_shot is fine-tuned by the caller (timed apart, then BN-recalibrated); the others fine-tune between steps
    epochs = fine_tune.epochs if fine_tune and schedule != "one_shot" else 0
    tune_kw = fine_tune_kw(fine_tune, fine_tune_processes, fine_tune_backend)
    if tune_kw and fine_tune_device and tune_kw.get("backend") != "nccl":
        tune_kw["device"] = fine_tune_device
    given: dict[str, Any] = {
        "criterion": criterion, "data": data, "progress": False,
        # one_shot's fine-tune is the caller's and its history is not kept (the cell measures accuracy itself)
        "train_loader": loaders.train if loaders and schedule != "one_shot" else None,
        "val_loader": (loaders.val or loaders.test) if loaders and schedule != "one_shot" else None,
        "fine_tune_epochs": epochs, "fine_tune_kw": tune_kw, "criterion_kw": criterion_kw or None,
        "scope": settings.scope, "round_to": settings.round_to, "min_channels": settings.min_channels,
        "ignore": tuple(settings.ignore), "layers": tuple(settings.layers),
        "max_ratio": settings.max_ratio, **settings.schedule_options}
    given["ratio" if "ratio" in params else "macs_target"] = level if "ratio" in params else 1 - level
    out = fn(dense, x, **{k: v for k, v in given.items() if k in params})
    return out[0] if isinstance(out, tuple) else out


def prune_model(dense: Any, cell: Cell, loaders: Any) -> Any:
    """Prune ``dense`` per the cell (criterion, schedule, level, [prune], [fine_tune]) on the cell's
    :attr:`~pybench.bench.config.Cell.work_device` (data-driven criteria score there; the schedules fine-tune on
    its ``fine_tune_device``); returns the pruned model, on that device."""
    p = cell.prune
    data = None
    if loaders is not None and p.calibration_batches > 0:
        data = [b for _, b in zip(range(p.calibration_batches), loaders.train, strict=False)]
    from pybench.measure._common import on_device_or_copy

    dev = cell.work_device
    return prune_with(on_device_or_copy(dense, dev), example_input(cell).to(dev), criterion=cell.criterion,
                      schedule=cell.schedule, level=cell.level, settings=p, data=data, loaders=loaders,
                      fine_tune=cell.fine_tune, fine_tune_processes=cell.fine_tune_processes,
                      fine_tune_backend=cell.fine_tune_backend, criterion_kw=_criterion_options(cell),
                      fine_tune_device=cell.fine_tune_device)


def latency_table_for(ctx: Context, cell: Cell, dense: Any) -> tuple[Any, dict[str, Any]]:
    """(latency table, how it was had) of the cell's target: [prune] lut's file, else the one measured for this
    model and target into the run folder's cache (measured on first use; plain JSON, loaded as data)."""
    import pybench as pb
    from pybench.prune import LatencyTable

    p = cell.prune
    if p.lut:
        table, how = LatencyTable.load(p.lut), {"lut": "file"}
    else:
        key = {"model": cell.model, "model_config": jsonable(cell.model_config), "batch_size": cell.batch_size,
               "dtype": cell.dtype, "device": cell.device, "backend": cell.backend, "options": p.lut_options,
               "threads": cell.metrics.threads}
        path = ctx.cache / f"lut-{digest(key)}.json"
        table = None
        if path.exists():
            with contextlib.suppress(OSError, ValueError):  # an unreadable table is measured again
                table, how = LatencyTable.load(path), {"lut": "cached"}
        if table is None:
            t0 = time.perf_counter()
            table = pb.latency_table(dense, example_input(cell, batch=1), device=cell.device, backend=cell.backend,
                                     dtype=cell.dtype, batch_size=cell.batch_size, **p.lut_options)
            how = {"lut": "measured", "lut_s": time.perf_counter() - t0}
            atomic_write(path, json.dumps(table.to_dict()).encode())
    table.check(device=cell.device.split(":")[0], backend=cell.backend, dtype=cell.dtype,
                batch_size=cell.batch_size)
    return table, how


def prune_to_budget(ctx: Context, dense: Any, cell: Cell, loaders: Any) -> tuple[Any, dict[str, Any]]:
    """A target = "latency" cell's cut: its level is the latency budget, met on the cell's own device, backend,
    dtype and batch size by :func:`pybench.prune_to_latency` (planned on the table, corrected by paired
    measurements). Returns (pruned model, its achieved latency figures)."""
    import pybench as pb

    p = cell.prune
    table, how = latency_table_for(ctx, cell, dense)
    data = None
    if loaders is not None and p.calibration_batches > 0:
        data = [b for _, b in zip(range(p.calibration_batches), loaders.train, strict=False)]
    model, plan, fit = pb.prune_to_latency(
        dense, example_input(cell, batch=1), cell.level, table, criterion=cell.criterion, data=data,
        round_to=p.round_to, min_channels=p.min_channels, ignore=tuple(p.ignore), layers=tuple(p.layers),
        max_ratio=p.max_ratio,
        normalize_by=p.schedule_options.get("normalize_by", "mean"), rounds=p.latency_rounds,
        tolerance=p.latency_tolerance, device=cell.device, target_ci=cell.metrics.target_ci,
        max_time_s=cell.metrics.max_time_s, channels_last=cell.metrics.channels_last,
        **_criterion_options(cell))
    return model, {**how, "latency_budget": cell.level, "predicted_latency": fit.predicted,
                   "predicted_ms": plan.predicted_ms, "planned_latency": fit.measured,
                   "planned_latency_met": fit.met, "latency_fit": fit.to_dict()}


def fine_tune_once(model: Any, cell: Cell, loaders: Any) -> None:
    """One_shot's fine-tune after pruning, in place: seeded, on the cell's ``fine_tune_device`` (one GPU per
    process with "nccl"), then the BatchNorm statistics re-estimated."""
    from pybench import train
    from pybench.prune.schedules import tune

    ft = cell.fine_tune
    kw = {**fine_tune_kw(ft, cell.fine_tune_processes, cell.fine_tune_backend), "seed": cell.seed}
    if kw.get("backend") != "nccl":
        kw["device"] = cell.fine_tune_device
    tune(model, loaders.train, ft.epochs, kw)
    train.recalibrate_bn(model, loaders.train, ft.bn_recalibrate_batches)


def pins_of(dense: Any, x: Any) -> dict[str, Any]:
    """:func:`pybench.prune.pipeline.pin_summary` of the dense model's graph: which channels no plan can remove."""
    import pybench as pb
    from pybench.prune import pin_summary

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a training-mode warning here repeats what pruning said
        return pin_summary(pb.trace(dense, x))


def _saved_bytes(model: Any) -> bytes:
    """``model`` in pb.save's file format (what pb.load reads back)."""
    import pybench as pb

    buf = io.BytesIO()
    pb.save(model, buf)
    return buf.getvalue()


def pruned(ctx: Context, cell: Cell) -> tuple[Any, Any, dict[str, Any]]:
    """(model to measure, dense model, achieved figures) of the cell's group; pruned + fine-tuned models are cached."""
    import pybench as pb
    from pybench import measure

    dense, dinfo = ctx.dense(cell)
    info: dict[str, Any] = {"dense_params": dinfo["params"], "dense_macs": dinfo["macs"],
                            "dense_trained": dinfo["trained"],
                            **({"dense_train_device": dinfo["train_device"]} if "train_device" in dinfo else {})}
    if cell.level == 0:
        model = dense
    else:
        path = ctx.cache / f"pruned-{cell.group_id}.pt"
        made = path.with_suffix(".json")  # how the cached model was fine-tuned (processes), for its records
        model = None
        if path.exists():
            # pb.save's format: tensors and JSON, never a pickle (a run folder from elsewhere runs no code); its
            # builder is trusted only if it is this cell's own model. An unreadable or refused cache is rebuilt.
            with contextlib.suppress(Exception):
                model = pb.load(path, trust=(cell.model,))
                info.update(json.loads(made.read_text()) if made.exists() else {})
        if model is None:
            loaders = ctx.loaders(cell)
            ft = cell.fine_tune
            tunes = bool(ft and ft.epochs > 0)
            t0 = time.perf_counter()
            budgeted: dict[str, Any] = {}
            if cell.prune.target == "latency":
                model, budgeted = prune_to_budget(ctx, dense, cell, loaders)
            else:
                model = prune_model(dense, cell, loaders)
            info["prune_s"] = time.perf_counter() - t0
            if tunes and cell.schedule == "one_shot":  # the other schedules fine-tune inside
                t0 = time.perf_counter()
                fine_tune_once(model, cell, loaders)
                info["fine_tune_s"] = time.perf_counter() - t0
            model.cpu()  # kept and cached on the CPU, like the dense model; measurements move their own copy
            info["prune_device"] = cell.work_device
            if tunes:
                info["fine_tune_device"] = cell.fine_tune_device
            how: dict[str, Any] = {}
            if tunes:
                procs = cell.fine_tune_processes
                how = {"fine_tune_processes": procs,
                       **({"fine_tune_backend": cell.fine_tune_backend or "gloo"} if procs > 1 else {})}
            how.update(budgeted)  # kept beside the cached model: its records say how its budget was met
            info.update(how)
            with contextlib.suppress(Exception):  # a model pb.save cannot rebuild is simply not cached
                atomic_write(path, _saved_bytes(model))
                atomic_write(made, json.dumps(how).encode())
        info["pins"] = pins_of(dense, example_input(cell))
        model.eval()
    fl = measure.flops(model, example_input(cell))
    info.update(params=fl.params, macs=fl.total_macs, params_kept=fl.params / dinfo["params"],
                macs_kept=fl.total_macs / dinfo["macs"] if dinfo["macs"] else None,
                theoretical_speedup=dinfo["macs"] / fl.total_macs if fl.total_macs else None)
    return model, dense, info
