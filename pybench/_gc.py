"""Python's garbage collector paused around allocation-heavy work.

Tracing creates thousands of fx nodes and proxies, and surgery thousands of module attributes: each batch of
allocations can trigger a collection that walks the caller's whole heap (every model and optimizer it holds),
although none of these objects becomes garbage mid-call. Timing loops pause it for the same reason, as ``timeit``
and ``torch.utils.benchmark`` do.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused"]


@contextlib.contextmanager
def paused(collect: bool = False) -> Iterator[None]:
    """Keep the collector off for the block (``collect``: run one full collection first), then restore it."""
    if collect:
        gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
