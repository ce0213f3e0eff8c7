"""Latency tables (data, prediction, checks, storage) and latency-budget plans, on tables with known costs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import pybench as pb
from pybench.prune.lut import LatencyTable, LayerCost, LayerDim, LutMismatchError, graph_signature, joint_ratio


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


X = torch.randn(1, 3, 16, 16)


def _dim(graph, name: str, role: str, step: int) -> LayerDim | None:
    lab = graph.slots.get(("module", name, role))
    if lab is None:
        return None
    grp = np.where(lab >= 0, graph.unit_group[np.maximum(lab, 0)], -1)
    ids, counts = np.unique(grp[grp >= 0], return_counts=True)
    if not ids.size:
        return None
    n = lab.size
    cs = sorted({*range(step, n, step), 1, n})
    # a staircase: cost as if padded up to the next multiple of ``step``
    return LayerDim(n, int((grp < 0).sum()), dict(zip(ids.tolist(), counts.tolist(), strict=True)), cs,
                    [min(-(-c // step) * step, n) / n for c in cs])


def _table(model: nn.Module, step: int = 8, rest_ms: float = 0.0) -> tuple[LatencyTable, object]:
    """A table whose every layer costs its MACs' share, in steps of ``step`` channels."""
    graph = pb.trace(model, X)
    modules = dict(model.named_modules())
    layers = []
    for name in graph.module_types:
        m = modules[name]
        tied = not isinstance(m, (nn.Conv2d, nn.Linear))
        out, inp = _dim(graph, name, "out", step), None if tied else _dim(graph, name, "in", step)
        ms = float(m.weight.numel()) / 1000 if isinstance(m, (nn.Conv2d, nn.Linear)) else 0.01
        layers.append(LayerCost(name, type(m).__name__, ms, 256, out, inp, tied))
    fp, sizes = graph_signature(graph)
    key = {"device": "cpu", "backend": "eager", "dtype": "float32", "batch_size": 1, "pybench": pb.__version__,
           "torch": torch.__version__}
    total = sum(lay.ms for lay in layers)
    return LatencyTable(key, {"fingerprint": fp, "groups": sizes}, total + rest_ms, total, layers, rest_ms), graph


def test_prediction_is_one_at_dense_and_follows_the_steps():
    table, graph = _table(_net())
    assert table.predict_ratio({}) == pytest.approx(1.0)
    g = next(i for i, n in enumerate(table.model["groups"]) if n == 64)
    # 57..64 kept channels pad to 64: no saving; 56 is one step down
    assert table.predict_ratio({g: 57}) == pytest.approx(1.0)
    assert table.predict_ratio({g: 56}) < table.predict_ratio({g: 57})
    assert table.predict_ratio({g: 49}) == pytest.approx(table.predict_ratio({g: 56}))


def test_joint_ratio_is_the_product_without_a_floor_and_keeps_the_floor():
    assert joint_ratio(0.5, 0.5, 0.0) == pytest.approx(0.25)
    assert joint_ratio(1.0, 0.4, 0.3) == pytest.approx(0.4)  # one count cut: that sweep's own ratio
    assert joint_ratio(0.3, 0.3, 0.3) == pytest.approx(0.3)  # both at the floor: the fixed cost stays


@pytest.mark.parametrize("budget", [0.8, 0.5, 0.3])
def test_budget_plan_meets_its_prediction_and_snaps_to_steps(budget):
    model = _net()
    table, graph = _table(model)
    scores = pb.score(model, graph, "l1")
    plan = pb.plan(graph, scores, latency_budget=budget, lut=table)
    counts = {g.index: int(k.numel()) for g, k in plan.keep.items()}
    assert plan.predicted_latency == pytest.approx(table.predict_ratio(counts))
    assert plan.predicted_latency <= budget + 1e-9
    assert plan.latency_budget == budget
    assert plan.predicted_ms == pytest.approx(plan.predicted_latency * table.dense_ms)
    for g, c in counts.items():  # a fast step: a multiple of 8 or the whole group (or the least count)
        assert c % 8 == 0 or c == graph.groups[g].size or c == 1
    pruned = pb.apply(model, plan)  # a real plan: apply == mask
    torch.testing.assert_close(pruned(X), pb.mask(model, plan)(X), rtol=1e-4, atol=1e-5)


def test_budget_plan_keeps_more_importance_than_uniform_at_equal_prediction():
    model = _net()
    table, graph = _table(model)
    scores = pb.score(model, graph, "l1")
    plan = pb.plan(graph, scores, latency_budget=0.5, lut=table)
    uniform = next(p for r in np.arange(0.05, 0.95, 0.01)
                   if (p := pb.plan(graph, scores, ratio=float(r))) and
                   table.predict_ratio({g.index: int(k.numel()) for g, k in p.keep.items()}) <= 0.5)
    kept = {id(p): sum(int(k.numel()) for k in p.keep.values()) for p in (plan, uniform)}
    assert kept[id(plan)] >= kept[id(uniform)]


def test_min_channels_ignore_and_round_to_hold():
    model = _net()
    table, graph = _table(model, step=4)
    scores = pb.score(model, graph, "l1")
    plan = pb.plan(graph, scores, latency_budget=0.4, lut=table, min_channels=8, ignore=["0"], round_to=4)
    assert all(k.numel() >= 8 and k.numel() % 4 == 0 for k in plan.keep.values())
    assert graph.group_of("0") not in plan.keep and graph.group_of("0") in plan.ignored


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, "0.5", True])
def test_bad_budget_is_refused(bad):
    model = _net()
    table, graph = _table(model)
    with pytest.raises(ValueError, match="latency_budget must be a fraction"):
        pb.plan(graph, pb.score(model, graph, "l1"), latency_budget=bad, lut=table)


def test_unreachable_budget_names_the_least_reachable():
    model = _net()
    table, graph = _table(model, rest_ms=100.0)  # a big fixed cost: pruning cannot go far below dense
    least = table.predict_ratio(dict.fromkeys(range(len(graph.groups)), 8))
    with pytest.raises(ValueError, match="cannot be met.*ask for at least") as e:
        pb.plan(graph, pb.score(model, graph, "l1"), latency_budget=0.5, lut=table, min_channels=8)
    assert f"{least:.3f}" in str(e.value)


def test_budget_needs_a_table_and_a_table_needs_a_budget():
    model = _net()
    table, graph = _table(model)
    scores = pb.score(model, graph, "l1")
    with pytest.raises(TypeError, match="needs lut="):
        pb.plan(graph, scores, latency_budget=0.5)
    with pytest.raises(ValueError, match="only used with latency_budget"):
        pb.plan(graph, scores, ratio=0.5, lut=table)


def test_table_of_another_model_or_target_is_refused():
    table, _ = _table(_net())
    other = nn.Sequential(nn.Conv2d(3, 48, 3), nn.ReLU(), nn.Conv2d(48, 8, 1)).eval()
    graph = pb.trace(other, X)
    with pytest.raises(LutMismatchError, match="another model"):
        pb.plan(graph, pb.score(other, graph, "l1"), latency_budget=0.5, lut=table)
    with pytest.raises(LutMismatchError, match="backend='eager', not 'onnxruntime'"):
        table.check(backend="onnxruntime")
    with pytest.raises(LutMismatchError, match="batch_size=1, not 64"):
        table.check(batch_size=64)
    table.check(device="cpu", dtype="float32", batch_size=1)  # its own key passes


def test_pb_prune_takes_a_budget():
    model = _net()
    table, _ = _table(model)
    pruned, plan = pb.prune(model, X, criterion="l1", latency_budget=0.5, lut=table)
    assert plan.predicted_latency <= 0.5
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_save_load_roundtrip_and_hostile_files(tmp_path):
    table, graph = _table(_net())
    path = tmp_path / "t.json"
    table.save(path)
    back = LatencyTable.load(path)
    counts = {0: 9, 1: 17}
    assert back.predict_ratio(counts) == pytest.approx(table.predict_ratio(counts))
    back.check(graph)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    d = json.loads(path.read_text())
    for broken, match in [({**d, "format": "x"}, "not a pybench latency table"),
                          ({**d, "dense_ms": "__import__('os')"}, "malformed"),
                          ({**d, "layers": [{**d["layers"][0], "ms": -1}]}, "malformed"),
                          ({**d, "key": {"device": "cpu"}}, "malformed")]:
        (tmp_path / "b.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=match):
            LatencyTable.load(tmp_path / "b.json")
    with pytest.raises(FileNotFoundError, match="pybench lut"):
        LatencyTable.load(tmp_path / "missing.json")


def test_budget_plan_honours_max_ratio_and_names_the_least_reachable_budget():
    model = _net()
    table, graph = _table(model)
    scores = pb.score(model, graph, "l1")
    free = pb.plan(graph, scores, latency_budget=0.3, lut=table)
    sizes = {g.index: g.size for g in graph.groups}
    assert any(k.numel() < sizes[g.index] / 2 for g, k in free.keep.items())  # uncapped, some group is thinned
    capped = pb.plan(graph, scores, latency_budget=0.6, lut=table, max_ratio=0.5)
    assert all(k.numel() >= sizes[g.index] / 2 for g, k in capped.keep.items())
    with pytest.raises(ValueError, match="ask for at least"):
        pb.plan(graph, scores, latency_budget=0.05, lut=table, max_ratio=0.5)
