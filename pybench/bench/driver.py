"""Runs a suite's cells, each group in a worker subprocess, into a run folder; resumable after any kill.

The parent process never touches a model: it expands the suite, skips cells the store already holds, and hands
chunks of cells (one prune group by default; ``[run] isolation`` = "cell" | "group" | "model") to a fresh
``python -m pybench.bench.worker`` process (:mod:`pybench.bench.worker`; the two share only :mod:`.protocol` and
:mod:`.config`). The worker prunes once per group (cached in ``cache/`` so a restart does not redo it), measures
each cell of the group and sends one record per cell back over a pipe; only the parent appends to the store. So:

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
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybench.bench import protocol
from pybench.bench.config import Cell, Suite
from pybench.bench.protocol import atomic_write, failed_record, now
from pybench.bench.results import Store, repair
from pybench.bench.suite import SuiteError, expand, filter_cells

__all__ = ["run", "run_cells", "plan_run", "failed_record", "RunSummary", "RunPlan", "default_out", "latest_run"]


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
    from pybench.bench.shard import select

    cells = select(filter_cells(expand(suite), filters), shard)  # shard i/n of the selected cells
    done: dict[str, dict[str, Any]] = {}
    if out is not None and (Path(out) / "records.jsonl").exists():
        done = Store(out).finished(include_failed=not retry_failed)
    ids = {c.cell_id for c in cells}
    done = {k: v for k, v in done.items() if k in ids}
    return RunPlan(cells, done, [c for c in cells if c.cell_id not in done])


def _check_devices(cells: Iterable[Cell]) -> None:
    """Every device the cells run on -- measured on, or trained / fine-tuned on per [train] / [fine_tune] device
    -- is visible here; refused before anything runs."""
    import torch

    cells = list(cells)
    used = {(c.device, "device") for c in cells}
    for c in cells:
        for table, t in (("train", c.train), ("fine_tune", c.fine_tune)):
            if t is not None and t.device:
                used.add((t.device, f"[{table}] device"))
    for dev, what in sorted(used):
        if what != "device" and dev == "cpu":
            continue
        fix = "--filter device=cpu" if what == "device" else f"{what} = \"cpu\" (or leave it out)"
        if dev.startswith("cuda"):
            idx = int(dev.split(":")[1]) if ":" in dev else 0
            if not torch.cuda.is_available() or idx >= torch.cuda.device_count():
                raise SuiteError(f"{what} {dev!r} is in the suite but no such CUDA GPU is visible here; run it on a "
                                 f"GPU machine or {'select other cells with ' if what == 'device' else 'set '}{fix}")
        elif dev == "mps" and not torch.backends.mps.is_available():
            raise SuiteError(f"{what} 'mps' is in the suite but not available here; use {fix}")


def _check_fine_tune(cells: Iterable[Cell]) -> None:
    """NCCL fine-tuning needs a CUDA GPU per process here; refused before anything runs."""
    import torch

    for c in cells:
        procs = c.fine_tune_processes
        if procs < 2 or c.fine_tune_backend != "nccl" or not (c.fine_tune and c.fine_tune.epochs):
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
        self.proc = subprocess.Popen([sys.executable, "-m", protocol.WORKER_MODULE, str(folder)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._logf, env=env,
                                     preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode_job(cells))
        self.proc.stdin.close()
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            msg = protocol.decode_message(raw.decode(errors="replace"))
            if msg is not None:
                self.q.put(msg)
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
        suite: from :func:`pybench.bench.suite.load`.
        out: the run folder; default ``results/<suite>/<run-id>/`` (with ``resume``: the newest run of the suite).
        resume: continue the run in ``out``: cells with a record are skipped (failed ones too, unless
            ``retry_failed``). Without ``resume`` an ``out`` that already holds records is refused.
        filters: ``KEY=PATTERN[,PATTERN]`` expressions (see :func:`pybench.bench.suite.parse_filter`).
        progress: a tqdm bar with ETA on stderr.

    Returns:
        RunSummary; ``exit_code`` is 1 when some cell failed.
    """
    say = log or _stderr
    t0 = time.perf_counter()
    if out is None and Path(results_root).exists() and not Path(results_root).is_dir():
        raise SuiteError(f"--results-root {results_root} is a file, not a folder; give the folder that holds the "
                         "suites' run folders")
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
    if folder.exists() and not folder.is_dir():
        raise SuiteError(f"--out {folder} is a file, not a folder; give a folder for the run")
    _check_same_suite(folder, suite)
    # everything that can refuse the run does so before the folder exists: a refused run leaves nothing behind
    rp = plan_run(suite, folder if folder.is_dir() else None, filters, retry_failed, shard)
    if executor is None or executor.name == "local":  # a Ray cluster's GPUs are checked by the executor
        _check_devices(rp.todo)
        _check_fine_tune(rp.todo)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SuiteError(f"--out {folder}: cannot create the run folder ({e.strerror or e})") from None
    with folder_lock(folder):
        return _run_locked(suite, folder, store, say, t0, filters, retry_failed, shard, executor, progress)


def _check_same_suite(folder: Path, suite: Suite) -> None:
    """A run folder holds one suite's cells: resuming it with another suite is refused."""
    meta = folder / "run.json"
    if not meta.is_file():
        return
    try:
        theirs = json.loads(meta.read_text()).get("suite")
    except (OSError, ValueError):
        return
    if theirs is not None and theirs != suite.name:
        raise SuiteError(f"{folder} holds a run of suite {theirs!r}, not {suite.name!r}; resume it with that suite's "
                         "file, or give this suite another --out")


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` (flock) for the run: a second run into the same folder is refused, naming the process
    that holds it. The kernel drops the lock when its process dies, however it dies."""
    import fcntl

    try:
        f = open(folder / ".lock", "a+")  # noqa: SIM115 (held for the whole run)
    except OSError as e:
        raise SuiteError(f"--out {folder}: cannot write in the run folder ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise SuiteError(f"run folder {folder} is in use by {holder}; wait for that run to end, or give another "
                             "--out") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} (pybench run, started {now()})\n")
        f.flush()
        yield
    finally:
        f.close()


def _run_locked(suite: Suite, folder: Path, store: Store, say: Callable[[str], None], t0: float,
                filters: list[str] | None, retry_failed: bool, shard: str | None, executor: Any,
                progress: bool) -> RunSummary:
    removed = repair(store.path)
    if removed:
        say(f"pybench: repaired {store.path}: removed a torn last record ({removed} bytes) left by a killed run")

    from pybench import measure

    env = measure.environment().to_dict()
    meta = folder / "run.json"
    if not meta.exists():
        (folder / "suite.toml").write_text(suite.text)
        atomic_write(meta, json.dumps({"run_id": folder.name, "suite": suite.name, "suite_path": suite.path,
                                        "started": now(), "environment": env, "shard": shard}, indent=2).encode())
    run_id = json.loads(meta.read_text()).get("run_id", folder.name)

    rp = plan_run(suite, folder, filters, retry_failed, shard)  # again: the repaired store says what is done
    summary = RunSummary(folder=folder, selected=len(rp.cells), skipped=len(rp.done))
    say(f"pybench: suite {suite.name!r}: {len(rp.cells)} cells selected, {len(rp.done)} already done, "
        f"{len(rp.todo)} to run in {rp.groups} prune groups -> {folder}")
    from tqdm import tqdm

    bar = tqdm(total=len(rp.todo), desc=suite.name, unit="cell", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)

    def emit(rec: dict[str, Any]) -> None:  # only this process appends to the store
        store.append(rec)
        _count(rec, summary, bar)

    timeout_s, prepare_timeout_s = float(suite.run.timeout_s), float(suite.run.prepare_timeout_s)
    previous = _raise_on_sigterm()
    try:
        if executor is None:
            run_cells(folder, rp.todo, run_id, env, timeout_s=timeout_s, prepare_timeout_s=prepare_timeout_s,
                      emit=emit, say=say, isolation=suite.run.isolation,
                      on_start=lambda c: bar.set_postfix_str(c.label(), refresh=True))
        else:
            executor.execute(folder, rp.todo, run_id=run_id, env=env, timeout_s=timeout_s,
                             prepare_timeout_s=prepare_timeout_s, isolation=suite.run.isolation, emit=emit,
                             say=say)
    except (KeyboardInterrupt, Terminated) as e:
        code, why = (143, "SIGTERM") if isinstance(e, Terminated) else (130, "Ctrl-C")
        again = ["pybench", "run", suite.path, "--out", str(folder), "--resume",
                 *(a for f in filters or () for a in ("--filter", f)), *(("--shard", shard) if shard else ())]
        raise RunInterrupted(f"stopped by {why}: {summary.ok + summary.failed} of {len(rp.todo)} cell(s) finished "
                             f"this time, {len(rp.done) + summary.ok + summary.failed} of {len(rp.cells)} in all, "
                             f"kept in {store.path}; the workers were stopped. Resume with: {shlex.join(again)}",
                             code) from None
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    summary.wall_s = time.perf_counter() - t0
    say(f"pybench: {summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped in {summary.wall_s:.1f} s; "
        f"records in {store.path}")
    return summary


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread, as Ctrl-C raises KeyboardInterrupt)."""


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C (``exit_code`` 130) or SIGTERM (143); every cell finished before is in the store."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _raise_on_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the handler to restore (None: not the
    main thread, nothing changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def run_cells(folder: str | os.PathLike, cells: Sequence[Cell], run_id: str, env: dict[str, Any], *,
              timeout_s: float, prepare_timeout_s: float | None = None, emit: Callable[[dict[str, Any]], None],
              say: Callable[[str], None] = _stderr, isolation: str = "group", tag: str = "",
              on_start: Callable[[Cell], None] | None = None) -> None:
    """Run ``cells`` on this machine, each chunk in a fresh worker subprocess; ``emit(record)`` once per cell.

    The one loop behind :func:`run`, :class:`pybench.bench.executors.LocalExecutor` and each Ray task: cells are cut in
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
        try:
            error, current, group, started = _drive(w, remaining, timeouts, run_id, emit, on_start, log)
        except BaseException:  # Ctrl-C, SIGTERM: the worker goes too, and what it had not reported is not written
            w.kill()
            raise
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


def _drive(w: _Worker, remaining: dict[str, Cell], timeouts: tuple[float, float], run_id: str,
           emit: Callable[[dict[str, Any]], None], on_start: Callable[[Cell], None] | None,
           log: Path) -> tuple[str | None, str | None, str | None, str | None]:
    """Read worker ``w`` until it ends or times out, emitting its records; (error, current cell, group, its start)."""
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
    return error, current, group, started


def _count(rec: dict[str, Any], summary: RunSummary, bar: Any) -> None:
    if rec["status"] == "ok":
        summary.ok += 1
    else:
        summary.failed += 1
        summary.failures.append((rec["cell_id"], rec.get("error") or ""))
        label = Cell.from_config(rec["cell_id"], rec["group_id"], rec["config"]).label()
        msg = (rec.get("error") or "").strip().splitlines()
        bar.write(f"FAILED {label}: {msg[-1] if msg else ''}", file=sys.stderr)
    bar.update(1)

