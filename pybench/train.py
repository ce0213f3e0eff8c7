"""Training, fine-tuning and evaluation.

    history = pb.train.train(model, train_loader, epochs=10, lr=0.1, momentum=0.9, scheduler="cosine",
                             val_loader=val_loader, seed=0)
    metrics = pb.train.evaluate(model, test_loader)     # {"loss", "top1", "top5", "n"}

The defaults are the seed papers' fine-tuning settings: SGD, lr 0.01, momentum 0, no Nesterov, no weight decay
(batch size 64 is the loader's; see :func:`pybench.data.loaders`). Every call builds a fresh optimizer, so calling
:func:`fine_tune` after each pruning step resets it (Martineau).

On the CPU a run is a function of the model's state, the data and ``seed``: training runs under a forked RNG
seeded with ``seed`` (dropout, augmentation in the main process) and the train loader's shuffling generator is
reseeded with ``seed`` too, so the same seed gives bit-identical weights (with the same number of intra-op threads:
CPU reductions split their work by thread). The caller's global RNG is left as it was.
AMP (``amp=True``) is for CUDA only.

Accuracies are fractions in [0, 1]. top5 is top-min(5, classes): for a 2-class model it is top-2 (always 1).
A model with a single output is a binary classifier on one logit: BCE-with-logits loss, class 1 when the logit
is > 0 (:mod:`pybench.zoo.xor_mlp` with ``num_classes=1``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["train", "fine_tune", "evaluate", "recalibrate_bn", "logits_of", "make_optimizer", "make_scheduler",
           "History", "OPTIMIZERS", "SCHEDULERS"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step", "multistep")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class History(list):
    """One dict per epoch: epoch, lr, train_loss, train_top1, time_s (and val_loss, val_top1, val_top5 when a
    validation loader was given). A list, so ``history[-1]["val_top1"]`` works; :meth:`to_frame` gives pandas."""

    @property
    def last(self) -> dict[str, Any]:
        """The last epoch's record."""
        if not self:
            raise IndexError("History is empty (no epoch ran)")
        return self[-1]

    def to_frame(self) -> Any:
        """The history as a pandas DataFrame, one row per epoch."""
        import pandas as pd

        return pd.DataFrame(list(self))


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def logits_of(out: Any) -> torch.Tensor:
    """The classification logits of a forward's output (torchvision's GoogLeNet / Inception return tuples in
    training mode whose first field is the main head)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; expected a logits tensor [batch, classes]")


def _default_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 2 and logits.shape[1] == 1:  # one logit: binary classifier
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    return F.cross_entropy(logits, target)


def _correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """How many samples have their target among the top-k logits, for each k (k clamped to the classes)."""
    if logits.dim() == 2 and logits.shape[1] == 1:
        hit1 = int(((logits[:, 0] > 0).long() == target).sum())
        return [hit1 if k == 1 else target.numel() for k in ks]  # 2 classes: top-2 contains every target
    c = logits.shape[1]
    kmax = min(max(ks), c)
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target.view(-1, 1))
    return [int(hits[:, : min(k, c)].any(dim=1).sum()) for k in ks]


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _check_loader(loader: Any, arg: str) -> None:
    if loader is None:
        raise ValueError(f"train: {arg} is None; pass a DataLoader (or any iterable of (inputs, targets) batches)")
    try:
        n = len(loader)
    except TypeError:
        return  # an iterable without a length: checked when it yields nothing
    if n == 0:
        raise ValueError(f"train: {arg} is empty (0 batches); give it a non-empty dataset, or a batch_size no "
                         "larger than the dataset when drop_last=True")


def _autocast(device: torch.device, amp: bool, amp_dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=amp_dtype) if amp else contextlib.nullcontext()


def _check_amp(device: torch.device, amp: bool) -> None:
    if amp and device.type != "cuda":
        raise ValueError(f"train: amp=True needs a CUDA device (got device={device}); pass amp=False on the CPU")


def _batches(loader: Iterable, max_batches: int | None) -> Iterator[Any]:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


def _total(loader: Any, max_batches: int | None) -> int | None:
    try:
        n = len(loader)
    except TypeError:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


# ---------------------------------------------------------------------------------------------------------------
# optimizer and schedule
# ---------------------------------------------------------------------------------------------------------------
def make_optimizer(params: Iterable[torch.nn.Parameter], optimizer: str | Callable[..., torch.optim.Optimizer] = "sgd",
                   lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """An optimizer by name (``"sgd"``, ``"adam"``, ``"adamw"``) or from a factory ``optimizer(params)``."""
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"train: lr must be a positive number, got {lr!r}")
    if weight_decay < 0 or momentum < 0:
        raise ValueError(f"train: weight_decay and momentum must be >= 0, got {weight_decay}, {momentum}")
    if callable(optimizer):
        return optimizer(params)
    name = str(optimizer).lower()
    if name == "sgd":
        if nesterov and momentum == 0:
            raise ValueError("train: nesterov=True needs momentum > 0")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"train: unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)} or a "
                     "callable params -> torch.optim.Optimizer")


def make_scheduler(opt: torch.optim.Optimizer, scheduler: str | None, epochs: int, step_size: int | None = None,
                   milestones: Iterable[int] | None = None,
                   gamma: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-epoch LR schedule: None / "none", "cosine" (to 0 over ``epochs``), "step" (x ``gamma`` every
    ``step_size`` epochs) or "multistep" (x ``gamma`` at each of ``milestones``)."""
    name = "none" if scheduler is None else str(scheduler).lower()
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    if name == "step":
        if not step_size or step_size < 1:
            raise ValueError("train: scheduler='step' needs step_size >= 1 (epochs between LR drops)")
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    if name == "multistep":
        if not milestones:
            raise ValueError("train: scheduler='multistep' needs milestones (the epochs at which the LR drops)")
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    raise ValueError(f"train: unknown scheduler {scheduler!r}; expected one of {', '.join(SCHEDULERS)}")


# ---------------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None,
             loss_fn: LossFn | None = None, amp: bool = False, amp_dtype: torch.dtype = torch.float16,
             max_batches: int | None = None, progress: bool = False) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy (fractions) of ``model`` over ``loader``, in eval mode.

    ``loss_fn`` must return the batch mean (the default cross-entropy does); the model stays on its device.

    top-5 is top-min(5, classes). The model's train/eval mode is restored afterwards. Returns
    ``{"loss", "top1", "top5", "n"}`` where ``n`` is the number of samples seen.
    """
    _check_loader(loader, "loader")
    device = _resolve_device(model, device)
    _check_amp(device, amp)
    loss_fn = loss_fn or _default_loss
    was_training = model.training
    model.eval()
    total_loss, n, c1, c5 = 0.0, 0, 0, 0
    try:
        bar = tqdm(_batches(loader, max_batches), total=_total(loader, max_batches), desc="eval", leave=False,
                   disable=not progress)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp, amp_dtype):
                logits = logits_of(model(x))
                loss = loss_fn(logits, y)
            b = y.shape[0]
            total_loss += float(loss) * b
            h1, h5 = _correct(logits.float(), y, (1, 5))
            c1, c5, n = c1 + h1, c5 + h5, n + b
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("train: evaluate's loader yielded no samples; give it a non-empty dataset")
    return {"loss": total_loss / n, "top1": c1 / n, "top5": c5 / n, "n": n}


# ---------------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------------
def train(model: nn.Module, train_loader: Iterable, epochs: int = 1, *, lr: float = 0.01, momentum: float = 0.0,
          nesterov: bool = False, weight_decay: float = 0.0,
          optimizer: str | Callable[..., torch.optim.Optimizer] = "sgd", scheduler: str | None = None,
          step_size: int | None = None, milestones: Iterable[int] | None = None, gamma: float = 0.1,
          val_loader: Iterable | None = None, device: str | torch.device | None = None, amp: bool = False,
          amp_dtype: torch.dtype = torch.float16, seed: int | None = 0, loss_fn: LossFn | None = None,
          grad_clip: float | None = None, max_batches: int | None = None, progress: bool = True,
          desc: str = "train") -> History:
    """Train ``model`` in place for ``epochs`` epochs over ``train_loader`` and return its :class:`History`.

    Args:
        model: any module returning logits [batch, classes] (or [batch, 1] for a binary single-logit model).
        train_loader: batches of (inputs, integer targets); must not be empty.
        epochs: number of passes (>= 1).
        lr, momentum, nesterov, weight_decay: optimizer settings; defaults: the seed papers' SGD, lr 0.01.
        optimizer: "sgd", "adam", "adamw" or a callable ``params -> Optimizer``. A fresh one each call.
        scheduler: None, "cosine", "step" (with ``step_size``) or "multistep" (with ``milestones``); per epoch,
            multiplied by ``gamma``.
        val_loader: evaluated after each epoch when given (val_loss, val_top1, val_top5 in the history).
        device: where to train; default: where the model's parameters are. The model is moved there.
        amp: mixed precision (CUDA only), in ``amp_dtype``; float16 uses a gradient scaler.
        seed: seeds the RNG (forked, so the caller's is untouched) and the loader's shuffling generator; None
            leaves both alone. Repeated calls with one seed see the same batch order; vary it per call if needed.
        loss_fn: ``(logits, targets) -> loss``; default cross-entropy (BCE-with-logits for one output).
        grad_clip: clip the global gradient norm to this value.
        max_batches: stop each epoch after this many batches (quick fine-tunes, smoke tests).
        progress: show a tqdm bar per epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"train: epochs must be an int >= 1, got {epochs!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"train: max_batches must be >= 1 or None, got {max_batches}")
    _check_loader(train_loader, "train_loader")
    if val_loader is not None:
        _check_loader(val_loader, "val_loader")
    device = _resolve_device(model, device)
    _check_amp(device, amp)
    model.to(device)  # before the optimizer sees the parameters
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: the model has no trainable parameters")
    opt = make_optimizer(params, optimizer, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    sched = make_scheduler(opt, scheduler, epochs, step_size=step_size, milestones=milestones, gamma=gamma)
    loss_fn = loss_fn or _default_loss
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    was_training = model.training
    history = History()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
            gen = getattr(train_loader, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(seed)  # same seed, same batch order, even for a reused loader
        try:
            for epoch in range(1, epochs + 1):
                model.train()
                t0 = time.perf_counter()
                cur_lr = opt.param_groups[0]["lr"]
                total_loss, n, c1 = 0.0, 0, 0
                bar = tqdm(_batches(train_loader, max_batches), total=_total(train_loader, max_batches),
                           desc=f"{desc} {epoch}/{epochs}", leave=False, disable=not progress)
                for i, (x, y) in enumerate(bar):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with _autocast(device, amp, amp_dtype):
                        logits = logits_of(model(x))
                        loss = loss_fn(logits, y)
                    if not torch.isfinite(loss.detach()):
                        raise FloatingPointError(f"train: the loss became {loss.item()} at epoch {epoch}, batch {i}; "
                                                 f"lower lr (now {cur_lr}) or clip gradients (grad_clip=)")
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if grad_clip is not None:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(params, grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    b = y.shape[0]
                    total_loss += float(loss.detach()) * b
                    c1 += _correct(logits.detach().float(), y, (1,))[0]
                    n += b
                    bar.set_postfix(loss=f"{total_loss / n:.4f}", top1=f"{c1 / n:.3f}", refresh=False)
                if n == 0:
                    raise ValueError("train: train_loader yielded no batches; give it a non-empty dataset")
                if sched is not None:
                    sched.step()
                record: dict[str, Any] = {"epoch": epoch, "lr": cur_lr, "train_loss": total_loss / n,
                                          "train_top1": c1 / n}
                if val_loader is not None:
                    m = evaluate(model, val_loader, device=device, loss_fn=loss_fn, amp=amp, amp_dtype=amp_dtype)
                    record.update(val_loss=m["loss"], val_top1=m["top1"], val_top5=m["top5"])
                record["time_s"] = time.perf_counter() - t0
                history.append(record)
        finally:
            model.train(was_training)
    return history


def fine_tune(model: nn.Module, train_loader: Iterable, epochs: int = 1, **kwargs: Any) -> History:
    """:func:`train` with a fresh optimizer (the seed papers' SGD, lr 0.01 by default): the step after pruning."""
    kwargs.setdefault("desc", "fine-tune")
    return train(model, train_loader, epochs, **kwargs)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, batches: int) -> None:
    """Re-estimate BatchNorm running statistics over ``batches`` training batches (cumulative average, no grad).

    After a short training or fine-tune the running statistics lag the weights (a model scoring well in train mode
    and at chance in eval mode); one cheap pass fixes that. The model's train/eval mode and its BatchNorm momenta
    are restored; ``batches <= 0`` or a model without BatchNorm is left alone.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    model.train()
    device = _resolve_device(model, None)  # the batches go where the model is
    try:
        for _, (x, _y) in zip(range(batches), loader, strict=False):
            model(x.to(device, non_blocking=True))
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was_training)
