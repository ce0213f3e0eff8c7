"""The results store: one JSON record per measured cell, appended to ``records.jsonl`` in a run folder.

Writes are append-only and atomic at the line level: each record is serialised first and written with a single
``write`` on a file opened with O_APPEND, then fsync'ed, so a reader sees whole records. A process killed in the
middle of a write can leave a torn last line; readers skip it and :func:`repair` (called before every append
session) truncates it away, so the store is always readable and never holds half a record.

Record schema (``SCHEMA_VERSION``): ``schema``, ``cell_id``, ``group_id``, ``run_id``, ``status`` ("ok" or
"failed"), ``error`` (None or the message), ``config`` (the cell's full configuration), ``achieved`` (params,
MACs of the pruned and dense models and the fractions kept), ``metrics`` (flat name -> number), ``details``
(instrument outputs), ``environment`` (``pybench.measure.environment()``), ``started`` / ``finished`` (UTC) and
``duration_s``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "RECORDS", "Store", "read_records", "repair", "load", "to_parquet", "run_folders",
           "KEY_COLUMNS", "clean_json", "what"]

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"
KEY_COLUMNS = ["model", "criterion", "schedule", "level", "batch_size", "dtype", "device", "backend", "seed"]


def clean_json(obj: Any) -> Any:
    """JSON-safe: NaN / inf become None (JSON has neither), tuples lists, unknown objects their str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def repair(path: str | os.PathLike) -> int:
    """Truncate a torn last line (not valid JSON) from a records file; returns bytes removed. A complete record
    that lacks only its newline (the writer died between the two) is kept, and the newline added."""
    p = Path(path)
    if not p.exists():
        return 0
    with open(p, "rb+") as f:
        data = f.read()
        end = len(data)
        good = end
        if data and not data.endswith(b"\n"):
            start = data.rfind(b"\n") + 1
            if _is_record(data[start:]):
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
                return 0
            good = start
        else:
            # a complete-looking last line that is not JSON (torn and then followed by nothing) is cut too
            start = data.rfind(b"\n", 0, max(0, end - 1)) + 1
            last = data[start:end].strip()
            if last:
                try:
                    json.loads(last)
                except ValueError:
                    good = start
        if good < end:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        return end - good


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


class Store:
    """Append-only records of one run folder (``folder/records.jsonl``)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RECORDS

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, atomically (one write on O_APPEND, then fsync)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(clean_json(record), separators=(",", ":"), allow_nan=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:  # a regular file takes it in one write; loop only for the pathological short write
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        return list(read_records(self.path))

    def finished(self, include_failed: bool = True) -> dict[str, dict[str, Any]]:
        """{cell_id: its last record} of the cells already done (ok, and failed unless ``include_failed`` is False)."""
        last: dict[str, dict[str, Any]] = {}
        for r in self.records():
            last[r["cell_id"]] = r
        return {k: r for k, r in last.items()
                if r.get("status") == "ok" or (include_failed and r.get("status") == "failed")}


class CorruptRecordsWarning(UserWarning):
    """A records file with lines that are not records (corrupted in the middle, not a torn end)."""


def read_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of one ``records.jsonl``; a torn or invalid line (a killed writer) is skipped."""
    p = Path(path)
    if not p.exists():
        return
    bad: list[int] = []
    with open(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break  # torn last line: a killed writer's, repaired on --resume
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and "cell_id" in rec:
                yield rec
            elif raw.strip():
                bad.append(n)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        warnings.warn(CorruptRecordsWarning(f"{p}: skipped {len(bad)} unreadable line(s) (line {shown}); the "
                                            "records there are lost, the others are read"), stacklevel=2)


def run_folders(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Run folders (those holding records.jsonl) named by ``paths``: a run folder, a records file, or a folder
    searched recursively (e.g. ``results/smoke`` for all its runs)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name.endswith(".jsonl"):
            out.append(p.parent)
        elif (p / RECORDS).is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(f.parent for f in p.rglob(RECORDS))
            if not found:
                raise FileNotFoundError(f"results: no {RECORDS} under {str(p)!r}; give a run folder written by "
                                        "`pybench run`")
            out.extend(found)
        elif p.exists():
            raise FileNotFoundError(f"results: {str(p)!r} is a file, not a run folder; give a run folder written by "
                                    f"`pybench run` (or its {RECORDS})")
        else:
            raise FileNotFoundError(f"results: {str(p)!r} does not exist; give a run folder written by `pybench run`")
    return list(dict.fromkeys(out))


def what(row: Any) -> str:
    """A row's pruning in words: ``dense``, or ``l1/one_shot@0.5`` and `` round_to 8`` when it rounds."""
    if row["level"] == 0:
        return "dense"
    text = f"{row['criterion']}/{row['schedule']}@{row['level']:g}"
    rounding = row.get("round_to")
    if rounding is not None and rounding == rounding and rounding != 1:  # (NaN: a record without prune settings)
        text += f" round_to {int(rounding)}"
    return text


def _row(rec: dict[str, Any], folder: Path) -> dict[str, Any]:
    cfg = rec.get("config", {})
    env = rec.get("environment") or {}
    row: dict[str, Any] = {k: cfg.get(k) for k in KEY_COLUMNS}
    row["backend"] = cfg.get("backend") or "eager"  # records from before the backends axis ran eager
    row["round_to"] = (cfg.get("prune") or {}).get("round_to", 1) if cfg.get("prune") else None
    row.update(status=rec.get("status"), error=rec.get("error"), cell_id=rec.get("cell_id"),
               group_id=rec.get("group_id"), run_id=rec.get("run_id"), run=str(folder), suite=cfg.get("suite"),
               hostname=env.get("hostname"), cpu_model=env.get("cpu_model"),
               gpu=", ".join(g.get("name", "?") for g in env.get("gpus") or []) or None,
               torch=env.get("torch"), git_commit=env.get("git_commit"), finished=rec.get("finished"),
               duration_s=rec.get("duration_s"))
    row.update(rec.get("achieved") or {})
    row.update(rec.get("metrics") or {})
    error = (rec.get("details") or {}).get("speedup_error")
    if error:  # the speedup is null for this reason: readers must not put another ratio in its place
        row["speedup_error"] = str(error).splitlines()[0]
    return row


def load(paths: Iterable[str | os.PathLike] | str | os.PathLike, latest: bool = True) -> Any:
    """One pandas row per record of the run folders ``paths`` (see :func:`run_folders`).

    Columns: model, criterion, schedule, level (0 = dense), batch_size, dtype, device, seed, status, error, cell_id,
    group_id, run_id, run (the folder), environment summaries, the achieved figures (params, macs, ...) and one column
    per metric (latency_p50_ms, throughput, peak_memory_bytes, top1, ...). With ``latest`` only the last record of a
    cell within a run folder is kept (a failed cell retried later appears once).
    """
    import pandas as pd

    rows = []
    for folder in run_folders(paths):
        for rec in read_records(folder / RECORDS):
            rows.append(_row(rec, folder))
    df = pd.DataFrame(rows, columns=None if rows else [*KEY_COLUMNS, "status", "error", "cell_id", "run"])
    if latest and len(df):
        df = df.drop_duplicates(subset=["run", "cell_id"], keep="last").reset_index(drop=True)
    return df


def to_parquet(paths: Iterable[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write :func:`load` of ``paths`` to the Parquet file ``out`` (needs pyarrow or fastparquet)."""
    df = load(paths)
    try:
        df.to_parquet(out, index=False)
    except ImportError as e:
        raise ImportError(f"results: Parquet export needs pyarrow (pip install pyarrow): {e}") from None
    return Path(out)
