"""What the driver and its workers say to each other, and the records both sides write.

The driver starts ``python -m pybench.bench.worker RUN_FOLDER`` and writes one JSON job to its stdin: the cells of
a chunk (:meth:`pybench.bench.config.Cell.to_json`). The worker answers with one line per event on stdout, each
``PYBENCH-MSG {json}``: ``{"type": "group", "group_id"}`` as it starts preparing a prune group, ``{"type":
"start", "cell_id", "time"}`` as it starts measuring a cell and ``{"type": "record", "record"}`` when a cell is done
(ok or failed). Anything else the worker prints goes to its log.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pybench.bench.config import Cell
from pybench.bench.results import SCHEMA_VERSION, clean_json

PREFIX = "PYBENCH-MSG "
WORKER_MODULE = "pybench.bench.worker"


def now() -> str:
    """A UTC timestamp to the second, as records hold them."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a kill) never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode_job(cells: Iterable[Cell]) -> bytes:
    """The job a worker reads from its stdin."""
    return json.dumps({"cells": [c.to_json() for c in cells]}).encode()


def decode_job(text: str | bytes) -> list[Cell]:
    return [Cell.from_json(c) for c in json.loads(text)["cells"]]


def encode_message(msg: dict[str, Any]) -> str:
    """One protocol line (NaN and infinities become null: the line is strict JSON)."""
    return PREFIX + json.dumps(clean_json(msg), allow_nan=False) + "\n"


def decode_message(line: str) -> dict[str, Any] | None:
    """The message of a protocol line; None for any other output line (or a torn one)."""
    if not line.startswith(PREFIX):
        return None
    try:
        return json.loads(line[len(PREFIX):])
    except ValueError:
        return None


def record(cell: Cell, *, status: str, error: str | None, env: dict[str, Any], started: str | None = None,
           run_id: str = "", achieved: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
           details: dict[str, Any] | None = None, duration_s: float | None = None) -> dict[str, Any]:
    """A record of the store's schema (:mod:`pybench.bench.results`) for ``cell``."""
    return {"schema": SCHEMA_VERSION, "cell_id": cell.cell_id, "group_id": cell.group_id, "run_id": run_id,
            "status": status, "error": error, "config": cell.config, "achieved": achieved or {},
            "metrics": metrics or {}, "details": details or {}, "environment": env, "started": started or now(),
            "finished": now(), "duration_s": duration_s}


def failed_record(cell: Cell, run_id: str, error: str, env: dict[str, Any], started: str | None = None) -> dict:
    """The record of a cell that did not produce one itself (its worker crashed, hung or could not prepare it)."""
    return record(cell, status="failed", error=error, env=env, started=started, run_id=run_id)
