"""The worker side of the runner: the code that runs inside each worker subprocess.

:mod:`pybench.runner` (the driver) starts ``python -m pybench.runner --worker RUN_FOLDER`` per chunk of cells and
writes a JSON job to its stdin; :func:`_worker_main` trains or loads the dense models (:class:`_Context`), prunes
each group once (:func:`prune_model`, cached in the run folder's ``cache/``), measures each cell
(:func:`measure_cell`) and sends one ``PYBENCH-MSG`` line per event and record back on stdout. It lives apart from
the driver so that the process that never touches a model and the one that builds and measures them are separate
modules; the few pieces both sides need (the message prefix, timestamps, atomic writes, :func:`failed_record`)
live here and the driver imports them, so the dependency runs one way (runner -> worker).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import inspect
import json
import os
import re
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pybench.results import SCHEMA_VERSION, clean_json
from pybench.suite import Cell

_PROTO = "PYBENCH-MSG "


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def failed_record(cell: Cell, run_id: str, error: str, env: dict[str, Any], started: str | None = None) -> dict:
    """The record of a cell that did not produce one itself (its worker crashed, hung or could not prepare it)."""
    return {"schema": SCHEMA_VERSION, "cell_id": cell.cell_id, "group_id": cell.group_id, "run_id": run_id,
            "status": "failed", "error": error, "config": cell.config, "achieved": {}, "metrics": {},
            "details": {}, "environment": env, "started": started or _now(), "finished": _now(), "duration_s": None}


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class _Context:
    """Per-worker state: data loaders, dense models and their figures, reused across the chunk's groups."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache = folder / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self._loaders: dict[str, Any] = {}
        self._dense: dict[str, tuple[Any, dict[str, Any]]] = {}

    def loaders(self, cfg: dict[str, Any]) -> Any:
        d = cfg["data"]
        if not d["name"]:
            return None
        key = _digest([d, cfg["data_root"], cfg["seed"]])
        if key not in self._loaders:
            from pybench import data

            self._loaders[key] = data.loaders(d["name"], root=cfg["data_root"] or None, batch_size=d["batch_size"],
                                              eval_batch_size=d["eval_batch_size"], seed=cfg["seed"], **d["options"])
        return self._loaders[key]

    def dense(self, cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The dense model of ``cfg`` (trained per [train] once, cached in the run folder) and its figures."""
        import torch

        from pybench import measure, train, zoo

        mc = cfg["model_config"]
        ident = {"model": cfg["model"], "model_config": mc, "train": cfg["train"], "data": cfg["data"],
                 "seed": cfg["seed"]}
        key = _digest(ident)
        if key in self._dense:
            return self._dense[key]
        torch.manual_seed(cfg["seed"])  # the random init is part of the cell's definition
        model = zoo.create(cfg["model"], num_classes=mc["num_classes"], weights=mc["weights"], **mc["kwargs"])
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", cfg["model"])  # timm:NAME, module:callable, plugin names
        path = self.cache / f"dense-{safe}-{key}.pt"
        info: dict[str, Any] = {"trained": False}
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            info["trained"] = cfg["train"]["epochs"] > 0
        elif cfg["train"]["epochs"] > 0:
            t = cfg["train"]
            ld = self.loaders(cfg)
            t0 = time.perf_counter()
            train.train(model, ld.train, t["epochs"], lr=t["lr"], momentum=t["momentum"],
                        weight_decay=t["weight_decay"], optimizer=t["optimizer"], scheduler=t["scheduler"] or None,
                        seed=cfg["seed"], max_batches=t["max_batches"] or None, progress=False, device="cpu")
            train.recalibrate_bn(model, ld.train, t["bn_recalibrate_batches"])
            info.update(trained=True, train_s=time.perf_counter() - t0)
            buf = _state_bytes(model.state_dict())
            _atomic_write(path, buf)
        model.eval()
        x = example_input(cfg)
        fl = measure.flops(model, x)
        info.update(params=fl.params, macs=fl.total_macs)
        self._dense[key] = (model, info)
        return model, info


def _state_bytes(obj: Any) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _options_for(cfg: dict[str, Any]) -> dict[str, Any]:
    """The suite's criterion_options that this cell's criterion takes (a suite of several criteria lists the
    options of all; the suite refused keys none of them takes)."""
    from pybench.criteria import criterion_options

    allowed = criterion_options(cfg["criterion"])
    return {k: v for k, v in cfg["prune"]["criterion_options"].items() if k in allowed}


def _saved_bytes(model: Any) -> bytes:
    """``model`` in pb.save's file format (what :func:`pybench.serialize.load` reads back)."""
    import io

    from pybench import serialize

    buf = io.BytesIO()
    serialize.save(model, buf)
    return buf.getvalue()


def example_input(cfg: dict[str, Any], batch: int | None = None) -> Any:
    """A seeded random input of the cell's input size (batch ``batch`` or the prune example batch)."""
    import torch

    g = torch.Generator().manual_seed(cfg["seed"])
    n = batch or (cfg["prune"] or {}).get("example_batch_size", 1)
    return torch.randn(n, *cfg["model_config"]["input_size"], generator=g)


def _accepts(fn: Callable[..., Any], kw: dict[str, Any]) -> dict[str, Any]:
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return kw
    return {k: v for k, v in kw.items() if k in sig.parameters}


def prune_model(dense: Any, cfg: dict[str, Any], loaders: Any) -> Any:
    """Prune ``dense`` per the cell config (criterion, schedule, level, [prune]); returns the pruned model."""
    from pybench import pipeline

    p = cfg["prune"]
    x = example_input(cfg)
    data = None
    if loaders is not None and p["calibration_batches"] > 0:
        data = [b for _, b in zip(range(p["calibration_batches"]), loaders.train, strict=False)]
    kw = {"scope": p["scope"], "round_to": p["round_to"], "min_channels": p["min_channels"],
          "ignore": tuple(p["ignore"])}
    if cfg["schedule"] == "one_shot":
        out = pipeline.prune(dense, x, ratio=cfg["level"], criterion=cfg["criterion"], data=data, **kw,
                             **_options_for(cfg))
    else:
        out = _schedule(dense, x, cfg, data, loaders, kw)
    return out[0] if isinstance(out, tuple) else out


def pins_of(dense: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """:func:`pybench.pipeline.pin_summary` of the dense model's graph: which channels no plan can remove, why."""
    import warnings

    from pybench import graph, pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a training-mode warning here repeats what pruning said
        return pipeline.pin_summary(graph.trace(dense, example_input(cfg)))


def _ft_procs(cfg: dict[str, Any]) -> tuple[int, str]:
    """(processes, backend) that fine-tune the cell's pruned model: ``[run] fine_tune_processes`` and
    ``fine_tune_backend`` ("" = gloo: the runner trains on the CPU; "nccl": one GPU per process). Records written
    before these settings existed ran one process."""
    return int(cfg.get("fine_tune_processes") or 1), cfg.get("fine_tune_backend") or "gloo"


def _ft_kw(ft: dict[str, Any] | None, cfg: dict[str, Any]) -> dict[str, Any]:
    """pybench.train.fine_tune arguments of [fine_tune]; with more than one process also ``nprocs`` / ``backend``,
    which route the fine-tuning to pybench.distributed.fine_tune (the schedules do the same on these keys)."""
    if not ft:
        return {}
    kw = {"lr": ft["lr"], "momentum": ft["momentum"], "weight_decay": ft["weight_decay"],
          "optimizer": ft["optimizer"], "scheduler": ft["scheduler"] or None, "max_batches": ft["max_batches"] or None}
    procs, backend = _ft_procs(cfg)
    if procs > 1:
        kw.update(nprocs=procs, backend=backend)
    return kw


def _fine_tune(model: Any, loader: Any, epochs: int, **kw: Any) -> None:
    """One-shot's fine-tune after pruning: pybench.train.fine_tune on the CPU, or data-parallel over ``nprocs``
    processes (pybench.distributed.fine_tune; with "nccl" each process takes a GPU and the model comes back to the
    CPU)."""
    if "nprocs" in kw:
        from pybench import distributed

        if kw.get("backend") != "nccl":
            kw["device"] = "cpu"
        distributed.fine_tune(model, loader, epochs, **kw)
    else:
        from pybench import train

        train.fine_tune(model, loader, epochs, device="cpu", **kw)


# a schedule's arguments that a cell fills (the model, its input, data, loaders, [fine_tune], the level): the rest
# are what [prune] schedule_options.<schedule> may set
_FILLED_BY_THE_CELL = frozenset({"model", "example_inputs", "criterion", "data", "progress", "train_loader",
                                 "val_loader", "fine_tune_epochs", "fine_tune_kw", "criterion_kw", "ratio",
                                 "macs_target"})


def schedule_options(name: str) -> list[str]:
    """The keys ``[prune] schedule_options.<name>`` may hold. one_shot cells prune through pybench.prune with
    [prune]'s own keys (scope, round_to, min_channels, ignore), so they take none."""
    if name == "one_shot":
        return []
    from pybench import schedules

    return sorted(set(inspect.signature(getattr(schedules, name)).parameters) - _FILLED_BY_THE_CELL)


def _schedule(dense: Any, x: Any, cfg: dict[str, Any], data: Any, loaders: Any, kw: dict[str, Any]) -> Any:
    """Run a pybench.schedules schedule. ``level`` is its ``ratio``; for layerwise_alpha (no ratio) it becomes
    ``macs_target = 1 - level``; gradual_global stops at its accuracy ``target`` ([prune] schedule_options). The
    schedule fine-tunes between its steps with the suite's [fine_tune] settings, data-parallel over
    ``[run] fine_tune_processes`` processes when more than one."""
    from pybench import schedules

    name = cfg["schedule"]
    fn = getattr(schedules, name, None)
    if fn is None:
        raise RuntimeError(f"pybench.schedules has no {name!r} (it has {', '.join(schedules.__all__)})")
    params = inspect.signature(fn).parameters
    ft = cfg.get("fine_tune") or {}
    extra: dict[str, Any] = {"criterion": cfg["criterion"], "data": data, "progress": False,
                             "train_loader": loaders.train if loaders else None,
                             "val_loader": (loaders.val or loaders.test) if loaders else None,
                             "fine_tune_epochs": ft.get("epochs", 0), "fine_tune_kw": _ft_kw(ft, cfg),
                             "criterion_kw": _options_for(cfg) or None, **kw}
    if "ratio" in params:
        extra["ratio"] = cfg["level"]
    elif "macs_target" in params:
        extra["macs_target"] = 1 - cfg["level"]
    extra.update(cfg["prune"]["schedule_options"])
    return fn(dense, x, **{k: v for k, v in extra.items() if k in params})


def _pruned(ctx: _Context, cfg: dict[str, Any], group_id: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model to measure, dense model, achieved figures) of a group; pruned + fine-tuned models are cached."""

    from pybench import measure, serialize, train

    dense, dinfo = ctx.dense(cfg)
    info: dict[str, Any] = {"dense_params": dinfo["params"], "dense_macs": dinfo["macs"],
                            "dense_trained": dinfo["trained"]}
    if cfg["level"] == 0:
        model = dense
    else:
        path = ctx.cache / f"pruned-{group_id}.pt"
        made = path.with_suffix(".json")  # how the cached model was fine-tuned (processes), for its records
        model = None
        if path.exists():
            # pb.save's format: tensors and JSON, never a pickle (a run folder from elsewhere runs no code); its
            # builder is trusted only if it is this cell's own model. An unreadable or refused cache is rebuilt.
            with contextlib.suppress(Exception):
                model = serialize.load(path, trust=(cfg["model"],))
                info.update(json.loads(made.read_text()) if made.exists() else {})
        if model is None:
            loaders = ctx.loaders(cfg)
            t0 = time.perf_counter()
            model = prune_model(dense, cfg, loaders)
            info["prune_s"] = time.perf_counter() - t0
            ft = cfg["fine_tune"]
            how: dict[str, Any] = {}
            if ft and ft["epochs"] > 0:
                procs, backend = _ft_procs(cfg)
                how = {"fine_tune_processes": procs, **({"fine_tune_backend": backend} if procs > 1 else {})}
            if how and cfg["schedule"] == "one_shot":  # the other schedules fine-tune inside
                t0 = time.perf_counter()
                _fine_tune(model, loaders.train, ft["epochs"], seed=cfg["seed"], progress=False,
                           **_ft_kw(ft, cfg))
                train.recalibrate_bn(model, loaders.train, ft["bn_recalibrate_batches"])
                info["fine_tune_s"] = time.perf_counter() - t0
            info.update(how)
            with contextlib.suppress(Exception):  # a model pb.save cannot rebuild is simply not cached
                _atomic_write(path, _saved_bytes(model))
                _atomic_write(made, json.dumps(how).encode())
        info["pins"] = pins_of(dense, cfg)
        model.eval()
    fl = measure.flops(model, example_input(cfg))
    info.update(params=fl.params, macs=fl.total_macs, params_kept=fl.params / dinfo["params"],
                macs_kept=fl.total_macs / dinfo["macs"] if dinfo["macs"] else None,
                theoretical_speedup=dinfo["macs"] / fl.total_macs if fl.total_macs else None)
    return model, dense, info


def _noise(values: list[float]) -> float | None:
    """Relative spread of the repeats, (max - min) / median; None with one repeat (noise unknown)."""
    if len(values) < 2:
        return None
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med else None


def measure_cell(model: Any, cfg: dict[str, Any], accuracy: dict[str, Any] | None) -> tuple[dict, dict]:
    """(metrics, details) of one cell: latency percentiles and throughput, peak memory, accuracy, energy."""
    from pybench import measure

    met = cfg["metrics"]
    collect = set(met["collect"])
    x = example_input(cfg, batch=1)
    bs, dev, dt = cfg["batch_size"], cfg["device"], cfg["dtype"]
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if "latency" in collect or "energy" in collect:
        runs = []
        energy = "energy" in collect and dev.startswith("cuda")
        for _ in range(met["repeats"]):
            r = measure.latency(model, x, device=dev, dtype=dt, warmup=met["warmup"], iters=met["iters"],
                                min_time=met["min_time"] or None, batch_size=bs, channels_last=met["channels_last"],
                                energy=energy)
            if r.error:
                raise RuntimeError(r.error)
            runs.append(r)
        import numpy as np

        p50s = [r.p50_ms for r in runs]
        pooled = np.concatenate([r.samples_ms for r in runs])
        p50 = statistics.median(p50s)
        metrics.update(latency_p50_ms=p50, latency_p90_ms=float(np.percentile(pooled, 90)),
                       latency_p99_ms=float(np.percentile(pooled, 99)), latency_mean_ms=float(pooled.mean()),
                       latency_min_ms=float(pooled.min()), throughput=bs / p50 * 1e3, latency_noise=_noise(p50s))
        details["latency_repeats_p50_ms"] = p50s
        details["latency"] = {k: v for k, v in runs[0].to_dict().items() if k != "samples_ms"}
        if dev.startswith("cuda"):  # clocks, power, temperature and throttle reasons right after the timed loops
            details["gpu_telemetry"] = measure.telemetry(dev).to_dict()
        if energy:
            per_item = [r.energy.energy_per_item_j for r in runs
                        if r.energy is not None and r.energy.energy_per_item_j is not None]
            if per_item:
                metrics["energy_j_per_item"] = statistics.median(per_item)
            details["energy"] = [r.energy.to_dict() for r in runs if r.energy is not None]
    if "memory" in collect:
        mems = []
        for _ in range(met["repeats"]):
            m = measure.memory(model, x, device=dev, dtype=dt, batch_size=bs, channels_last=met["channels_last"])
            if m.error:
                raise RuntimeError(m.error)
            mems.append(m)
        peaks = [float(m.peak_bytes) for m in mems]
        metrics.update(peak_memory_bytes=statistics.median(peaks), memory_noise=_noise(peaks),
                       param_bytes=mems[0].param_bytes, buffer_bytes=mems[0].buffer_bytes)
        details["memory"] = mems[0].to_dict()
    if "accuracy" in collect and accuracy is not None:
        metrics.update(top1=accuracy["top1"], top5=accuracy["top5"], loss=accuracy["loss"],
                       accuracy_samples=accuracy["samples"])
    return metrics, details


def _inject_fault(cell_id: str) -> None:
    """Test hook: PYBENCH_FAULT="crash:ID" / "hang:ID" / "raise:ID" (ID a cell id prefix, or *) makes this worker die by
    SIGKILL (as the OOM killer would), hang, or raise while measuring that cell — how the tests prove isolation."""
    spec = os.environ.get("PYBENCH_FAULT", "")
    for part in filter(None, spec.split(";")):
        kind, _, prefix = part.partition(":")
        if prefix == "*" or (prefix and cell_id.startswith(prefix)):
            if kind == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            elif kind == "hang":
                time.sleep(3600)
            elif kind == "raise":
                raise RuntimeError(f"injected fault for cell {cell_id}")


def _worker_main(folder: str) -> int:
    """Read a job from stdin, send messages on the original stdout; everything else printed goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(msg: dict[str, Any]) -> None:
        proto.write(_PROTO + json.dumps(clean_json(msg), allow_nan=False) + "\n")
        proto.flush()

    job = json.load(sys.stdin)
    from pybench import measure

    env = measure.environment().to_dict()
    ctx = _Context(Path(folder))
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in job["cells"]:
        groups.setdefault(c["group_id"], []).append(c)
    for gid, cells in groups.items():
        send({"type": "group", "group_id": gid})
        cfg0 = cells[0]["config"]
        try:
            model, _, achieved = _pruned(ctx, cfg0, gid)
            acc = None
            if "accuracy" in cfg0["metrics"]["collect"]:
                mb = cfg0["metrics"]["accuracy_max_batches"] or None
                a = measure.accuracy(model, ctx.loaders(cfg0).test, device="cpu", max_batches=mb)
                if a.error:
                    raise RuntimeError(a.error)
                acc = a.to_dict()
        except Exception as e:
            err = f"preparing the group failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
            for c in cells:
                cell = Cell(c["cell_id"], gid, c["config"])
                send({"type": "record", "record": failed_record(cell, "", err, env)})
            continue
        for c in cells:
            started = _now()
            send({"type": "start", "cell_id": c["cell_id"], "time": started})
            t0 = time.perf_counter()
            rec = {"schema": SCHEMA_VERSION, "cell_id": c["cell_id"], "group_id": gid, "run_id": "",
                   "status": "ok", "error": None, "config": c["config"], "achieved": achieved, "metrics": {},
                   "details": {"accuracy": acc} if acc else {}, "environment": env, "started": started}
            try:
                _inject_fault(c["cell_id"])
                rec["metrics"], details = measure_cell(model, c["config"], acc)
                rec["details"].update(details)
            except Exception as e:
                rec.update(status="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
            rec.update(finished=_now(), duration_s=time.perf_counter() - t0)
            send({"type": "record", "record": rec})
    return 0
