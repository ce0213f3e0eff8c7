"""Runs a suite's cells, each group in a worker subprocess, into a run folder; resumable after any kill.

The parent process never touches a model: it expands the suite, skips cells the store already holds, and hands
chunks of cells (one prune group by default; ``[run] isolation`` = "cell" | "group" | "model") to a fresh
``python -m pybench.runner --worker`` process. The worker prunes once per group (cached in ``cache/`` so a restart
does not redo it), measures each cell of the group and sends one record per cell back over a pipe; only the parent
appends to the store. So:

* a crash, an out-of-memory kill or a hang (``[run] timeout_s`` per cell, and for a group's pruning) ends the cell
  that was running: it gets a failed record with the reason and the worker's last output, and a new worker goes on
  with the rest;
* a kill -9 of the parent kills its worker too (PR_SET_PDEATHSIG) and loses at most the record being written, which
  the next ``--resume`` repairs (a torn last line) and measures again — no finished cell is lost or duplicated.

Run folder: ``records.jsonl`` (the store), ``suite.toml`` (the suite as run), ``run.json`` (run id, suite, start,
environment), ``cache/`` (the trained dense and the pruned models), ``logs/`` (workers' stderr).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import inspect
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybench.results import SCHEMA_VERSION, Store, clean_json, repair
from pybench.suite import Cell, Suite, SuiteError, expand, filter_cells

__all__ = ["run", "run_cells", "plan_run", "failed_record", "RunSummary", "RunPlan", "default_out", "latest_run"]

_PROTO = "PYBENCH-MSG "


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def default_out(suite: Suite, root: str | os.PathLike = "results") -> Path:
    """``results/<suite>/<run-id>/`` (run id: UTC start time)."""
    return Path(root) / suite.name / _run_id()


def latest_run(suite: Suite, root: str | os.PathLike = "results") -> Path | None:
    """The newest run folder of ``suite`` under ``root``, or None."""
    base = Path(root) / suite.name
    runs = sorted(p for p in base.glob("*") if (p / "run.json").is_file()) if base.is_dir() else []
    return runs[-1] if runs else None


# ----------------------------------------------------------------------------------------------------------------
# parent side
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """What a run would do: the selected cells, those already finished in ``out`` and those still to run."""

    cells: list[Cell]
    done: dict[str, dict[str, Any]]
    todo: list[Cell]

    @property
    def groups(self) -> int:
        return len({c.group_id for c in self.todo})

    def table(self) -> str:
        from tabulate import tabulate

        rows = [[c.cell_id, c.model, c.criterion, c.schedule, c.level, c.batch_size, c.dtype, c.device, c.seed,
                 self.done[c.cell_id]["status"] if c.cell_id in self.done else "todo"] for c in self.cells]
        return tabulate(rows, headers=["cell_id", "model", "criterion", "schedule", "level", "batch", "dtype",
                                       "device", "seed", "state"], tablefmt="github")


@dataclass
class RunSummary:
    folder: Path
    selected: int
    skipped: int
    ok: int = 0
    failed: int = 0
    wall_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def plan_run(suite: Suite, out: str | os.PathLike | None = None, filters: list[str] | None = None,
             retry_failed: bool = False, shard: str | None = None) -> RunPlan:
    """Expand and filter ``suite``; with ``out``, mark the cells its store already holds."""
    from pybench.shard import select

    cells = select(filter_cells(expand(suite), filters), shard)  # shard i/n of the selected cells
    done: dict[str, dict[str, Any]] = {}
    if out is not None and (Path(out) / "records.jsonl").exists():
        done = Store(out).finished(include_failed=not retry_failed)
    ids = {c.cell_id for c in cells}
    done = {k: v for k, v in done.items() if k in ids}
    return RunPlan(cells, done, [c for c in cells if c.cell_id not in done])


def _check_devices(cells: Iterable[Cell]) -> None:
    import torch

    for dev in sorted({c.device for c in cells}):
        if dev.startswith("cuda"):
            idx = int(dev.split(":")[1]) if ":" in dev else 0
            if not torch.cuda.is_available() or idx >= torch.cuda.device_count():
                raise SuiteError(f"device {dev!r} is in the suite but no such CUDA GPU is visible here; run it on a "
                                 "GPU machine or select other cells with --filter device=cpu")
        elif dev == "mps" and not torch.backends.mps.is_available():
            raise SuiteError("device 'mps' is in the suite but not available here; use --filter device=cpu")


def _check_fine_tune(cells: Iterable[Cell]) -> None:
    """NCCL fine-tuning needs a CUDA GPU per process here; refused before anything runs."""
    import torch

    for c in cells:
        ft = c.config.get("fine_tune") or {}
        procs, backend = _ft_procs(c.config)
        if procs < 2 or backend != "nccl" or not ft.get("epochs"):
            continue
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < procs:
            raise SuiteError(f"[run] fine_tune_backend = 'nccl' with fine_tune_processes = {procs} needs {procs} "
                             f"CUDA GPUs, {have} visible here; use fine_tune_backend = 'gloo' (CPU processes) or "
                             f"fewer processes")


def _chunks(todo: list[Cell], isolation: str) -> list[list[Cell]]:
    out: list[list[Cell]] = []
    for c in todo:
        if isolation == "cell" or not out:
            out.append([c])
            continue
        prev = out[-1][-1]
        same = prev.group_id == c.group_id if isolation == "group" else (prev.model, prev.seed) == (c.model, c.seed)
        if same:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def failed_record(cell: Cell, run_id: str, error: str, env: dict[str, Any], started: str | None = None) -> dict:
    """The record of a cell that did not produce one itself (its worker crashed, hung or could not prepare it)."""
    return {"schema": SCHEMA_VERSION, "cell_id": cell.cell_id, "group_id": cell.group_id, "run_id": run_id,
            "status": "failed", "error": error, "config": cell.config, "achieved": {}, "metrics": {},
            "details": {}, "environment": env, "started": started or _now(), "finished": _now(), "duration_s": None}


def _set_pdeathsig() -> None:  # runs in the child before exec: die with the parent (Linux)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(path: Path, n: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


class _Worker:
    """One worker subprocess fed a chunk of cells; yields its messages with a timeout."""

    def __init__(self, folder: Path, cells: list[Cell], log: Path) -> None:
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(log, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "pybench.runner", "--worker", str(folder)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._logf, env=env,
                                     preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
        job = {"cells": [{"cell_id": c.cell_id, "group_id": c.group_id, "config": c.config} for c in cells]}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job).encode())
        self.proc.stdin.close()
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(_PROTO):
                with contextlib.suppress(ValueError):
                    self.q.put(json.loads(line[len(_PROTO):]))
        self.q.put(None)

    def get(self, timeout: float) -> dict[str, Any] | None:
        return self.q.get(timeout=timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        self._logf.close()

    def close(self) -> None:
        self.proc.wait()
        self._logf.close()

    def exit_reason(self) -> str:
        rc = self.proc.wait()
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            why = f"killed by {name}" + (" (the kernel's out-of-memory killer?)" if -rc == signal.SIGKILL else "")
        else:
            why = f"exited with code {rc}"
        return why


def run(suite: Suite, out: str | os.PathLike | None = None, *, resume: bool = False, filters: list[str] | None = None,
        retry_failed: bool = False, progress: bool = True, results_root: str | os.PathLike = "results",
        log: Callable[[str], None] | None = None, executor: Any = None, shard: str | None = None) -> RunSummary:
    """Run ``suite``'s cells (those matching ``filters``) into the run folder ``out``.

    Args:
        suite: from :func:`pybench.suite.load`.
        out: the run folder; default ``results/<suite>/<run-id>/`` (with ``resume``: the newest run of the suite).
        resume: continue the run in ``out``: cells with a record are skipped (failed ones too, unless
            ``retry_failed``). Without ``resume`` an ``out`` that already holds records is refused.
        filters: ``KEY=PATTERN[,PATTERN]`` expressions (see :func:`pybench.suite.parse_filter`).
        progress: a tqdm bar with ETA on stderr.

    Returns:
        RunSummary; ``exit_code`` is 1 when some cell failed.
    """
    say = log or _stderr
    t0 = time.perf_counter()
    if out is None:
        if resume:
            found = latest_run(suite, results_root)
            if found is None:
                raise SuiteError(f"--resume: no earlier run of suite {suite.name!r} under {results_root}/; "
                                 "give the run folder with --out")
            out = found
        else:
            out = default_out(suite, results_root)
    folder = Path(out)
    store = Store(folder)
    if store.path.exists() and not resume:
        raise SuiteError(f"--out {folder} already holds a run; add --resume to continue it, or give a new --out")
    if resume and not folder.exists():
        raise SuiteError(f"--resume: {folder} does not exist; start the run without --resume")
    folder.mkdir(parents=True, exist_ok=True)
    removed = repair(store.path)
    if removed:
        say(f"pybench: repaired {store.path}: removed a torn last record ({removed} bytes) left by a killed run")

    from pybench import measure

    env = measure.environment().to_dict()
    meta = folder / "run.json"
    if not meta.exists():
        (folder / "suite.toml").write_text(suite.text)
        _atomic_write(meta, json.dumps({"run_id": folder.name, "suite": suite.name, "suite_path": suite.path,
                                        "started": _now(), "environment": env, "shard": shard}, indent=2).encode())
    run_id = json.loads(meta.read_text()).get("run_id", folder.name)

    rp = plan_run(suite, folder, filters, retry_failed, shard)
    if executor is None or executor.name == "local":  # a Ray cluster's GPUs are checked by the executor
        _check_devices(rp.todo)
        _check_fine_tune(rp.todo)
    summary = RunSummary(folder=folder, selected=len(rp.cells), skipped=len(rp.done))
    say(f"pybench: suite {suite.name!r}: {len(rp.cells)} cells selected, {len(rp.done)} already done, "
        f"{len(rp.todo)} to run in {rp.groups} prune groups -> {folder}")
    from tqdm import tqdm

    bar = tqdm(total=len(rp.todo), desc=suite.name, unit="cell", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)

    def emit(rec: dict[str, Any]) -> None:  # only this process appends to the store
        store.append(rec)
        _count(rec, summary, bar)

    timeout_s, prepare_timeout_s = float(suite.run["timeout_s"]), float(suite.run["prepare_timeout_s"])
    try:
        if executor is None:
            run_cells(folder, rp.todo, run_id, env, timeout_s=timeout_s, prepare_timeout_s=prepare_timeout_s,
                      emit=emit, say=say, isolation=suite.run["isolation"],
                      on_start=lambda c: bar.set_postfix_str(c.label(), refresh=True))
        else:
            executor.execute(folder, rp.todo, run_id=run_id, env=env, timeout_s=timeout_s,
                             prepare_timeout_s=prepare_timeout_s, isolation=suite.run["isolation"], emit=emit,
                             say=say)
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - t0
    say(f"pybench: {summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped in {summary.wall_s:.1f} s; "
        f"records in {store.path}")
    return summary


def run_cells(folder: str | os.PathLike, cells: Sequence[Cell], run_id: str, env: dict[str, Any], *,
              timeout_s: float, prepare_timeout_s: float | None = None, emit: Callable[[dict[str, Any]], None],
              say: Callable[[str], None] = _stderr, isolation: str = "group", tag: str = "",
              on_start: Callable[[Cell], None] | None = None) -> None:
    """Run ``cells`` on this machine, each chunk in a fresh worker subprocess; ``emit(record)`` once per cell.

    The one loop behind :func:`run`, :class:`pybench.executors.LocalExecutor` and each Ray task: cells are cut in
    chunks per ``isolation`` ("cell", "group" or "model": which cells share a worker process) and a crash, an
    out-of-memory kill or a timeout ends only the cell that was running (it gets a failed record with the reason);
    a new worker goes on with the rest.

    Args:
        folder: the run folder (its ``cache/`` holds trained and pruned models, ``logs/`` the workers' stderr).
        cells: the cells to run, in order (a group's cells next to each other).
        run_id: written into every record.
        env: the environment for records of cells that never reached a worker.
        timeout_s: per measured cell.
        prepare_timeout_s: per group's preparation (training, pruning, fine-tuning) and the worker's start;
            default ``timeout_s``.
        emit: receives each record (ok or failed), in this process, as it arrives.
        say: progress messages.
        tag: prefix of the workers' log file names (executors keep theirs apart).
        on_start: called with each cell as its measurement starts (the runner's progress bar).
    """
    timeouts = (float(timeout_s), float(prepare_timeout_s if prepare_timeout_s is not None else timeout_s))
    for n, chunk in enumerate(_chunks(list(cells), isolation)):
        _run_chunk(Path(folder), chunk, run_id, env, timeouts, emit, f"{tag}{n}", on_start)


def _run_chunk(folder: Path, chunk: list[Cell], run_id: str, env: dict[str, Any], timeouts: tuple[float, float],
               emit: Callable[[dict[str, Any]], None], name: str,
               on_start: Callable[[Cell], None] | None) -> None:
    """Run ``chunk`` in workers until every cell has a record. ``timeouts``: (per cell measured, per group prepared:
    training, pruning, fine-tuning — and the worker's start). ``name`` names the workers' log files."""
    remaining = {c.cell_id: c for c in chunk}
    attempt = 0
    while remaining:
        attempt += 1
        log = folder / "logs" / f"worker-{os.getpid()}-{name}-{attempt}.log"
        w = _Worker(folder, list(remaining.values()), log)
        current: str | None = None
        group: str | None = None
        started: str | None = None
        error: str | None = None
        while True:
            limit = timeouts[0] if current else timeouts[1]
            try:
                msg = w.get(limit)
            except queue.Empty:
                w.kill()
                what = ("measuring this cell", "timeout_s") if current else \
                    ("preparing (training / pruning) this cell's group", "prepare_timeout_s")
                error = f"timeout: {what[0]} took longer than {what[1]}={limit:g} s; the worker was killed"
                break
            if msg is None:
                reason = w.exit_reason()
                w.close()
                if remaining:
                    error = f"worker {reason} while {'measuring' if current else 'preparing'}; last output: " \
                            f"{_tail(log)[-800:]}"
                break
            kind = msg.get("type")
            if kind == "group":
                group, current = msg["group_id"], None
            elif kind == "start":
                current, started = msg["cell_id"], msg.get("time")
                if on_start is not None and current in remaining:
                    on_start(remaining[current])
            elif kind == "record":
                current = None
                rec = msg["record"]
                rec["run_id"] = run_id
                if rec["cell_id"] in remaining:
                    remaining.pop(rec["cell_id"])
                    emit(rec)
        if error is None:
            continue
        if current is not None and current in remaining:
            victims = [remaining[current]]
        else:  # died before a cell started: the group's preparation is what fails, for all its cells
            gid = group or next(iter(remaining.values())).group_id
            victims = [c for c in remaining.values() if c.group_id == gid]
        for c in victims:
            remaining.pop(c.cell_id)
            emit(failed_record(c, run_id, error, env, started))


def _count(rec: dict[str, Any], summary: RunSummary, bar: Any) -> None:
    if rec["status"] == "ok":
        summary.ok += 1
    else:
        summary.failed += 1
        summary.failures.append((rec["cell_id"], rec.get("error") or ""))
        label = Cell(rec["cell_id"], rec["group_id"], rec["config"]).label()
        msg = (rec.get("error") or "").strip().splitlines()
        bar.write(f"FAILED {label}: {msg[-1] if msg else ''}", file=sys.stderr)
    bar.update(1)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------------------------------------------
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
        path = self.cache / f"dense-{cfg['model']}-{key}.pt"
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
                             **p["criterion_options"])
    else:
        out = _schedule(dense, x, cfg, data, loaders, kw)
    return out[0] if isinstance(out, tuple) else out


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
                             "criterion_kw": cfg["prune"]["criterion_options"] or None, **kw}
    if "ratio" in params:
        extra["ratio"] = cfg["level"]
    elif "macs_target" in params:
        extra["macs_target"] = 1 - cfg["level"]
    extra.update(cfg["prune"]["schedule_options"])
    return fn(dense, x, **{k: v for k, v in extra.items() if k in params})


def _pruned(ctx: _Context, cfg: dict[str, Any], group_id: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model to measure, dense model, achieved figures) of a group; pruned + fine-tuned models are cached."""
    import torch

    from pybench import measure, train

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
            with contextlib.suppress(Exception):  # an unreadable cache is rebuilt
                model = torch.load(path, map_location="cpu", weights_only=False)
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
            with contextlib.suppress(Exception):  # a model that does not pickle is simply not cached
                _atomic_write(path, _state_bytes(model))
                _atomic_write(made, json.dumps(how).encode())
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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: python -m pybench.runner --worker RUN_FOLDER  (internal; use `pybench run SUITE`)", file=sys.stderr)
    sys.exit(2)
