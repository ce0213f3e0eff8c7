"""``layers=``: only the named layers choose filters (Martineau prunes conv filters, never a Linear's outputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import pybench as pb
from pybench.bench import suite as S
from pybench.prune import schedules


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 20), nn.ReLU(),
                         nn.Linear(20, 5)).eval()


X = torch.randn(2, 3, 8, 8)


def _widths(m: nn.Module) -> tuple[list[int], list[int]]:
    return ([c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)],
            [c.in_features for c in m.modules() if isinstance(c, nn.Linear)]
            + [c.out_features for c in m.modules() if isinstance(c, nn.Linear)])


@pytest.mark.parametrize("layers", [("Conv2d",), ("0", "2"), "Conv2d"])
def test_conv_only_keeps_linear_outputs_and_shrinks_their_inputs(layers):
    net = _net()
    pruned, plan = pb.prune(net, X, ratio=0.5, layers=layers)
    convs, linear = _widths(pruned)
    assert convs == [8, 4] and linear == [16, 20, 20, 5]  # the hidden Linear keeps 20 outputs, loses 16 inputs
    assert torch.allclose(pruned(X), pb.mask(net, plan)(X), atol=1e-5)
    everything, _ = pb.prune(net, X, ratio=0.5)
    assert _widths(everything)[1] == [16, 10, 10, 5]  # without layers= the hidden Linear is pruned too


def test_a_group_with_any_producer_outside_layers_stays_whole():
    net = _net()
    _, plan = pb.prune(net, X, ratio=0.5, layers=("0",))  # only the first conv chooses
    assert _widths(pb.apply(net, plan))[0] == [8, 8]


def test_unknown_layer_names_are_refused_with_the_graphs_types():
    with pytest.raises(ValueError, match=r"layers names 'Conv3d'.*its types: Conv2d, Linear"):
        pb.prune(_net(), X, layers=("Conv3d",))


def test_schedules_and_suites_pass_layers_on():
    model, hist = schedules.iterative(_net(), X, 0.5, steps=2, criterion="l1", fine_tune_epochs=0,
                                      layers=("Conv2d",), progress=False)
    assert _widths(model)[1][1:3] == [20, 20]
    text = ('[suite]\nname = "n"\n[matrix]\nmodels = ["xor_mlp"]\nlevels = [0, 0.5]\n'
            '[prune]\nlayers = ["Conv2d"]\n')
    cells = [c for c in S.expand(S.loads(text, "n.toml")) if c.level > 0]
    assert cells and cells[0].prune.layers == ("Conv2d",)


def test_max_ratio_caps_every_group_in_local_global_and_budget_plans():
    net = _net()
    graph = pb.trace(net, X)
    scores = pb.score(net, graph, "l1")
    sizes = {g.index: g.size for g in graph.groups}
    for kw in ({"ratio": 0.9}, {"ratio": 0.6, "scope": "global"}):
        capped = pb.plan(graph, scores, max_ratio=0.5, **kw)
        assert all(k.numel() >= sizes[g.index] // 2 for g, k in capped.keep.items()), kw
        free = pb.plan(graph, scores, **kw)
        assert any(k.numel() < sizes[g.index] // 2 for g, k in free.keep.items()), kw  # the cap did something
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_ratio must be a fraction in"):
            pb.plan(graph, scores, ratio=0.5, max_ratio=bad)


def test_digits_folds_test_every_image_once_per_seed():
    from pybench import data

    seen = []
    for fold in range(3):
        s = data.digits(seed=4, size=8, folds=3, fold=fold)
        assert len(s.train) + len(s.val) + len(s.test) == 1797
        seen += [tuple(x.flatten().tolist()) + (int(y),) for x, y in s.test]
    assert len(seen) == 1797  # the three test folds partition the set
    with pytest.raises(ValueError, match="folds >= 2 and 0 <= fold < folds"):
        data.digits(folds=3, fold=3)
