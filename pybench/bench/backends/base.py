"""What every backend adapter is, and the per-cell cache that prepares each model once and checks its output."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pybench._registry import Registry

__all__ = ["BACKENDS", "Backend", "BackendOutputError", "BackendPrepareError", "Prepared", "output_error", "register",
           "summary", "tolerance"]


BACKENDS: Registry = Registry("backend")  # name -> Backend subclass; each adapter file files its own
register = BACKENDS.register


class BackendOutputError(RuntimeError):
    """A backend's output is farther from eager float32 than its dtype allows: never a fast wrong answer."""


class BackendPrepareError(RuntimeError):
    """A backend could not prepare (export, convert, compile) a model; the message summarises its own."""


def summary(e: BaseException, lines: int = 3, chars: int = 600) -> str:
    """The first ``lines`` non-empty lines of an exporter's (often very long) message, at most ``chars``."""
    text = " | ".join([ln.strip() for ln in str(e).splitlines() if ln.strip()][:lines])
    return f"{type(e).__name__}: {text[:chars]}{'...' if len(text) > chars else ''}"


class Backend:
    """One inference backend. Subclasses set the class attributes and implement :meth:`prepare`."""

    name: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")  # device types
    dtypes: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("float32", "bfloat16"),
                                                     "cuda": ("float32", "float16", "bfloat16")}
    packages: ClassVar[tuple[str, ...]] = ()  # import names it needs
    distributions: ClassVar[tuple[str, ...]] = ("torch",)  # whose versions its records carry
    extra: ClassVar[str] = ""  # the pip extra that installs the packages
    modes: ClassVar[tuple[str, ...]] = ()  # the first is the default

    def __init__(self, mode: str = "") -> None:
        self.mode = mode

    def unavailable_here(self, device: str) -> str | None:
        """A reason this machine cannot run the backend on ``device`` beyond packages (a missing provider)."""
        return None

    def prepare(self, model: nn.Module, inputs: Any) -> Callable[..., Any]:
        """What to call instead of ``model(*inputs)``: ``model`` is an eval-mode copy on the cell's device and
        dtype, ``inputs`` the prepared inputs (a tensor or a tuple). Compiling / exporting / building happens here."""
        raise NotImplementedError


def tolerance(dtype: str) -> float:
    """The largest relative error (max |out - ref| / max |ref|) a backend may show against eager float32."""
    return 1e-3 if dtype == "float32" else 5e-2


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    if isinstance(out, dict) and out:
        return _first_tensor(next(iter(out.values())))
    raise TypeError(f"the backend's output is {type(out).__name__}, not a tensor")


def output_error(reference: Any, out: Any) -> tuple[float, float]:
    """(max absolute, relative) error of ``out`` against ``reference``: relative to the reference's largest magnitude
    (an element-wise ratio explodes where the reference is near 0)."""
    ref = _first_tensor(reference).detach().float().cpu()
    got = _first_tensor(out).detach().float().cpu()
    if got.shape != ref.shape:
        raise BackendOutputError(f"the backend's output has shape {tuple(got.shape)}, eager's {tuple(ref.shape)}")
    diff = float((got - ref).abs().max()) if ref.numel() else 0.0
    if diff != diff:  # NaN
        return float("nan"), float("nan")
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return diff, diff / scale if scale > 0 else diff


@dataclass
class Entry:
    """One prepared model: its callable, how long preparing took and its output's error against eager fp32."""

    fn: Callable[..., Any]
    prepare_s: float
    max_abs_error: float
    max_rel_error: float


def _key(model: nn.Module, inputs: Any) -> tuple:
    """What tells two models apart: each tensor's name, shape, dtype and sum (a pruned model whose pins kept every
    channel has the dense model's shapes, yet after fine-tuning not its weights), and the input shapes."""
    xs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    with torch.no_grad():
        tensors = tuple((n, tuple(t.shape), t.dtype, float(t.double().sum()) if t.is_floating_point() else None)
                        for n, t in model.state_dict().items())
    return tensors, tuple(tuple(x.shape) for x in xs if isinstance(x, torch.Tensor))


class Prepared:
    """A :data:`pybench.measure` ``wrap`` that prepares each distinct model (by its tensors' names and shapes, and
    the input shapes) once through ``backend``, checks its output on those inputs against the same model in eager
    float32, and hands back the same callable for every later copy — repeats and paired timing reuse one export.

    Raises :class:`BackendOutputError` when the error exceeds :func:`tolerance` of ``dtype``.
    """

    def __init__(self, backend: Backend, dtype: str) -> None:
        self.backend = backend
        self.dtype = dtype
        self.entries: dict[tuple, Entry] = {}

    def __call__(self, model: nn.Module, inputs: Any) -> Callable[..., Any]:
        key = _key(model, inputs)
        if key not in self.entries:
            self.entries[key] = self._prepare(model, inputs)
        return self.entries[key].fn

    def describe(self) -> dict[str, Any]:
        """The backend, its mode and package versions, and each prepared model's preparation and output error."""
        from pybench.bench.backends import versions

        spec = self.backend.name + (f":{self.backend.mode}" if self.backend.mode else "")
        return {**versions(spec), "tolerance": tolerance(self.dtype),
                "prepared": [{"prepare_s": e.prepare_s, "max_abs_error": e.max_abs_error,
                              "max_rel_error": e.max_rel_error} for e in self.entries.values()]}

    def _prepare(self, model: nn.Module, inputs: Any) -> Entry:
        xs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        fp32 = all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
        with torch.no_grad():  # the reference: this model in eager float32 on the same input
            ref = (model if fp32 else copy.deepcopy(model).float())(
                *[x.float() if x.is_floating_point() else x for x in xs])
        t0 = time.perf_counter()
        try:
            fn = self.backend.prepare(model, inputs)
            out = fn(*xs)  # the first call is part of preparing (torch.compile compiles on it)
        except Exception as e:
            if "out of memory" in str(e).lower():
                raise  # the measurement's own out-of-memory handling reports it
            raise BackendPrepareError(f"backend {self.backend.name!r} could not prepare "
                                      f"{type(model).__name__}: {summary(e)}") from e
        if xs and xs[0].is_cuda:
            torch.cuda.synchronize(xs[0].device)
        prepare_s = time.perf_counter() - t0
        abs_err, rel_err = output_error(ref, out)
        tol = tolerance(self.dtype)
        if not rel_err <= tol:
            raise BackendOutputError(
                f"backend {self.backend.name!r}: output differs from eager float32 by {rel_err:.3g} (relative to its "
                f"largest value; max abs {abs_err:.3g}), beyond the {tol:g} allowed for {self.dtype}")
        return Entry(fn, prepare_s, abs_err, rel_err)
