"""Where a run's cells execute: here (:class:`LocalExecutor`) or as Ray tasks on a cluster (:class:`RayExecutor`).

An executor takes the cells still to run and calls ``emit(record)`` in the driver process once per cell, as the
records arrive; the runner's ``emit`` appends to the run folder's store and counts. So the store, ``--resume``,
``report``, ``compare`` and ``check`` do not know which executor ran a cell.

    from pybench.bench.executors import RayExecutor
    ex = RayExecutor(address="head-node:6379")          # or None: a local Ray instance on this machine
    ex.execute(folder, cells, run_id=..., env=..., timeout_s=900, isolation="group", emit=store_and_count)

Both run cells through :func:`pybench.bench.driver.run_cells`, the runner's own loop. :class:`LocalExecutor` is that
loop here (chunks of cells in fresh worker subprocesses, one after the other). :class:`RayExecutor` makes each cell
one Ray task: ``num_gpus=1`` for a ``cuda`` cell (Ray picks the GPU and sets ``CUDA_VISIBLE_DEVICES``, so
``cuda:N`` in a suite means "one GPU" there), ``num_cpus=cpus_per_cell`` otherwise. Inside the task the cell runs
exactly as locally — ``run_cells`` in a worker subprocess with the runner's timeout and crash handling — so a cell
that crashes or hangs gets a failed record as it would here. If the Ray worker itself dies (killed, its node lost),
Ray runs the task again once (``max_retries=1``); a second loss is recorded as a failed cell, and only that cell
is lost. Each record carries the environment of the machine that measured it.

The first cell of each prune group runs before the group's other cells, so they find its pruned model in the run
folder's ``cache/`` instead of pruning again, when the Ray workers see the run folder (one machine, or a shared
file system); a worker that does not see it works in a temporary folder of its own.

CPU latency of cells that share a machine disturb each other: for latency on CPU give ``cpus_per_cell`` the cores
of a node (one cell per node at a time; Ray also sets ``OMP_NUM_THREADS`` to it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pybench._registry import Registry
from pybench.bench.config import Cell
from pybench.bench.driver import run_cells
from pybench.bench.protocol import failed_record

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "get_executor", "EXECUTORS"]

EXECUTORS: Registry = Registry("executor")  # name -> factory(address, **options) -> Executor
Emit = Callable[[dict[str, Any]], None]
Say = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Executor:
    """Runs cells and emits their records in the driver process. Subclasses implement :meth:`execute`."""

    name = "executor"

    def execute(self, folder: str | os.PathLike, cells: Sequence[Cell], *, run_id: str, env: dict[str, Any],
                timeout_s: float, isolation: str = "group", emit: Emit, say: Say = _stderr,
                prepare_timeout_s: float | None = None) -> None:
        """Run ``cells`` for the run folder ``folder``; call ``emit(record)`` once per cell (ok or failed).

        Args:
            folder: the run folder (its ``cache/`` and ``logs/`` are used where the workers can see it).
            cells: the cells to run (already filtered, sharded and minus those finished).
            run_id: written into every record.
            env: the driver's environment (``measure.environment().to_dict()``), for records of cells that never
                reached a worker.
            timeout_s: per measured cell, as ``[run] timeout_s``.
            isolation: "cell" | "group" | "model": how many cells share one worker process (local only).
            emit: receives each record in the driver, as it arrives.
            say: progress and warnings.
            prepare_timeout_s: per group's training / pruning / fine-tuning, as ``[run] prepare_timeout_s``
                (default: ``timeout_s``).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (a Ray instance it started)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalExecutor(Executor):
    """The cells on this machine, one chunk after the other, each chunk in a fresh worker subprocess."""

    name = "local"

    def execute(self, folder: str | os.PathLike, cells: Sequence[Cell], *, run_id: str, env: dict[str, Any],
                timeout_s: float, isolation: str = "group", emit: Emit, say: Say = _stderr,
                prepare_timeout_s: float | None = None) -> None:
        run_cells(folder, cells, run_id, env, timeout_s=timeout_s, prepare_timeout_s=prepare_timeout_s, emit=emit,
                  say=say, isolation=isolation)


# ----------------------------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------------------------
_FAULT_ENV = "PYBENCH_RAY_FAULT"


def _task_fault(folder: Path, cell_id: str) -> None:
    """Test hook: PYBENCH_RAY_FAULT="die:ID" kills the Ray worker running cell ID (a prefix) on every attempt,
    "die_once:ID" on the first attempt only — how the tests prove that a dead worker loses only its cell."""
    for part in filter(None, os.environ.get(_FAULT_ENV, "").split(";")):
        kind, _, prefix = part.partition(":")
        if not prefix or not cell_id.startswith(prefix):
            continue
        marker = folder / f".ray-fault-{cell_id}"
        if kind == "die" or (kind == "die_once" and not marker.exists()):
            marker.touch()
            os._exit(1)


def _task_folder(folder: str, run_id: str) -> Path:
    """The run folder when this node sees it (same machine, shared file system), else a private temporary one."""
    p = Path(folder)
    if (p / "run.json").is_file() and os.access(p, os.W_OK):
        return p
    own = Path(tempfile.gettempdir()) / "pybench-ray" / f"{p.name}-{run_id}"
    own.mkdir(parents=True, exist_ok=True)
    return own


def ray_task(folder: str, cell: dict[str, Any], run_id: str, env: dict[str, Any], timeout_s: float,
             prepare_timeout_s: float | None = None) -> list[dict]:
    """Body of one Ray task: run one cell (a dict of cell_id, group_id, config) in a worker subprocess here and
    return its record(s). ``cuda:N`` becomes the GPU Ray assigned (``cuda``) for the run; the record keeps the
    cell's own configuration."""
    where = _task_folder(folder, run_id)
    _task_fault(where, cell["cell_id"])
    config = dict(cell["config"])
    device = str(config.get("device", "cpu"))
    if device.startswith("cuda"):
        config["device"] = "cuda"  # Ray's CUDA_VISIBLE_DEVICES leaves this task one GPU: index 0
    records: list[dict[str, Any]] = []
    c = Cell.from_config(cell["cell_id"], cell["group_id"], config)
    run_cells(where, [c], run_id, env, timeout_s=timeout_s, prepare_timeout_s=prepare_timeout_s, emit=records.append,
              say=lambda _: None, isolation="cell", tag=f"ray-{os.getpid()}-")
    for rec in records:
        rec["config"] = cell["config"]
        rec.setdefault("details", {})["executor"] = {"name": "ray", "node": socket.gethostname(),
                                                     "pid": os.getpid(), "folder": str(where)}
    return records


def _check_address(address: str, timeout: float) -> None:
    """Fail fast, with a clear message, when nothing listens at a Ray address (ray.init can wait for minutes)."""
    if address in ("auto", "local"):
        return
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected HOST:PORT of a Ray head node (e.g. 10.0.0.5:6379, "
                         "ray://10.0.0.5:10001 for Ray Client, or 'auto'), or leave it out for a local Ray instance")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"--address {address!r}: no Ray cluster answers at {host}:{port} ({e}). Start one "
                              f"with `ray start --head --port={port}` on the head node, check the address and the "
                              "firewall, or leave --address out to run on a local Ray instance") from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray executor needs Ray: pip install 'ray[default]' (or pip install "
                          "'pybench[distributed]'); or run with the local executor") from None
    return ray


class RayExecutor(Executor):
    """Each cell one Ray task, on the cluster at ``address`` or on a local Ray instance started here.

    Args:
        address: a Ray head (``HOST:PORT``, ``ray://HOST:10001``, ``"auto"``); None starts a local instance.
        cpus_per_cell: ``num_cpus`` of a CPU cell's task (give a node's cores for undisturbed CPU latency).
        cpus_per_gpu_cell: ``num_cpus`` of a GPU cell's task (which also takes ``num_gpus=1``).
        max_retries: how often Ray reruns a task whose worker died (1: retried once, then recorded as failed).
        num_cpus, num_gpus: resources of a local instance (None: Ray's default, all of this machine).
        runtime_env: Ray runtime environment for the tasks (e.g. ``{"env_vars": {...}}`` or a ``working_dir`` when
            pybench is not installed on the nodes).
        connect_timeout_s: how long to wait for the head node's port before giving up.
        group_first: run each prune group's first cell before its other cells (they reuse its cached model).
        init_kwargs: more ``ray.init`` arguments.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, cpus_per_cell: float = 1, cpus_per_gpu_cell: float = 1,
                 max_retries: int = 1, num_cpus: int | None = None, num_gpus: int | None = None,
                 runtime_env: dict[str, Any] | None = None, connect_timeout_s: float = 5.0, group_first: bool = True,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        if cpus_per_cell <= 0 or cpus_per_gpu_cell < 0:
            raise ValueError(f"RayExecutor: cpus_per_cell must be > 0 and cpus_per_gpu_cell >= 0, got "
                             f"{cpus_per_cell}, {cpus_per_gpu_cell}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"RayExecutor: max_retries must be an integer >= 0, got {max_retries!r}")
        self.address = address
        self.cpus_per_cell = cpus_per_cell
        self.cpus_per_gpu_cell = cpus_per_gpu_cell
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.runtime_env = runtime_env
        self.connect_timeout_s = connect_timeout_s
        self.group_first = group_first
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False

    # -- connection ----------------------------------------------------------------------------------------------
    def connect(self) -> Any:
        """Connect to (or start) Ray; returns the ``ray`` module. Raises ConnectionError for a dead address."""
        ray = _import_ray()
        if ray.is_initialized():
            return ray
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                              **self.init_kwargs}
        if self.runtime_env is not None:
            kw["runtime_env"] = self.runtime_env
        if self.address:
            _check_address(self.address, self.connect_timeout_s)
            try:
                ray.init(address=self.address, **kw)
            except ConnectionError as e:
                raise ConnectionError(f"--address {self.address!r}: could not join the Ray cluster: {e}") from None
        else:
            kw.setdefault("object_store_memory", 256 * 2**20)  # records are small; do not reserve 30 % of RAM
            ray.init(num_cpus=self.num_cpus, num_gpus=self.num_gpus, **kw)
        self._started = True
        return ray

    def close(self) -> None:
        if self._started:
            with contextlib.suppress(Exception):
                _import_ray().shutdown()
            self._started = False

    # -- running -------------------------------------------------------------------------------------------------
    def _options(self, cell: Cell) -> dict[str, Any]:
        gpu = cell.device.startswith("cuda")
        return {"num_cpus": self.cpus_per_gpu_cell if gpu else self.cpus_per_cell, "num_gpus": 1 if gpu else 0,
                "max_retries": self.max_retries, "retry_exceptions": False, "name": f"pybench-{cell.cell_id}"}

    def execute(self, folder: str | os.PathLike, cells: Sequence[Cell], *, run_id: str, env: dict[str, Any],
                timeout_s: float, isolation: str = "group", emit: Emit, say: Say = _stderr,
                prepare_timeout_s: float | None = None) -> None:
        cells = list(cells)
        if not cells:
            return
        ray = self.connect()
        try:
            res = ray.cluster_resources()
            needs_gpu = [c for c in cells if self._options(c)["num_gpus"]]
            if needs_gpu and res.get("GPU", 0) < 1:
                raise RuntimeError(f"{len(needs_gpu)} cell(s) need a GPU (e.g. {needs_gpu[0].label()}) but the Ray "
                                   f"cluster has none ({res}); add GPU nodes or select --filter device=cpu")
            if any(not self._options(c)["num_gpus"] for c in cells) and res.get("CPU", 0) < self.cpus_per_cell:
                raise RuntimeError(f"cpus_per_cell={self.cpus_per_cell} but the Ray cluster has {res.get('CPU', 0)} "
                                   "CPUs; lower cpus_per_cell")
            say(f"pybench: Ray executor: {len(cells)} cell(s) as tasks on {res.get('CPU', 0):g} CPU(s), "
                f"{res.get('GPU', 0):g} GPU(s)")
            task = ray.remote(ray_task)
            pending: dict[Any, Cell] = {}
            waiting: dict[str, list[Cell]] = {}  # group id -> cells held until the group's first cell is done

            def submit(c: Cell) -> None:
                job = c.to_json()
                ref = task.options(**self._options(c)).remote(str(folder), job, run_id, env, float(timeout_s),
                                                              prepare_timeout_s)
                pending[ref] = c

            for c in cells:
                if not self.group_first or c.group_id not in waiting:
                    if self.group_first:
                        waiting[c.group_id] = []
                    submit(c)
                else:
                    waiting[c.group_id].append(c)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                cell = pending.pop(ref)
                try:
                    records = ray.get(ref)
                except ray.exceptions.RayError as e:
                    why = str(e).strip().splitlines()
                    what = "its Ray worker died" if isinstance(e, (ray.exceptions.WorkerCrashedError,
                                                                   ray.exceptions.NodeDiedError)) \
                        else "its Ray task failed"
                    tries = self.max_retries + 1
                    records = [failed_record(cell, run_id, f"{what} ({tries} attempt(s)): "
                                                     f"{type(e).__name__}: {why[0] if why else ''}", env)]
                for rec in records:
                    rec["run_id"] = run_id
                    emit(rec)
                for c in waiting.pop(cell.group_id, []):
                    submit(c)
        finally:
            self.close()


@EXECUTORS.register("local")
def _local(address: str | None = None) -> Executor:
    if address:
        raise ValueError("--address is for --executor ray; leave it out with the local executor")
    return LocalExecutor()


@EXECUTORS.register("ray")
def _ray(address: str | None = None, **kwargs: Any) -> Executor:
    return RayExecutor(address, **kwargs)


def get_executor(name: str = "local", address: str | None = None, **kwargs: Any) -> Executor:
    """An executor of :data:`EXECUTORS` by name: ``"local"`` or ``"ray"`` (with ``address``; None = a local Ray
    instance)."""
    if name not in EXECUTORS:
        raise ValueError(f"--executor {name!r}: expected one of {', '.join(sorted(EXECUTORS))}")
    return EXECUTORS[name](address, **kwargs)
