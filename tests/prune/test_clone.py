"""pybench.prune.clone.clone_module: a deep copy of a module tree, as copy.deepcopy gives."""

from __future__ import annotations

import copy
import gc
import sys
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from pybench.prune import clone as _clone
from pybench.prune.clone import clone_module

IMPLS = ["c", "python"]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """Both walks: the C one (pybench._C.clone_module) and its Python reference."""
    if request.param == "python":
        monkeypatch.setattr(_clone, "_clone_c", None)
    elif _clone._clone_c is None:
        pytest.skip("pybench._C is not built")
    return request.param


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.again = self.conv  # the same module twice: one copy, referenced twice
        self.bn = nn.BatchNorm2d(4)
        self.gru = nn.GRU(4, 4)  # a class with its own __setstate__: copied by copy.deepcopy
        self.register_buffer("table", torch.arange(4.0))
        self.sizes = [1, 2, 3]
        self.config = {"a": [1, 2]}
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.again(x)) * self.scale[:, None, None]


def _assert_deep_copy(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
        assert sa[k].data_ptr() != sb[k].data_ptr() or sa[k].numel() == 0, f"{k} shares storage"
    for (na, ma), (nb, mb) in zip(a.named_modules(), b.named_modules(), strict=True):
        assert na == nb and ma is not mb
        assert type(ma) is type(mb) or isinstance(mb, torch.fx.GraphModule)  # deepcopy makes a class per copy
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and type(pa) is type(pb) and pa.requires_grad == pb.requires_grad


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "convnext_tiny", "vit_b_16"])
def test_torchvision_models_copy_like_deepcopy(name, impl):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    clone = clone_module(model)
    _assert_deep_copy(model, clone)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
        next(clone.parameters()).add_(1.0)  # the copy is independent of the original
    assert not torch.equal(next(clone.parameters()), next(model.parameters()))


def test_shared_modules_containers_hooks_and_fallbacks(impl):
    model = _Shared()
    calls = []
    model.bn.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    clone = clone_module(model)
    _assert_deep_copy(model, clone)
    assert clone.again is clone.conv and clone.conv is not model.conv
    assert clone.sizes == [1, 2, 3] and clone.sizes is not model.sizes
    assert clone.config == {"a": [1, 2]} and clone.config["a"] is not model.config["a"]
    assert clone.gru is not model.gru and clone.gru.weight_hh_l0 is not model.gru.weight_hh_l0
    clone(torch.randn(1, 3, 8, 8))
    assert calls == ["BatchNorm2d"]  # forward hooks are copied, as deepcopy does


def test_memo_replaces_tensors(impl):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    new_w = nn.Parameter(torch.zeros(4, 3, 3, 3))
    new_mean = torch.ones(4)
    clone = clone_module(model, {id(model[0].weight): new_w, id(model[1].running_mean): new_mean})
    assert clone[0].weight is new_w and clone[1].running_mean is new_mean
    assert clone[0].bias is not model[0].bias and torch.equal(clone[0].bias, model[0].bias)


def test_fx_graph_module_falls_back_to_deepcopy(impl):
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    clone = clone_module(gm)
    x = torch.randn(2, 3)
    torch.testing.assert_close(clone(x), gm(x))
    _assert_deep_copy(gm, clone)
    assert copy.deepcopy(gm).code == clone.code


class _Odd(nn.Module):
    """Attributes of every kind the walk distinguishes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.pair = (1, "a", None, 2.5, torch.float16)  # shared, like deepcopy's atomic tuples
        self.with_tensor = (1, torch.ones(2))  # deep-copied
        self.weights = [self.lin.weight]  # copied through the memo: the copy's own weight
        self.empty_list, self.empty_set, self.empty_dict = [], set(), {}
        self.nested = {"k": [1, 2], "t": (3,)}
        self.flag = True
        self.device = torch.device("cpu")


def _structure(m: nn.Module) -> list:
    out = []
    for name, mod in m.named_modules():
        out.append((name, type(mod).__name__, sorted(mod.__dict__)))
        for k, v in sorted(mod.__dict__.items()):
            if isinstance(v, (int, float, str, bool, type(None), tuple)) and not isinstance(v, torch.Tensor):
                out.append((name, k, repr(v)))
            elif isinstance(v, (list, set, dict)) and k not in ("_parameters", "_buffers", "_modules"):
                out.append((name, k, type(v).__name__, len(v)))
    return out


@pytest.mark.skipif(_clone._clone_c is None, reason="pybench._C is not built")
@pytest.mark.parametrize("build", [_Odd, _Shared, lambda: torchvision.models.get_model("mobilenet_v3_small")])
def test_c_walk_is_the_python_walk(build, monkeypatch):
    torch.manual_seed(0)
    model = build()
    model.lin.register_forward_pre_hook(lambda m, a: None) if isinstance(model, _Odd) else None
    memo_c, memo_py = {}, {}
    ours = clone_module(model, memo_c)
    monkeypatch.setattr(_clone, "_clone_c", None)
    ref = clone_module(model, memo_py)
    assert _structure(ours) == _structure(ref) == _structure(model)
    # the model's modules and tensors all copied, and filed in the memo under the same ids
    ids = {id(x) for x in [*model.modules(), *model.parameters(), *model.buffers()]}
    assert ids <= set(memo_c) and ids <= set(memo_py)
    walks = zip(model.named_modules(), ours.named_modules(), ref.named_modules(), strict=True)
    for (_, o), (_, a), (_, b) in walks:
        assert a.__dict__.keys() == b.__dict__.keys()
        for k, v in o.__dict__.items():  # shared with the original exactly where the reference shares
            assert (a.__dict__[k] is v) == (b.__dict__[k] is v), k
        assert len(a._forward_pre_hooks) == len(b._forward_pre_hooks) == len(o._forward_pre_hooks)
    if isinstance(model, _Odd):
        assert ours.pair is model.pair and ours.with_tensor is not model.with_tensor
        assert ours.weights[0] is ours.lin.weight and ours.empty_list is not model.empty_list
        assert ours.nested == model.nested and ours.nested["k"] is not model.nested["k"]
        assert ours.device is model.device and ours.flag is True


def test_unusual_layouts_take_the_python_walk(impl):
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    model[0]._parameters = OrderedDict(model[0]._parameters)  # not a plain dict
    clone = clone_module(model)
    assert type(clone[0]._parameters) is OrderedDict and clone[0].weight is not model[0].weight
    assert torch.equal(clone[0].weight, model[0].weight)


@pytest.mark.skipif(_clone._clone_c is None, reason="pybench._C is not built")
def test_c_walk_keeps_no_references():
    model = torchvision.models.get_model("resnet18")
    tag = "".join(["a", "unique", "tag"])  # a fresh str: only its holders count it
    model.layer1.tag = tag
    hooks = model.layer1._forward_hooks
    before = sys.getrefcount(tag), sys.getrefcount(hooks), sys.getrefcount(type(model))
    for _ in range(50):
        clone_module(model)
    gc.collect()
    assert (sys.getrefcount(tag), sys.getrefcount(hooks), sys.getrefcount(type(model))) == before


def test_modules_stay_plain_after_torch_compile_patched_module_setstate():
    """torch.compile replaces nn.Module.__setstate__ (generation tagging) once it runs: a plain module must still
    take the fast walk and share its immutable attributes, whatever ran before in the process."""
    compiled = torch.compile(lambda x: x + 1, backend="eager")
    compiled(torch.ones(2))

    class Fresh(nn.Module):  # a class the plain-cache has not seen
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.device = torch.device("cpu")

    model = Fresh()
    assert _clone._is_plain(Fresh)
    copied = clone_module(model)
    assert copied.device is model.device and copied.lin is not model.lin
