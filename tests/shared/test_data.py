"""pybench.data: splits, determinism, the XOR formula, local-root datasets and their errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import pybench as pb


def stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[ds[i] for i in range(len(ds))], strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


def test_names():
    assert pb.data.names() == ["cifar10", "cifar100", "digits", "fake", "imagefolder", "xor"]


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10, cifar100, digits"):
        pb.data.loaders("mnist")


# ------------------------------------------------------------------------------------------------- digits
def test_digits_split_sizes_shapes_and_normalisation():
    train, val, test = pb.data.datasets("digits", seed=0)
    assert (len(train), len(val), len(test)) == (1293, 144, 360)
    x, y = train.tensors
    assert x.shape == (1293, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated on 3 channels
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4  # normalised on train statistics
    # stratified: every class is ~20 % of the test split
    counts = torch.bincount(test.tensors[1], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    assert pb.data.info("digits") == (10, (3, 32, 32))


def test_digits_are_a_partition_of_sklearn_digits():
    # at size 8 with 1 channel nothing is resampled: the three splits hold exactly sklearn's images, once each
    splits = pb.data.digits(seed=3, size=8, channels=1)
    xs = torch.cat([s.tensors[0] for s in splits]).flatten(1).double()
    ys = torch.cat([s.tensors[1] for s in splits])
    bunch = load_digits()
    ref = torch.as_tensor(bunch.images.reshape(len(bunch.images), -1), dtype=torch.float64) / 16
    # undo the (affine, increasing) normalisation: pixels 0 and 16 both occur, so min and max map back to 0 and 1
    lo, hi = xs.min(), xs.max()
    pix = (xs - lo) / (hi - lo)
    def key(images: torch.Tensor, labels) -> list:  # (label, pixels...) rows, sorted: images stay with labels
        return sorted((int(c), *row) for c, row in zip(labels, images.round(decimals=4).tolist(), strict=True))

    assert key(pix, ys) == key(ref, bunch.target)


def test_digits_seeded():
    a, b, c = pb.data.digits(seed=0), pb.data.digits(seed=0), pb.data.digits(seed=1)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])


def test_digits_val_size_zero_gives_no_val():
    train, val, test = pb.data.digits(val_size=0)
    assert val is None and len(train) + len(test) == 1797


# ---------------------------------------------------------------------------------------------------- xor
def test_xor_labels_follow_eq4():
    x, y, a, b = pb.data.xor_tensors(5000, seed=7)
    assert x.shape == (5000, 2) and y.shape == (5000,)
    torch.testing.assert_close(torch.stack([a, b]) @ torch.stack([a, b]).T, torch.eye(2), atol=1e-6, rtol=0)
    expected = torch.sign((x.double() @ a.double()) * (x.double() @ b.double()))
    assert torch.equal(y, (expected >= 0).long())
    assert 0.45 < y.float().mean() < 0.55  # a and b orthogonal: the four quadrants split N(0, I) evenly
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_xor_seeded_and_splits_share_directions():
    x1, y1, a1, _ = pb.data.xor_tensors(100, seed=1)
    x2, y2, a2, _ = pb.data.xor_tensors(100, seed=1)
    _, _, a3, _ = pb.data.xor_tensors(100, seed=2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(a1, a2) and not torch.equal(a1, a3)
    train, val, test = pb.data.xor(seed=1, n_train=100, n_val=20, n_test=30)
    assert (len(train), len(val), len(test)) == (100, 20, 30)
    x, y, _, _ = pb.data.xor_tensors(150, seed=1)
    assert torch.equal(test.tensors[0], x[120:]) and torch.equal(train.tensors[1], y[:100])
    assert pb.data.info("xor") == (2, (2,))


def test_xor_bad_args():
    with pytest.raises(ValueError, match="dim >= 2"):
        pb.data.xor_tensors(10, dim=1)
    with pytest.raises(ValueError, match="takes no root"):
        pb.data.loaders("xor", root="/tmp")


# --------------------------------------------------------------------------------------------------- fake
def test_fake_shapes_and_determinism():
    a = pb.data.fake(seed=0, num_classes=5, image_size=(3, 16, 16), sizes=(8, 4, 4))
    b = pb.data.fake(seed=0, num_classes=5, image_size=(3, 16, 16), sizes=(8, 4, 4))
    c = pb.data.fake(seed=1, num_classes=5, image_size=(3, 16, 16), sizes=(8, 4, 4))
    xa, ya = stack(a.train)
    assert xa.shape == (8, 3, 16, 16) and ya.max() < 5
    assert torch.equal(xa, stack(b.train)[0])
    assert not torch.equal(xa, stack(c.train)[0])
    assert not torch.equal(stack(a.val)[0], xa[:4])  # splits do not share images


# ------------------------------------------------------------------------------------------------ loaders
def test_loaders_batches_and_seeded_order():
    tr, va, te = pb.data.loaders("digits", batch_size=32, eval_batch_size=100, seed=0)
    assert tr.num_workers == 0
    x, y = next(iter(tr))
    assert x.shape == (32, 3, 32, 32) and y.shape == (32,)
    assert len(va) == 2 and len(te) == 4
    first = lambda loader: next(iter(loader))[1]  # noqa: E731
    assert torch.equal(first(pb.data.loaders("digits", seed=0)[0]), first(pb.data.loaders("digits", seed=0)[0]))
    assert not torch.equal(first(pb.data.loaders("digits", seed=0)[0]),
                           first(pb.data.loaders("digits", seed=5)[0]))
    # val and test are not shuffled: two passes give the same order
    assert torch.equal(first(te), first(te))
    assert torch.equal(first(te), te.dataset.tensors[1][:100])


@pytest.mark.parametrize("kwargs,match", [({"batch_size": 0}, "batch_size must be an int >= 1"),
                                          ({"num_workers": -1}, "num_workers must be"),
                                          ({"seed": 1.5}, "seed must be an int"),
                                          ({"val_size": 1.5}, r"val_size as a fraction must be in \[0, 1\)"),
                                          ({"bogus": 1}, "bad arguments for dataset 'digits'")])
def test_loaders_bad_args(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pb.data.loaders("digits", **kwargs)


# -------------------------------------------------------------------------------------------------- cifar
@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_root_names_layout(tmp_path, name, folder):
    with pytest.raises(ValueError, match=f"needs root=.*{folder}"):
        pb.data.loaders(name)
    with pytest.raises(FileNotFoundError, match=f"does not exist.*{folder}"):
        pb.data.loaders(name, root=tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=f"has no {folder}/ folder"):
        pb.data.loaders(name, root=tmp_path)


def _fake_cifar10(root, n_per_batch=20, n_test=30):
    """Write CIFAR-10's python layout with random images (torchvision's md5 check is patched by the caller)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name, n):
        with open(d / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", n_per_batch)
    dump("test_batch", n_test)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar10_from_local_root(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our files are not the real ones
    _fake_cifar10(tmp_path)
    train, val, test = pb.data.datasets("cifar10", root=tmp_path, val_size=20, seed=0)
    assert (len(train), len(val), len(test)) == (80, 20, 30)
    assert not set(train.indices) & set(val.indices) and len(set(train.indices) | set(val.indices)) == 100
    x, y = train[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    # normalised with the CIFAR-10 constants: undo it and compare with the raw uint8 pixels
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in pb.data.CIFAR_STATS[10])
    raw = torch.as_tensor(train.dataset.data[train.indices[0]]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x * std + mean, raw, atol=1e-5, rtol=0)
    # augmentation only on the training split
    aug = pb.data.datasets("cifar10", root=tmp_path, val_size=20, seed=0, augment=True)
    assert "RandomCrop" in repr(aug.train.dataset.transform) and "RandomCrop" not in repr(aug.val.dataset.transform)
    again = pb.data.datasets("cifar10", root=tmp_path, val_size=20, seed=0)
    assert again.val.indices == val.indices
    assert pb.data.datasets("cifar10", root=tmp_path, val_size=20, seed=1).val.indices != val.indices


# -------------------------------------------------------------------------------------------- imagefolder
def _image_tree(root, classes=("cat", "dog"), n_train=5, n_val=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_image_folder(tmp_path):
    _image_tree(tmp_path)
    tr, va, te = pb.data.loaders("imagefolder", root=tmp_path, batch_size=4, image_size=32, val_size=2)
    assert (len(tr.dataset), len(va.dataset), len(te.dataset)) == (8, 2, 4)
    x, y = next(iter(tr))
    assert x.shape == (4, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    assert pb.data.info("imagefolder", root=tmp_path, image_size=32) == (2, (3, 32, 32))


def test_image_folder_errors_name_layout(tmp_path):
    with pytest.raises(ValueError, match="needs root=.*train/<class>/<image>"):
        pb.data.loaders("imagefolder")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no val/ folder.*train/<class>/<image> and val/<class>"):
        pb.data.loaders("imagefolder", root=tmp_path)
