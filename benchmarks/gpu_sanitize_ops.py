"""Every pybench op once per dtype, layout and edge shape, checked against its reference: the workload that
benchmarks/gpu_proof.py runs under compute-sanitizer (memcheck, racecheck, initcheck).

    compute-sanitizer --tool memcheck --kernel-name kns=pybench python benchmarks/gpu_sanitize_ops.py
    python benchmarks/gpu_sanitize_ops.py --device cpu        # the same calls on the CPU kernels (dry run)

Small tensors (a sanitizer slows kernels 10-100x), but shapes that reach every branch of the kernels: long and
short runs, the rows layout (channels_last, inner size 1), a channel count that is not a multiple of the warp,
empty tensors, int32 and int64 indices, strided views. The references run on CPU copies (torch's GPU kernels stay
out of the sanitizer's way, and the check is independent of the device). Exit 1 if any result differs.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pybench import ops

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 1e-2}
WEIGHTS = [((64, 32, 3, 3), 0), ((64, 32, 3, 3), 1), ((37, 300), 0), ((37, 300), 1), ((3, 1, 5, 5), 1),
           ((10,), 0), ((0, 8, 3, 3), 1), ((5, 7, 9), 1), ((33, 2, 300), 1)]
ACTIVATIONS = [(4, 8, 5, 5), (2, 33, 37, 41), (3, 70, 2, 2), (7, 33), (2, 6, 3, 4, 5), (0, 16, 4, 4), (2, 3, 300, 2)]


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> bool:
    return got.shape == want.shape and torch.allclose(got.double().cpu(), want.double().cpu(), rtol=TOL[dtype],
                                                      atol=TOL[dtype])


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.cpu()


def calls(device: torch.device) -> list[tuple[str, bool]]:
    """(what, matched the reference) for every call of the workload."""
    g = torch.Generator().manual_seed(0)
    out: list[tuple[str, bool]] = []

    def rand(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(dtype).to(device)

    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        for shape, dim in WEIGHTS:
            w = rand(shape, dtype)
            out.append((f"channel_stats {shape} dim {dim} {name}",
                        _close(ops.channel_stats(w, dim), ops.ref_channel_stats(w.cpu(), dim), dtype)))
            if w.dim() == 4:
                wc = w.contiguous(memory_format=torch.channels_last)
                out.append((f"channel_stats {shape} dim {dim} {name} channels_last",
                            _close(ops.channel_stats(wc, dim), ops.ref_channel_stats(w.cpu(), dim), dtype)))
        ws = [rand(s, dtype) for s, _ in WEIGHTS[:5]]
        for got, w in zip(ops.channel_stats_list(ws, 0), ws, strict=True):
            out.append((f"channel_stats_list {tuple(w.shape)} {name}",
                        _close(got, ops.ref_channel_stats(w.cpu(), 0), dtype)))
        for shape in ACTIVATIONS:
            x = torch.relu(rand(shape, dtype))
            ref = ops.ref_activation_stats(x.cpu())
            out.append((f"activation_stats {shape} {name}", _close(ops.activation_stats(x), ref, dtype)))
            if x.dim() == 4:
                xc = x.contiguous(memory_format=torch.channels_last)
                out.append((f"activation_stats {shape} {name} channels_last",
                            _close(ops.activation_stats(xc), ref, dtype)))
            state = torch.zeros(shape[1], 4, device=device, dtype=torch.float64)
            out.append((f"activation_stats {shape} {name} into a state",
                        _close(ops.activation_stats(x, state), ref, dtype)))
        for shape in [(64, 32, 3, 3), (37, 300), (10,), (4096, 1, 1, 1), (5, 7, 9)]:
            w = rand(shape, dtype)
            o = torch.randperm(shape[0], generator=g)[: max(1, shape[0] // 2)].to(device)
            i = torch.randperm(shape[1], generator=g)[: max(1, shape[1] // 3)].to(device) if len(shape) > 1 else None
            for oi, ii in [(o, i), (None, i), (o.int(), None), (None, None)]:
                got = ops.channel_gather(w, oi, ii)
                out.append((f"channel_gather {shape} {name} out={oi is not None} in={ii is not None}",
                            torch.equal(got.cpu(), ops.ref_channel_gather(w.cpu(), _cpu(oi), _cpu(ii)))))
            if w.dim() == 4:
                wc = w.contiguous(memory_format=torch.channels_last)
                out.append((f"channel_gather {shape} {name} channels_last",
                            torch.equal(ops.channel_gather(wc, o, i).cpu(),
                                        ops.ref_channel_gather(w.cpu(), _cpu(o), _cpu(i)))))
        ws = [rand(s, dtype) for s in [(8, 4, 3, 3), (6,), (5, 9)]]
        idx = [torch.tensor([1, 5, 5], device=device), torch.tensor([0], device=device), None]
        ins = [torch.tensor([3, 0], device=device, dtype=torch.int32), None, torch.tensor([8], device=device)]
        for got, w, o, i in zip(ops.channel_gather_list(ws, idx, ins), ws, idx, ins, strict=True):
            out.append((f"channel_gather_list {tuple(w.shape)} {name}",
                        torch.equal(got.cpu(), ops.ref_channel_gather(w.cpu(), _cpu(o), _cpu(i)))))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_sanitize_ops: no CUDA GPU visible; use --device cpu", file=sys.stderr)
        return 2
    print(f"ops backend on {device.type}: {ops.backend(device.type)}")
    results = calls(device)
    bad = [what for what, ok in results if not ok]
    for what in bad:
        print(f"MISMATCH {what}")
    print(f"{len(results)} op calls on {device}, {len(bad)} differ from the reference")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
