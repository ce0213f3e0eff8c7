"""The worker process: ``python -m pybench.bench.worker RUN_FOLDER`` reads a job of cells from stdin, prepares each
prune group once (the dense model, :mod:`.dense`; the pruned one, :mod:`.pruning`), measures each cell
(:mod:`.metrics`) and sends its events and records on stdout (:mod:`.protocol`). The driver
(:mod:`pybench.bench.driver`) starts it and never imports it: they share only the protocol and the config."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pybench.bench import backends, protocol
from pybench.bench.config import Cell
from pybench.bench.dense import Context
from pybench.bench.faults import inject_fault
from pybench.bench.metrics import measure_cell, measure_speedup
from pybench.bench.pruning import pruned


def _accuracy(model: Any, ctx: Context, cell: Cell) -> dict[str, Any] | None:
    from pybench import measure

    if "accuracy" not in cell.metrics.collect:
        return None
    a = measure.accuracy(model, ctx.loaders(cell).test, device=cell.work_device,
                         max_batches=cell.metrics.accuracy_max_batches or None)
    if a.error:
        raise RuntimeError(a.error)
    return a.to_dict()


def _speedup(dense: Any, model: Any, cell: Cell, prepared: Any = None) -> tuple[dict, dict]:
    """The paired speedup, or null with the reason: the cell's own latency is measured either way."""
    try:
        return measure_speedup(dense, model, cell, prepared)
    except Exception as e:
        return {"speedup": None}, {"speedup_error": f"paired timing against the dense model failed: {_error(e)}"}


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"


def _conditions(cell: Cell) -> None:
    """The worker's threads and CPUs for everything it runs (training, evaluation, measurement), from [metrics]
    threads / cpu_affinity: set before the environment is captured, so records say what the worker ran with."""
    import torch

    from pybench import measure

    met = cell.metrics
    if met.threads:
        torch.set_num_threads(met.threads)
    if met.cpu_affinity:  # for the worker's life: nothing to restore
        measure.pin_cpus(met.cpu_affinity, "[metrics] cpu_affinity")


def run_job(folder: str | os.PathLike, cells: list[Cell], send: Any) -> None:
    """Prepare and measure ``cells`` (a group's cells next to each other), sending each event to ``send``."""
    from pybench import measure

    try:
        if cells:
            _conditions(cells[0])
    except Exception as e:
        env = measure.environment().to_dict()
        for c in cells:
            send({"type": "record", "record": protocol.failed_record(c, "", str(e), env)})
        return
    env = measure.environment().to_dict()
    ctx = Context(Path(folder))
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group_id, []).append(c)
    for gid, group in groups.items():
        send({"type": "group", "group_id": gid})
        try:
            model, dense, achieved = pruned(ctx, group[0])
            acc = _accuracy(model, ctx, group[0])
        except Exception as e:
            err = f"preparing the group failed: {_error(e)}"
            for c in group:
                send({"type": "record", "record": protocol.failed_record(c, "", err, env)})
            continue
        for c in group:
            started = protocol.now()
            send({"type": "start", "cell_id": c.cell_id, "time": started})
            t0 = time.perf_counter()
            status, error, metrics, details = "ok", None, {}, {"accuracy": acc} if acc else {}
            try:
                inject_fault(c.cell_id)
                prepared = None if c.backend == "eager" else backends.Prepared(backends.create(c.backend), c.dtype)
                metrics, more = measure_cell(model, c, acc, prepared)
                details.update(more)
                if c.prune is not None and "latency" in c.metrics.collect:
                    paired, more = _speedup(dense, model, c, prepared)
                    metrics.update(paired)
                    details.update(more)
            except Exception as e:
                status, error = "failed", _error(e)
            send({"type": "record", "record": protocol.record(
                c, status=status, error=error, env=env, started=started, achieved=achieved, metrics=metrics,
                details=details, duration_s=time.perf_counter() - t0)})


def main(folder: str) -> int:
    """Read a job from stdin, send messages on the original stdout; everything else printed goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(msg: dict[str, Any]) -> None:
        out.write(protocol.encode_message(msg))
        out.flush()

    run_job(folder, protocol.decode_job(sys.stdin.read()), send)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(f"usage: python -m {protocol.WORKER_MODULE} RUN_FOLDER  (internal; use `pybench run SUITE`)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
