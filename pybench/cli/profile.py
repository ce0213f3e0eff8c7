"""`pybench profile MODEL`: op-level profile, dense vs pruned."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pybench.bench import backends
from pybench.bench.config import PruneSettings
from pybench.cli._common import (
    COMMANDS,
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_model_args,
    input_size,
    model_of,
    prune_or_refuse,
)


def main(args: argparse.Namespace) -> int:
    import torch

    from pybench import measure

    model, name = model_of(args)
    x = torch.randn(1, *input_size(args, name))
    pruned = prune_or_refuse(model, x, args.criterion, "one_shot", args.ratio, PruneSettings(calibration_batches=0))
    wrap, backend = _backend(args)
    try:
        res = measure.profile(model, pruned, x, device=args.device, dtype=args.dtype, iters=args.iters,
                              out_dir=args.out, batch_size=args.batch_size, wrap=wrap)
    except (ValueError, backends.BackendOutputError, backends.BackendPrepareError) as e:
        raise UsageError(str(e)) from None
    own = backend.end_profiling() if hasattr(backend, "end_profiling") and args.backend_profile else []
    if res.error:
        print(f"pybench profile: {res.error}", file=sys.stderr)
        return EXIT_FAILED
    on = "" if args.backend == "eager" else f", on {args.backend}"
    print(f"# {args.model}: dense {res.dense_total_ms:.3f} ms vs pruned ({args.criterion} @ {args.ratio}) "
          f"{res.pruned_total_ms:.3f} ms per forward ({res.metric}), batch {args.batch_size}, {res.dtype}, "
          f"{res.device}{on}")
    print(res.table(top=args.top))
    for label, path in res.traces.items():
        print(f"trace {label}: {path}")
    for label, path in zip(("dense", "pruned"), own, strict=False):
        print(f"{args.backend} profile {label}: {path}")
    return EXIT_OK


def _backend(args: argparse.Namespace) -> tuple[Any, Any]:
    """(measure's wrap, the backend) of --backend, refused in one line when it cannot run here."""
    import os
    import tempfile

    try:
        why = backends.unavailable(args.backend, args.device, args.dtype)
        backend = backends.create(args.backend)
    except (KeyError, ValueError) as e:
        raise UsageError(f"--backend {args.backend}: {str(e).strip(chr(39) + chr(34))}") from None
    if why:
        raise UsageError(f"--backend {args.backend}: {why}")
    if args.backend_profile:
        if not hasattr(backend, "profile_prefix"):
            raise UsageError(f"--backend-profile: backend {backend.name!r} has no profiler of its own (onnxruntime "
                             "has); torch.profiler's traces are written either way")
        folder = args.out or tempfile.mkdtemp(prefix="pybench-profile-")
        os.makedirs(folder, exist_ok=True)
        backend.profile_prefix = os.path.join(folder, backend.name)
    if args.backend == "eager":
        return None, backend
    return backends.Prepared(backend, args.dtype), backend


@COMMANDS.register("profile")
def add(sub: argparse._SubParsersAction) -> None:
    pf = sub.add_parser("profile", help="op-level profile of a model, dense vs pruned",
                        description="torch.profiler time per op type, dense vs pruned, and chrome traces.")
    add_model_args(pf)
    pf.add_argument("--device", default="cpu")
    pf.add_argument("--dtype", default="float32")
    pf.add_argument("--batch-size", type=int, default=1)
    pf.add_argument("--iters", type=int, default=10)
    pf.add_argument("--top", type=int, default=20, help="rows shown")
    pf.add_argument("--out", help="folder for the chrome traces")
    pf.add_argument("--backend", default="eager",
                    help="inference backend (eager, inductor[:MODE], onnxruntime, openvino, cuda_graphs, tensorrt)")
    pf.add_argument("--backend-profile", action="store_true",
                    help="also write the backend's own profile beside the traces (onnxruntime's session profiling)")
    pf.set_defaults(func=main)
