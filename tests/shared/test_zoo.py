"""pybench.zoo: names, exact sizes against the papers, the rebuild contract, local weights, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.fx
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pybench as pb
from pybench.zoo.cifar_resnet import PadShortcut

OURS = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "cifar_resnet110", "cifar_vgg16", "mobilenet_v1",
        "xor_mlp"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs per module (FlopCounterMode counts 2 FLOPs per MAC), keyed by qualified name."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    root = type(model).__name__
    out = {}
    for key, ops in counter.get_flop_counts().items():
        name = key[len(root) + 1:] if key.startswith(root + ".") else key
        out[name] = sum(ops.values()) // 2
    return out


# ---------------------------------------------------------------------------------------------------- names
def test_names_are_sorted_and_cover_torchvision_and_ours():
    names = pb.zoo.names()
    assert names == sorted(names) and len(names) == len(set(names))
    tv = torchvision.models.list_models(module=torchvision.models)
    assert set(tv) <= set(names)
    assert set(OURS) <= set(names)
    assert len(names) == len(set(tv) | set(OURS))


def test_unknown_name_names_close_matches():
    with pytest.raises(ValueError, match="unknown model name 'resnet5'.*'resnet50'"):
        pb.zoo.create("resnet5")
    with pytest.raises(ValueError, match="cifar_resnet20"):
        pb.zoo.input_size("cifar_resnt20")
    with pytest.raises(TypeError, match="name must be a str"):
        pb.zoo.create(20)


@pytest.mark.parametrize("name,size", [("cifar_resnet56", (3, 32, 32)), ("cifar_vgg16", (3, 32, 32)),
                                       ("inception_v3", (3, 299, 299)), ("resnet50", (3, 224, 224)),
                                       ("mobilenet_v1", (3, 224, 224)), ("xor_mlp", (2,))])
def test_input_size(name, size):
    assert pb.zoo.input_size(name) == size


def test_input_size_of_a_model():
    assert pb.zoo.input_size(pb.zoo.create("cifar_resnet20")) == (3, 32, 32)
    assert pb.zoo.input_size(pb.zoo.create("vit_b_32", image_size=64)) == (3, 64, 64)
    with pytest.raises(ValueError, match="pybench_spec"):
        pb.zoo.input_size(nn.Linear(2, 2))


@pytest.mark.parametrize("name,kwargs", [("cifar_resnet20", {}), ("cifar_resnet20", {"shortcut": "A"}),
                                         ("cifar_resnet56", {}), ("cifar_vgg16", {}), ("mobilenet_v1", {}),
                                         ("xor_mlp", {})])
def test_our_models_trace_with_fx(name, kwargs):
    # the pruning engine reads models through torch.fx: every pybench model must trace and run unchanged
    model = pb.zoo.create(name, **kwargs).eval()
    gm = torch.fx.symbolic_trace(model)
    size = pb.zoo.input_size(name)
    x = torch.randn(2, *(size if name != "mobilenet_v1" else (3, 64, 64)))
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- cifar resnet
def resnet_params_by_formula(depth: int, num_classes: int, shortcut: str) -> int:
    """He et al.'s CIFAR ResNet: stem, 3 stages of n blocks (2 conv3x3 + 2 BN each), fc; B adds 2 projections."""
    n = (depth - 2) // 6
    widths = (16, 32, 64)
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    cin = 16
    for w in widths:
        for _ in range(n):
            total += cin * w * 9 + w * w * 9 + 2 * (2 * w)
            cin = w
    total += 64 * num_classes + num_classes
    if shortcut == "B":
        total += (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    return total


def test_cifar_resnet20_params_pinned_and_by_formula():
    b = pb.zoo.create("cifar_resnet20")
    a = pb.zoo.create("cifar_resnet20", shortcut="A")
    assert n_params(b) == 272_474 == resnet_params_by_formula(20, 10, "B")
    assert n_params(a) == 269_722 == resnet_params_by_formula(20, 10, "A")  # He et al.: "0.27 M"


@pytest.mark.parametrize("depth", [32, 56, 110])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet_params_by_formula(depth, shortcut):
    model = pb.zoo.create(f"cifar_resnet{depth}", num_classes=100, shortcut=shortcut)
    assert n_params(model) == resnet_params_by_formula(depth, 100, shortcut)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == depth - 1  # depth counts the 3x3 convs plus the fc


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet20_macs_match_sandor_table2(shortcut):
    macs = conv_macs(pb.zoo.create("cifar_resnet20", shortcut=shortcut), torch.randn(1, 3, 32, 32))
    assert macs["conv1"] == 32 * 32 * 16 * 3 * 9 == 442_368  # Table 2 layer 0: 0.44 M
    full = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]
    strided = ["layer2.0.conv1", "layer3.0.conv1"]
    for name in full:
        assert macs[name] == (1_179_648 if name in strided else 2_359_296), name  # 1.17 M / 2.35 M
    convs_total = macs["conv1"] + sum(macs[n] for n in full)
    assert convs_total == 40_550_400  # Table 2: 40.5 M; He et al.: 40.55 M
    projections = (16 * 16 * 32 * 16) + (8 * 8 * 64 * 32)  # 1x1 stride-2 convs of option B
    expected = convs_total + 64 * 10 + (projections if shortcut == "B" else 0)
    assert macs["Global"] == expected
    assert abs(macs["Global"] / 1e6 - 40.55) < (0.3 if shortcut == "B" else 0.01)


def test_option_a_shortcut_subsamples_and_zero_pads():
    sc = PadShortcut(stride=2, pad_before=8, pad_after=8)
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0
    model = pb.zoo.create("cifar_resnet20", shortcut="A")
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2


@pytest.mark.parametrize("kwargs,match", [({"shortcut": "C"}, "shortcut must be 'A'"),
                                          ({"foo": 1}, "accepts num_classes, shortcut, in_channels")])
def test_cifar_resnet_bad_args(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pb.zoo.create("cifar_resnet20", **kwargs)


def test_cifar_resnet_bad_depth():
    from pybench.zoo.cifar_resnet import cifar_resnet
    with pytest.raises(ValueError, match="depth must be 6n"):
        cifar_resnet(21)


# -------------------------------------------------------------------------------------------- vgg, mobilenet
def test_cifar_vgg16_layout():
    model = pb.zoo.create("cifar_vgg16", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert (model.fc1.in_features, model.fc1.out_features) == (512, 512)
    assert (model.classifier.in_features, model.classifier.out_features) == (512, 10)
    expected = sum(c.in_channels * c.out_channels * 9 + 2 * c.out_channels for c in convs) + 512 * 513 + 513 * 10
    assert n_params(model) == expected
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenet_v1_params_match_babel():
    model = pb.zoo.create("mobilenet_v1", num_classes=1000)
    assert n_params(model) == 4_231_976  # Babel / Keras MobileNet-224
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


# --------------------------------------------------------------------------------------------------- xor_mlp
def test_xor_mlp_shapes():
    model = pb.zoo.create("xor_mlp", hidden=10)
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (2, 10, 2)
    assert n_params(model) == 2 * 10 + 10 + 10 * 2 + 2
    assert model(torch.randn(5, 2)).shape == (5, 2)
    one = pb.zoo.create("xor_mlp", num_classes=1, hidden=3)
    assert one(torch.randn(5, 2)).shape == (5, 1)
    with pytest.raises(ValueError, match="outputs must be 1"):
        pb.zoo.create("xor_mlp", num_classes=3)
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        pb.zoo.create("xor_mlp", hidden=0)


# ------------------------------------------------------------------------------------------ rebuild contract
@pytest.mark.parametrize("name,kwargs", [("cifar_resnet20", {"shortcut": "A", "num_classes": 100}),
                                         ("cifar_vgg16", {"fc_width": 256}),
                                         ("mobilenet_v1", {"width_mult": 0.5, "num_classes": 10}),
                                         ("xor_mlp", {"hidden": 5}),
                                         ("resnet18", {"num_classes": 7}),
                                         ("googlenet", {"aux_logits": False, "init_weights": True})])
def test_spec_rebuilds_same_architecture(name, kwargs):
    model = pb.zoo.create(name, **kwargs)
    spec = json.loads(json.dumps(model.pybench_spec))  # JSON round trip, as pb.save stores it
    assert spec["name"] == name
    assert "num_classes" in spec["kwargs"]
    for k, v in kwargs.items():
        assert spec["kwargs"][k] == v
    again = pb.zoo.create(spec["name"], **spec["kwargs"])
    assert again.pybench_spec == model.pybench_spec
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_spec_records_defaults_of_our_models():
    spec = pb.zoo.create("cifar_resnet56").pybench_spec
    assert spec == {"name": "cifar_resnet56", "kwargs": {"num_classes": 10, "shortcut": "B", "in_channels": 3}}


def test_non_json_kwargs_are_refused():
    with pytest.raises(TypeError, match="JSON-serialisable"):
        pb.zoo.create("resnet18", norm_layer=nn.BatchNorm2d)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        pb.zoo.create("cifar_resnet20", num_classes=num_classes)


def test_torchvision_weights_enum_refused():
    with pytest.raises(ValueError, match="local path"):
        pb.zoo.create("resnet18", weights_backbone="DEFAULT")


# ------------------------------------------------------------------------------------------------- weights
def test_weights_round_trip_from_local_file(tmp_path):
    torch.manual_seed(0)
    src = pb.zoo.create("cifar_resnet20", num_classes=10)
    with torch.no_grad():  # make running stats differ from the defaults, so buffers are checked too
        src.train()(torch.randn(4, 3, 32, 32))
    path = tmp_path / "r20.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    dst = pb.zoo.create("cifar_resnet20", num_classes=10, weights=path)
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(src.eval()(x), dst.eval()(x), rtol=0, atol=0)
    assert dst.pybench_spec["weights"] == str(path)
    assert "weights" not in dst.pybench_spec["kwargs"]
    # a checkpoint dict holding the state dict works too
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    dst2 = pb.zoo.create("cifar_resnet20", weights=tmp_path / "ckpt.pt")
    assert torch.equal(dst2.fc.weight, src.fc.weight)


def test_weights_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*never downloads"):
        pb.zoo.create("cifar_resnet20", weights=tmp_path / "nope.pt")


def test_weights_mismatch_is_named(tmp_path):
    path = tmp_path / "r20_100.pt"
    torch.save(pb.zoo.create("cifar_resnet20", num_classes=100).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches.*fc\.weight: file \(100, 64\) vs model \(10, 64\)"):
        pb.zoo.create("cifar_resnet20", num_classes=10, weights=path)
    with pytest.raises(ValueError, match="missing .* keys"):
        pb.zoo.create("cifar_resnet20", shortcut="B", weights=_save_a(tmp_path))


def _save_a(tmp_path):
    path = tmp_path / "r20_a.pt"
    torch.save(pb.zoo.create("cifar_resnet20", shortcut="A").state_dict(), path)
    return path


def test_weights_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        pb.zoo.create("xor_mlp", weights=path)
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(ValueError, match="is not a weights file: torch.load cannot read it"):
        pb.zoo.create("xor_mlp", weights=tmp_path / "text.pt")


# -------------------------------------------------------------------------------------------- zoo-wide (slow)
@pytest.fixture
def one_thread():
    """One thread: the machine is shared, and these tiny inputs gain nothing from two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_input(name: str) -> tuple[dict, torch.Tensor]:
    """Extra kwargs and the smallest convenient input each architecture allows, to keep the sweep fast."""
    if name == "xor_mlp":
        return {}, torch.randn(2, 2)
    if name.startswith("vit_"):  # ViTs fix their image size at construction
        size = 28 if name == "vit_h_14" else 32
        return {"image_size": size}, torch.randn(1, 3, size, size)
    size = {"inception_v3": 75, "maxvit_t": 224}.get(name, 32 if name.startswith("cifar") else 64)
    return {}, torch.randn(1, 3, size, size)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", pb.zoo.names())
def test_every_model_creates_and_runs(name, one_thread):
    kwargs, x = small_input(name)
    num_classes = 2 if name == "xor_mlp" else 7
    model = pb.zoo.create(name, num_classes=num_classes, **kwargs).eval()
    with torch.no_grad():
        y = model(x)
    assert y.shape == (x.shape[0], num_classes)
    assert torch.isfinite(y).all()
    assert model.pybench_spec["kwargs"]["num_classes"] == num_classes
    assert len(pb.zoo.input_size(name)) == (1 if name == "xor_mlp" else 3)
