"""Inference backends: how a cell's model is prepared and run where users deploy it.

``[matrix] backends`` names them, as ``NAME`` or ``NAME:MODE`` (``inductor:max-autotune``); default ``eager``. Each
backend is one small adapter in its own file, filed in :data:`BACKENDS` by ``@register``: which devices and dtypes
it runs, the packages (and pip extra) it needs, its versions, and ``prepare(model, inputs) -> callable``. Dense and
pruned models are timed through the same backend, paired (:func:`pybench.measure.paired_latency`'s ``wrap``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

from pybench.bench.backends.base import (
    BACKENDS,
    Backend,
    BackendOutputError,
    BackendPrepareError,
    Prepared,
    output_error,
    register,
    tolerance,
)

__all__ = ["BACKENDS", "Backend", "BackendOutputError", "BackendPrepareError", "Prepared", "create", "output_error",
           "parse", "register", "static_unavailable", "tolerance", "unavailable", "versions"]


def parse(spec: str) -> tuple[str, str]:
    """``"inductor:max-autotune"`` -> ``("inductor", "max-autotune")``; a bare name has the mode ``""``."""
    name, _, mode = str(spec).partition(":")
    return name, mode


def create(spec: str) -> Backend:
    """The backend ``spec`` names (``NAME`` or ``NAME:MODE``); KeyError for an unknown name, ValueError for a mode
    it does not have."""
    name, mode = parse(spec)
    cls = BACKENDS[name]
    if mode and mode not in cls.modes:
        raise ValueError(f"backend {name!r} has no mode {mode!r}; its modes: {', '.join(cls.modes) or 'none'}")
    return cls(mode or (cls.modes[0] if cls.modes else ""))


def static_unavailable(b: Backend, device: str, dtype: str) -> str | None:
    """Why backend ``b`` can never run ``dtype`` on ``device`` (on any machine), or None."""
    kind = device.split(":")[0]
    if kind not in b.devices:
        return f"backend {b.name!r} runs on {' / '.join(b.devices)} only, not on {device}"
    if dtype not in b.dtypes.get(kind, ()):
        return (f"backend {b.name!r} does not run {dtype} on {kind} (it runs {', '.join(b.dtypes.get(kind, ()))} "
                "there)")
    return None


def unavailable(spec: str, device: str, dtype: str) -> str | None:
    """Why ``spec`` cannot run ``dtype`` on ``device`` here (a missing package names its pip extra), or None."""
    b = create(spec)
    why = static_unavailable(b, device, dtype)
    if why:
        return why
    missing = [p for p in b.packages if importlib.util.find_spec(p) is None]
    if missing:
        return (f"backend {b.name!r} needs {', '.join(missing)}, which is not installed: pip install "
                f"'pybench[{b.extra}]'")
    return b.unavailable_here(device)


def versions(spec: str) -> dict[str, Any]:
    """The installed versions of the packages ``spec`` runs on (its record's ``details.backend``)."""
    b = create(spec)
    out: dict[str, Any] = {"name": b.name, "mode": b.mode}
    for dist in b.distributions:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# importing the adapters files them in BACKENDS
from pybench.bench.backends import cuda_graphs, eager, inductor, ort, ov, trt  # noqa: E402, F401
