"""Test hooks that make a worker fail on purpose: how the tests prove that one cell's crash, hang or error ends
only that cell."""

from __future__ import annotations

import os
import signal
import time


def inject_fault(cell_id: str) -> None:
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
