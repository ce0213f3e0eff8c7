"""Data-parallel fine-tuning with torch.distributed and DistributedDataParallel (DDP).

    from pybench import distributed
    history = distributed.fine_tune(model, loaders.train, epochs=3, nprocs=4, lr=0.01)   # spawns 4 processes
    # or, inside a script started by `torchrun --nproc-per-node=4 script.py` (RANK/WORLD_SIZE set):
    history = distributed.fine_tune(model, loaders.train, epochs=3, lr=0.01)             # joins the group

On GPUs each process drives one GPU (backend NCCL); on the CPU the processes talk through gloo. The arguments are
those of :func:`pybench.train.fine_tune`; the model is updated in place and the history of rank 0 is returned.

"The same result as one process" (to float tolerance, for a model without dropout or random augmentation) holds
because each optimizer step sees exactly what one process would:

* the same global batches in the same order: every process walks the original loader's batch sampler (same seeded
  generator, reseeded by ``train``) and keeps its slice of each global batch (``numpy.array_split`` style, so a batch
  of 7 over 2 processes is 4 + 3);
* the mean gradient over the global batch: DDP averages the processes' gradients, so each process scales its
  (batch-mean) loss by ``n_local * world_size / n_global``, which makes uneven slices weigh by their size;
* the batch statistics of the global batch: BatchNorm layers are synchronised across processes during training
  (sums and squared deviations all-reduced, with gradients through the reduction), which keeps the running
  statistics identical too. ``torch.nn.SyncBatchNorm`` would do this on GPUs only; this one works on gloo as well.

"To tolerance" is rounding: in float64 two processes match one to about 1e-13 after several steps; in float32 the
sums are split differently, and training amplifies those last-bit differences step by step as it does those of a
different CPU thread count (measured on a pruned cifar_resnet20, 6 SGD steps on digits: running variances 2e-2
apart for 2 processes vs 1, 3e-3 for 2 threads vs 1 in one process, 4e-13 for 2 processes vs 1 in float64).

A global batch smaller than the number of processes (a short last batch) would leave a process without data: it
is refused before starting (pass ``drop_last=True`` to the loader, or change the batch size). Random layers
(dropout) draw the same numbers on every process and so differ from one process; that is the one known gap.
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from pybench import train as _train

__all__ = ["fine_tune", "world", "shard_loader", "sync_batchnorm", "restore_batchnorm"]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------------------------------------------
# data: each process keeps its slice of every global batch
# ----------------------------------------------------------------------------------------------------------------
def _slice(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s part when ``n`` items are split in ``size`` near-equal parts (larger first)."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


class _RankBatches:
    """A batch sampler yielding this rank's slice of each batch of ``batch_sampler`` (the one-process batches)."""

    def __init__(self, batch_sampler: Iterable[list[int]], rank: int, size: int) -> None:
        self.batch_sampler, self.rank, self.size = batch_sampler, rank, size

    def __iter__(self) -> Iterator[list[int]]:
        for step, batch in enumerate(self.batch_sampler):
            batch = list(batch)
            if len(batch) < self.size:
                raise ValueError(f"distributed.fine_tune: global batch {step} holds {len(batch)} samples for "
                                 f"{self.size} processes; pass drop_last=True to the DataLoader or change its "
                                 "batch size so that no batch is smaller than the number of processes")
            a, b = _slice(len(batch), self.rank, self.size)
            yield batch[a:b]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]


def _check_batches(loader: DataLoader, size: int, max_batches: int | None = None) -> None:
    """Refuse, before any process starts, a loader whose last batch is smaller than the number of processes (unless
    ``max_batches`` stops every epoch before it)."""
    bs = getattr(loader, "batch_size", None)
    try:
        n = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return
    if bs is None:
        return
    if bs < size:
        raise ValueError(f"distributed.fine_tune: batch_size {bs} is smaller than the {size} processes; give the "
                         f"DataLoader a batch size of at least {size} (it is the global batch, split across them)")
    last = n % bs
    if max_batches is not None and max_batches <= n // bs:  # the short last batch is never drawn
        return
    if last and last < size and not loader.drop_last:
        raise ValueError(f"distributed.fine_tune: the last batch holds {last} sample(s) ({n} samples, batch_size "
                         f"{bs}) for {size} processes; pass drop_last=True to the DataLoader or change the batch "
                         "size")


def shard_loader(loader: DataLoader, rank: int, size: int) -> DataLoader:
    """A loader over ``loader``'s dataset yielding ``rank``'s slice of each of its batches, in its order.

    It shares ``loader``'s generator, so seeding it (``train`` does) gives every rank the one-process order.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"distributed.fine_tune: train_loader must be a torch DataLoader, got "
                        f"{type(loader).__name__}")
    if loader.batch_sampler is None:
        raise ValueError("distributed.fine_tune: train_loader has batch_size=None (no batches to split); give it "
                         "a batch size")
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra.update(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)
    return DataLoader(loader.dataset, batch_sampler=_RankBatches(loader.batch_sampler, rank, size),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator, timeout=loader.timeout,
                      **extra)


# ----------------------------------------------------------------------------------------------------------------
# BatchNorm over the global batch (CPU/gloo and GPU/NCCL alike)
# ----------------------------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of each input is the sum of the processes' output gradients (every
    process's loss depends on every process's contribution)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SyncBN(nn.Module):
    """Wraps a BatchNorm layer (sharing its parameters and buffers) and normalises with the global batch's
    statistics while training; in eval mode it is the wrapped layer."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, group: Any) -> None:
        super().__init__()
        self.bn = bn
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not bn.training and bn.track_running_stats:
            return bn(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # half precision: stats in fp32
        n_local = x.numel() // max(1, x.shape[1])
        packed = torch.cat([xf.sum(dims), xf.new_tensor([float(n_local)])])
        packed = _AllReduceSum.apply(packed, self.group)
        n = packed[-1]
        mean = packed[:-1] / n
        d = xf - mean.view(shape)
        var = _AllReduceSum.apply((d * d).sum(dims), self.group) / n  # biased, as batch_norm normalises
        y = d * torch.rsqrt(var + bn.eps).view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                count = float(n)
                unbiased = var * (count / max(count - 1.0, 1.0))
                bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
                bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, group: Any = None) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every BatchNorm layer below ``model`` by a synchronised wrapper sharing its parameters and buffers;
    returns what :func:`restore_batchnorm` needs to put the original layers back."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, _SyncBN(child, group))
                swapped.append((parent, name, child))
    return swapped


def restore_batchnorm(swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Undo :func:`sync_batchnorm` (the original layers hold the trained parameters and statistics)."""
    for parent, name, child in swapped:
        setattr(parent, name, child)


# ----------------------------------------------------------------------------------------------------------------
# the step: loss weighted by the local share of the global batch
# ----------------------------------------------------------------------------------------------------------------
class _Weighted(nn.Module):
    """Runs the model and records ``n_local * world / n_global`` of the batch (1 outside training)."""

    def __init__(self, module: nn.Module, size: int) -> None:
        super().__init__()
        self.module = module
        self.size = size
        self.scale = 1.0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            n = torch.tensor([float(x.shape[0])], device=x.device)
            total = n.clone()
            dist.all_reduce(total)
            self.scale = float(n) * self.size / float(total)
        else:
            self.scale = 1.0
        return self.module(x, *args, **kwargs)


def _device(backend: str, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank() % max(1, torch.cuda.device_count())))
        return torch.device("cuda", local)
    return torch.device("cpu")


def _fine_tune_in_group(model: nn.Module, train_loader: DataLoader, epochs: int, sync_bn: bool,
                        kwargs: dict[str, Any]) -> _train.History:
    rank, size = world()
    backend = dist.get_backend()
    device = _device(backend, kwargs.pop("device", None))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    loader = shard_loader(train_loader, rank, size)
    _check_batches(train_loader, size, kwargs.get("max_batches"))
    model.to(device)
    swapped = sync_batchnorm(model, dist.new_group(backend=backend)) if sync_bn and size > 1 else []
    inner = _Weighted(model, size)
    ddp = nn.parallel.DistributedDataParallel(inner, device_ids=[device.index] if device.type == "cuda" else None)
    base = kwargs.pop("loss_fn", None) or _train._default_loss

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return base(logits, target) * inner.scale

    try:
        kwargs["progress"] = rank == 0 and kwargs.get("progress", True)  # one bar, not one per process
        return _train.fine_tune(ddp, loader, epochs, device=device, loss_fn=loss_fn, **kwargs)
    finally:
        restore_batchnorm(swapped)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank: int, size: int, port: int, backend: str, threads: int, payload: str, out: str) -> None:
    torch.set_num_threads(threads)
    # the job travels through a file, not through spawn's arguments: those share tensors through /dev/shm
    # file descriptors, which sandboxes and containers often forbid
    job = torch.load(payload, weights_only=False)
    model, loader, epochs, sync_bn, kwargs = job["model"], job["loader"], job["epochs"], job["sync_bn"], job["kwargs"]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        if backend == "nccl":
            kwargs.setdefault("device", f"cuda:{rank}")
        history = _fine_tune_in_group(model, loader, epochs, sync_bn, kwargs)
        if rank == 0:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save({"state": state, "history": list(history)}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def fine_tune(model: nn.Module, train_loader: DataLoader, epochs: int = 1, *, nprocs: int | None = None,
              backend: str | None = None, sync_batchnorm: bool = True, **kwargs: Any) -> _train.History:
    """:func:`pybench.train.fine_tune`, data-parallel over ``nprocs`` processes; ``model`` is updated in place.

    Args:
        model: the (pruned) model.
        train_loader: a DataLoader; its batches are the global batches, split across the processes.
        epochs: passes over the data.
        nprocs: processes to spawn here (``torch.multiprocessing.spawn``) when not already in a process group;
            default: the CUDA GPUs when the backend is NCCL, else 1 (1 = plain :func:`pybench.train.fine_tune`).
            Inside a process group (``torchrun``, or RANK / WORLD_SIZE set), that group is used instead.
        backend: "nccl" (GPUs) or "gloo" (CPU); default NCCL when CUDA is available and the model or ``device`` is
            on CUDA, else gloo.
        sync_batchnorm: normalise BatchNorm with the global batch (needed for the one-process result).
        kwargs: :func:`pybench.train.fine_tune` arguments (lr, momentum, seed, max_batches, ...). With spawned
            processes they, the model and the loader must pickle (no lambdas).

    Returns:
        The history of rank 0 (its losses are those of its slice of each batch, weighted as described above).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"distributed.fine_tune: epochs must be an int >= 1, got {epochs!r}")
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # started by torchrun: join its group (env:// rendezvous)
        be = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(be)
    if dist.is_available() and dist.is_initialized():
        if nprocs is not None and nprocs != dist.get_world_size():
            raise ValueError(f"distributed.fine_tune: nprocs={nprocs} but this process group has "
                             f"{dist.get_world_size()} processes; leave nprocs out under torchrun")
        return _fine_tune_in_group(model, train_loader, epochs, sync_batchnorm, dict(kwargs))

    on_cuda = str(kwargs.get("device") or next((p.device for p in model.parameters()), "cpu")).startswith("cuda")
    be = backend or ("nccl" if torch.cuda.is_available() and on_cuda else "gloo")
    if be not in ("nccl", "gloo"):
        raise ValueError(f"distributed.fine_tune: backend {be!r}; expected 'nccl' (GPUs) or 'gloo' (CPU)")
    if be == "nccl" and not torch.cuda.is_available():
        raise ValueError("distributed.fine_tune: backend 'nccl' needs CUDA GPUs and none is visible; use "
                         "backend='gloo' on the CPU")
    if nprocs is None:
        nprocs = torch.cuda.device_count() if be == "nccl" else 1
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"distributed.fine_tune: nprocs must be an int >= 1, got {nprocs!r}")
    if be == "nccl" and nprocs > torch.cuda.device_count():
        raise ValueError(f"distributed.fine_tune: nprocs={nprocs} NCCL processes need as many GPUs; "
                         f"{torch.cuda.device_count()} visible")
    if nprocs == 1:
        return _train.fine_tune(model, train_loader, epochs, **kwargs)
    shard_loader(train_loader, 0, nprocs)  # the checks each process makes, before any process starts
    _check_batches(train_loader, nprocs, kwargs.get("max_batches"))

    threads = max(1, torch.get_num_threads() // nprocs) if be == "gloo" else torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="pybench-ddp-") as tmp:
        out, payload = os.path.join(tmp, "result.pt"), os.path.join(tmp, "job.pt")
        torch.save({"model": copy.deepcopy(model).cpu(), "loader": train_loader, "epochs": epochs,
                    "sync_bn": sync_batchnorm, "kwargs": dict(kwargs)}, payload)
        try:
            torch.multiprocessing.spawn(_spawned, nprocs=nprocs, join=True,
                                        args=(nprocs, _free_port(), be, threads, payload, out))
        except torch.multiprocessing.ProcessRaisedException as e:
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise RuntimeError(f"distributed.fine_tune: a process failed: {lines[-1] if lines else e}\n{e}") from None
        result = torch.load(out, weights_only=False)
    with torch.no_grad():
        model.load_state_dict(result["state"])
    return _train.History(result["history"])
