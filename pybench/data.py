"""Datasets and loaders: CIFAR-10/100, ImageFolder (ImageNet layout), scikit-learn digits, Sandor's XOR, FakeData.

One entry point::

    train, val, test = pb.data.loaders("digits", batch_size=64, seed=0)
    train, val, test = pb.data.loaders("cifar10", root="/data/cifar", augment=True)

Nothing is ever downloaded: CIFAR and ImageFolder read a local ``root`` (``download=False``) and a missing root
gets an error that names the layout expected there. Splits are fixed by ``seed`` (the same seed gives the same
split and, through the train loader's own generator, the same batch order); ``num_workers`` defaults to 0.

``datasets(name, ...)`` gives the three ``Dataset`` objects, ``info(name, ...)`` their number of classes and the
input size, and the builders (:func:`digits`, :func:`xor`, :func:`cifar`, :func:`image_folder`, :func:`fake`)
can be called directly for their extra arguments.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = [
    "Splits",
    "Loaders",
    "DatasetInfo",
    "names",
    "info",
    "datasets",
    "loaders",
    "digits",
    "xor",
    "xor_tensors",
    "cifar",
    "image_folder",
    "fake",
    "CIFAR_STATS",
    "IMAGENET_STATS",
]

# (mean, std) per channel of the training images, the usual constants.
CIFAR_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_CIFAR_LAYOUT = {
    10: "cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and batches.meta "
        "(the python version of https://www.cs.toronto.edu/~kriz/cifar.html, extracted)",
    100: "cifar-100-python/ with train, test and meta (the python version, extracted)",
}
_IMAGEFOLDER_LAYOUT = ("train/<class>/<image> and val/<class>/<image> (the ImageNet layout: one folder per class; "
                       "val/ is used as the test split)")


class Splits(NamedTuple):
    """The three datasets of a split; ``val`` is None when ``val_size`` is 0."""

    train: Dataset
    val: Dataset | None
    test: Dataset


class Loaders(NamedTuple):
    """The three loaders of a split; ``val`` is None when ``val_size`` is 0."""

    train: DataLoader
    val: DataLoader | None
    test: DataLoader


class DatasetInfo(NamedTuple):
    """What a model needs to know about a dataset: its number of classes and one input's size (no batch dim)."""

    num_classes: int
    input_size: tuple[int, ...]


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"data: seed must be an int, got {seed!r}")
    return seed


def _n_val(val_size: float | int, n: int, arg: str = "val_size") -> int:
    """val_size as a count: an int is a count, a float in [0, 1) a fraction of ``n``."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise TypeError(f"data: {arg} must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise ValueError(f"data: {arg} as a fraction must be in [0, 1), got {val_size}")
        return int(round(val_size * n))
    if not 0 <= val_size < n:
        raise ValueError(f"data: {arg} must be in [0, {n}) (the training set has {n} items), got {val_size}")
    return val_size


def _split_indices(n: int, n_val: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded permutation of range(n): (train indices, val indices)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _require_root(root: str | os.PathLike | None, name: str, layout: str) -> str:
    if root is None:
        raise ValueError(f"data: {name} needs root=<a local folder holding {layout}>; pybench never downloads")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data: {name} root {root!r} does not exist; it must be a local folder holding "
                                f"{layout} (pybench never downloads)")
    return root


# ---------------------------------------------------------------------------------------------------------------
# scikit-learn digits: a real, bundled, small image dataset
# ---------------------------------------------------------------------------------------------------------------
def digits(seed: int = 0, size: int = 32, channels: int = 3, test_size: float = 0.2,
           val_size: float | int = 0.1, folds: int = 0, fold: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) as 32x32 3-channel images.

    Pixels are scaled to [0, 1], resized bilinearly to ``size`` x ``size``, repeated over ``channels`` and
    normalised with the mean and std of the training split. The split is stratified and fixed by ``seed``:
    ``test_size`` of all images for test, then ``val_size`` of the rest (a fraction, or a count) for validation.
    With the defaults: 1,293 train, 144 val, 360 test images. ``folds`` > 1: cross-validation instead of
    ``test_size``: the test split is fold ``fold`` of a stratified ``folds``-fold partition (shuffled by ``seed``),
    so the ``folds`` runs of a seed test on every image once.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    if size < 8 or channels < 1:
        raise ValueError(f"data: digits needs size >= 8 and channels >= 1, got size={size}, channels={channels}")
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, channels, -1, -1).contiguous()
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    idx = list(range(len(y)))
    if folds:
        from sklearn.model_selection import StratifiedKFold

        if not (isinstance(folds, int) and folds >= 2 and isinstance(fold, int) and 0 <= fold < folds):
            raise ValueError(f"data: digits needs folds >= 2 and 0 <= fold < folds, got folds={folds!r}, "
                             f"fold={fold!r}")
        parts = StratifiedKFold(folds, shuffle=True, random_state=seed).split(idx, y.numpy())
        rest, test_idx = (list(map(int, p)) for p in list(parts)[fold])
    else:
        rest, test_idx = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y.numpy())
    n_val = _n_val(val_size, len(rest))
    if n_val:
        train_idx, val_idx = train_test_split(rest, test_size=n_val, random_state=seed, stratify=y[rest].numpy())
    else:
        train_idx, val_idx = rest, []
    train_idx, val_idx, test_idx = sorted(train_idx), sorted(val_idx), sorted(test_idx)
    mean, std = x[train_idx].mean(), x[train_idx].std()  # one grey channel repeated: one mean and std
    x = (x - mean) / std

    def part(ix: list[int]) -> TensorDataset:
        return TensorDataset(x[ix], y[ix])

    return Splits(part(train_idx), part(val_idx) if val_idx else None, part(test_idx))


# ---------------------------------------------------------------------------------------------------------------
# Sandor et al.'s XOR data, eq. (4)
# ---------------------------------------------------------------------------------------------------------------
def xor_tensors(n: int, seed: int = 0, dim: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` XOR points: x ~ N(0, I_dim), y = sign((a.x)(b.x)) with random orthonormal a, b (eq. 4).

    Returns (x [n, dim] float32, y [n] long with 1 for sign +1 and 0 for -1, a [dim], b [dim]); all fixed by
    ``seed``. Points with a product of exactly 0 (probability 0) are labelled 1.
    """
    seed = _check_seed(seed)
    if dim < 2:
        raise ValueError(f"data: xor needs dim >= 2 (two orthonormal directions), got {dim}")
    if n < 1:
        raise ValueError(f"data: xor needs n >= 1 points, got {n}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))
    a, b = q[:, 0], q[:, 1]
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = ((x @ a) * (x @ b) >= 0).long()
    return x.float(), y, a.float(), b.float()


def xor(seed: int = 0, n_train: int = 2000, n_val: int = 500, n_test: int = 1000, dim: int = 2) -> Splits:
    """Sandor et al.'s XOR dataset split into train / val / test, all drawn with the same a, b."""
    total = n_train + n_val + n_test
    if n_train < 1 or n_test < 1 or n_val < 0:
        raise ValueError(f"data: xor needs n_train >= 1, n_test >= 1, n_val >= 0, got {n_train}, {n_test}, {n_val}")
    x, y, _, _ = xor_tensors(total, seed=seed, dim=dim)
    tr, va = n_train, n_train + n_val
    return Splits(TensorDataset(x[:tr], y[:tr]), TensorDataset(x[tr:va], y[tr:va]) if n_val else None,
                  TensorDataset(x[va:], y[va:]))


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 from a local root
# ---------------------------------------------------------------------------------------------------------------
def cifar(root: str | os.PathLike | None, num_classes: int = 10, seed: int = 0, val_size: float | int = 5000,
          augment: bool = False) -> Splits:
    """CIFAR-10 or CIFAR-100 from ``root`` (download=False).

    The 50,000 training images are split into train and validation (``val_size``: 5,000 by default, as Sandor et
    al. use: 45k / 5k) by ``seed``; the 10,000 test images are the test split. Images are normalised with the
    usual per-channel constants; ``augment`` adds He et al.'s random crop (4-pixel padding) and horizontal flip
    to the training split only.
    """
    import torchvision
    from torchvision import transforms as T

    if num_classes not in (10, 100):
        raise ValueError(f"data: CIFAR has 10 or 100 classes, got num_classes={num_classes}")
    name = f"cifar{num_classes}"
    root = _require_root(root, name, _CIFAR_LAYOUT[num_classes])
    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    sub = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    if not os.path.isdir(os.path.join(root, sub)):
        raise FileNotFoundError(f"data: {name}: {root!r} has no {sub}/ folder; expected {root}/"
                                f"{_CIFAR_LAYOUT[num_classes]}")
    mean, std = CIFAR_STATS[num_classes]
    plain = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), plain]) if augment else plain
    try:
        train_full = cls(root, train=True, download=False, transform=train_tf)
        val_full = cls(root, train=True, download=False, transform=plain)  # same images, no augmentation
        test = cls(root, train=False, download=False, transform=plain)
    except RuntimeError as e:
        raise FileNotFoundError(f"data: {name}: could not read {root!r} ({e}); expected {root}/"
                                f"{_CIFAR_LAYOUT[num_classes]}") from e
    n_val = _n_val(val_size, len(train_full))
    train_idx, val_idx = _split_indices(len(train_full), n_val, seed)
    return Splits(Subset(train_full, train_idx), Subset(val_full, val_idx) if n_val else None, test)


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder (ImageNet layout)
# ---------------------------------------------------------------------------------------------------------------
def image_folder(root: str | os.PathLike | None, seed: int = 0, val_size: float | int = 0.02, image_size: int = 224,
                 augment: bool = False, mean_std: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_STATS
                 ) -> Splits:
    """An ImageNet-layout folder: ``root/train/<class>/*`` and ``root/val/<class>/*``.

    ``root/val`` is the test split (as ImageNet's validation set is in the papers); ``val_size`` of ``root/train``
    (a fraction or a count, chosen by ``seed``) is held out for validation. Evaluation images are resized to
    ``image_size / 0.875`` and centre-cropped to ``image_size``; ``augment`` makes training images random-resized
    crops with horizontal flips.
    """
    import torchvision
    from torchvision import transforms as T

    root = _require_root(root, "imagefolder", _IMAGEFOLDER_LAYOUT)
    for sub in ("train", "val"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise FileNotFoundError(f"data: imagefolder: {root!r} has no {sub}/ folder; expected {root}/"
                                    f"{_IMAGEFOLDER_LAYOUT}")
    norm = T.Normalize(*mean_std)
    plain = T.Compose([T.Resize(int(math.ceil(image_size / 0.875))), T.CenterCrop(image_size), T.ToTensor(), norm])
    train_tf = (T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
                if augment else plain)
    train_full = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=train_tf)
    val_full = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=plain)
    test = torchvision.datasets.ImageFolder(os.path.join(root, "val"), transform=plain)
    if test.classes != train_full.classes:
        raise ValueError(f"data: imagefolder: {root}/train and {root}/val have different class folders "
                         f"({len(train_full.classes)} vs {len(test.classes)}); they must match")
    n_val = _n_val(val_size, len(train_full))
    train_idx, val_idx = _split_indices(len(train_full), n_val, seed)
    return Splits(Subset(train_full, train_idx), Subset(val_full, val_idx) if n_val else None, test)


# ---------------------------------------------------------------------------------------------------------------
# FakeData
# ---------------------------------------------------------------------------------------------------------------
def fake(seed: int = 0, num_classes: int = 10, image_size: tuple[int, int, int] = (3, 32, 32),
         sizes: tuple[int, int, int] = (512, 128, 128)) -> Splits:
    """torchvision's FakeData (random images, random labels: for timing and plumbing, not for accuracy).

    Each split is deterministic per index; ``seed`` shifts all of them, and the splits never share an image.
    """
    import torchvision
    from torchvision import transforms as T

    seed = _check_seed(seed)
    n_train, n_val, n_test = sizes
    if n_train < 1 or n_test < 1 or n_val < 0:
        raise ValueError(f"data: fake sizes must be (train >= 1, val >= 0, test >= 1), got {sizes}")
    base = seed * 10_000_019  # keep different seeds' index ranges apart

    def make(n: int, offset: int) -> Dataset:
        return torchvision.datasets.FakeData(n, tuple(image_size), num_classes, transform=T.ToTensor(),
                                             random_offset=base + offset)

    return Splits(make(n_train, 0), make(n_val, n_train) if n_val else None, make(n_test, n_train + n_val))


# ---------------------------------------------------------------------------------------------------------------
# the registry and the entry points
# ---------------------------------------------------------------------------------------------------------------
def _no_root(fn: Callable[..., Splits], name: str) -> Callable[..., Splits]:
    @functools.wraps(fn)  # its signature (options) is fn's
    def build(root: Any = None, **kw: Any) -> Splits:
        if root is not None:
            raise ValueError(f"data: {name} is generated or bundled and takes no root (got root={root!r})")
        return fn(**kw)

    return build


_BUILDERS: dict[str, Callable[..., Splits]] = {
    "cifar10": functools.partial(cifar, num_classes=10),
    "cifar100": functools.partial(cifar, num_classes=100),
    "imagefolder": image_folder,
    "digits": _no_root(digits, "digits"),
    "xor": _no_root(xor, "xor"),
    "fake": _no_root(fake, "fake"),
}
READ_FROM_A_FOLDER = frozenset({"cifar10", "cifar100", "imagefolder"})  # the others are generated or bundled
_FIXED = frozenset({"root", "seed", "num_classes"})  # given by the dataset's name, its root and the cell's seed


def options(name: str) -> list[str]:
    """The keyword options ``loaders(name, ...)`` takes besides root, seed and the batch sizes: the dataset
    builder's own and the loaders' (num_workers, shuffle, drop_last, pin_memory)."""
    import inspect

    own = set(inspect.signature(_BUILDERS[_check_name(name)]).parameters) - _FIXED
    return sorted(own | {"num_workers", "shuffle", "drop_last", "pin_memory"})


def names() -> list[str]:
    """The dataset names :func:`loaders` accepts, sorted."""
    return sorted(_BUILDERS)


def _check_name(name: str) -> str:
    if name not in _BUILDERS:
        raise ValueError(f"data: unknown dataset {name!r}; expected one of {', '.join(names())}")
    return name


def info(name: str, root: str | os.PathLike | None = None, **kwargs: Any) -> DatasetInfo:
    """Number of classes and input size (no batch dim) of dataset ``name`` with these arguments."""
    _check_name(name)
    if name in ("cifar10", "cifar100"):
        return DatasetInfo(int(name[5:]), (3, 32, 32))
    if name == "digits":
        return DatasetInfo(10, (kwargs.get("channels", 3), kwargs.get("size", 32), kwargs.get("size", 32)))
    if name == "xor":
        return DatasetInfo(2, (kwargs.get("dim", 2),))
    if name == "fake":
        return DatasetInfo(kwargs.get("num_classes", 10), tuple(kwargs.get("image_size", (3, 32, 32))))
    size = kwargs.get("image_size", 224)
    train = os.path.join(_require_root(root, "imagefolder", _IMAGEFOLDER_LAYOUT), "train")
    classes = [d for d in os.scandir(train) if d.is_dir()] if os.path.isdir(train) else []
    return DatasetInfo(len(classes), (3, size, size))


def datasets(name: str, root: str | os.PathLike | None = None, seed: int = 0, **kwargs: Any) -> Splits:
    """The (train, val, test) datasets of ``name`` (one of :func:`names`); ``kwargs`` go to its builder."""
    _check_name(name)
    try:
        return _BUILDERS[name](root=root, seed=seed, **kwargs)
    except TypeError as e:
        raise TypeError(f"data: bad arguments for dataset {name!r}: {e}") from e


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; seed the other RNGs transforms might use from it.
    import random

    import numpy as np

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def loaders(name: str, root: str | os.PathLike | None = None, batch_size: int = 64, seed: int = 0,
            eval_batch_size: int | None = None, num_workers: int = 0, shuffle: bool = True,
            drop_last: bool = False, pin_memory: bool = False, **kwargs: Any) -> Loaders:
    """(train, val, test) DataLoaders of dataset ``name``, deterministic for a given ``seed``.

    Args:
        name: one of :func:`names`: cifar10, cifar100, imagefolder (need ``root``), digits, xor, fake.
        root: local folder of cifar10 / cifar100 / imagefolder (the error names the layout expected there).
        batch_size: training batch size (64, as in the seed papers); ``eval_batch_size`` for val / test
            (default: the same).
        seed: fixes the split and the training batch order.
        num_workers: loader worker processes (0: load in the main process; the default, for 2-core machines).
        shuffle: shuffle the training split each epoch (val and test are never shuffled).
        **kwargs: the dataset builder's own arguments (e.g. ``augment=True``, ``val_size=5000``).
    """
    for arg, v in (("batch_size", batch_size), ("num_workers", num_workers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if arg == "batch_size" else 0):
            raise ValueError(f"data: {arg} must be an int >= {1 if arg == 'batch_size' else 0}, got {v!r}")
    if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
        raise ValueError(f"data: eval_batch_size must be an int >= 1 or None, got {eval_batch_size!r}")
    seed = _check_seed(seed)
    split = datasets(name, root=root, seed=seed, **kwargs)
    common = {"num_workers": num_workers, "pin_memory": pin_memory,
              "worker_init_fn": _seed_worker if num_workers else None,
              "persistent_workers": False}
    train = DataLoader(split.train, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                       generator=torch.Generator().manual_seed(seed), **common)
    ebs = eval_batch_size or batch_size

    def evaluation(ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=ebs, shuffle=False, generator=torch.Generator().manual_seed(seed), **common)

    return Loaders(train, evaluation(split.val) if split.val is not None else None, evaluation(split.test))
