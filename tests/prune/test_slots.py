"""pybench.prune.graph.slots and what reads it (members, plan, slot_keep, weight scores, module lookup) against the
plain per-slot loops they replace: the same members, kept indices, plans and scores, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import pybench as pb
from pybench import ops
from pybench.prune import criteria, surgery
from pybench.prune.graph import Member
from pybench.prune.graph import slots as _slots


class ConcatInResidual(nn.Module):
    """Two branches concatenated and added to a skip: each branch holds part of the residual group (partial
    members), and a grouped conv splits its group into blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 6, 1)
        self.b = nn.Conv2d(16, 10, 1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.a(x), self.b(x)], 1) + x
        y = self.bn(self.g(y)) + y
        return self.head(y.mean((2, 3)))


def _graphs():
    torch.manual_seed(0)
    cases = [(ConcatInResidual().eval(), torch.randn(1, 3, 8, 8))]
    for name in ["resnet18", "regnet_y_400mf", "densenet121"]:
        cases.append((torchvision.models.get_model(name, weights=None, num_classes=10).eval(),
                      torch.randn(1, 3, 64, 64)))
    return [(m, pb.trace(m, x)) for m, x in cases]


GRAPHS = _graphs()
IDS = ["concat_in_residual", "resnet18", "regnet_y_400mf", "densenet121"]


# -- the per-slot loops these replace ---------------------------------------------------------------------------
def _members_loop(graph) -> list[list[Member]]:
    members: list[list[Member]] = [[] for _ in graph.groups]
    for (kind, name, role), lab in graph.slots.items():
        grp = np.where(lab >= 0, graph.unit_group[np.maximum(lab, 0)], -1)
        valid = grp[grp >= 0]
        for gi in np.unique(valid):
            unit = np.where(grp == gi, graph.unit_index[np.maximum(lab, 0)], -1)
            mtype = graph.module_types.get(name, "Parameter") if kind == "module" else "Parameter"
            members[int(gi)].append(Member(name, kind, role, mtype, unit))
    return members


def _slot_keep_loop(plan) -> dict[tuple, np.ndarray]:
    removed = np.zeros(plan.graph.n_units, dtype=bool)
    for g, kept in plan.keep.items():
        mask = np.ones(g.size, dtype=bool)
        mask[kept.numpy()] = False
        removed[g.comps[mask]] = True
    out = {}
    for key, lab in plan.graph.slots.items():
        rm = np.zeros(lab.size, dtype=bool)
        rm[lab >= 0] = removed[lab[lab >= 0]]
        if rm.any():
            out[key] = np.nonzero(~rm)[0]
    return out


def _choose_loop(g, s: np.ndarray, keep: int) -> np.ndarray:
    if keep >= g.size:
        return np.arange(g.size)
    if g.blocks > 1:
        per = keep // g.blocks
        chosen = []
        for b in range(g.blocks):
            idx = np.nonzero(g.block_of == b)[0]
            chosen.append(idx[np.argsort(-s[idx], kind="stable")[:per]])
        return np.sort(np.concatenate(chosen))
    best = []
    for mb in g.members:
        if mb.kind == "module" and mb.role != "out":
            continue
        seen = np.zeros(g.size, dtype=bool)
        seen[mb.unit_of_index[mb.unit_of_index >= 0]] = True
        if not seen.all():
            units = np.flatnonzero(seen)
            best.append(units[np.argmax(s[units])])
    order = np.argsort(-s, kind="stable")
    if best:
        chosen = np.zeros(g.size, dtype=bool)
        chosen[np.unique(best)] = True
        for i in order:
            if chosen.sum() >= keep:
                break
            chosen[i] = True
        return np.nonzero(chosen)[0]
    return np.sort(order[:keep])


# -- tests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,graph", GRAPHS, ids=IDS)
def test_members_are_those_of_the_per_slot_loop(model, graph):
    got, want = graph._members(), _members_loop(graph)
    assert len(got) == len(want) == len(graph.groups)
    for a, b in zip(got, want, strict=True):
        assert [(m.name, m.kind, m.role, m.module_type) for m in a] == [(m.name, m.kind, m.role, m.module_type)
                                                                          for m in b]
        for ma, mb in zip(a, b, strict=True):
            assert ma.unit_of_index.dtype == np.int64 and np.array_equal(ma.unit_of_index, mb.unit_of_index)


def test_partial_members_and_blocks_are_present():
    graph = GRAPHS[0][1]  # the cases the vectorised paths must get right are really there
    assert any(_slots.partial_units(graph)[g.index] for g in graph.groups)
    assert any(g.blocks > 1 for g in graph.groups)
    densenet = GRAPHS[3][1]
    assert (_slots.table(densenet).slot_group == -2).any()  # a slot spread over several groups


@pytest.mark.parametrize("model,graph", GRAPHS, ids=IDS)
@pytest.mark.parametrize("ratio,round_to", [(0.3, 1), (0.5, 1), (0.7, 4), (0.9, 1)])
def test_plan_slot_keep_and_removed_units_match_the_loops(model, graph, ratio, round_to):
    rng = np.random.default_rng(int(ratio * 10))
    scores = {g: torch.from_numpy(rng.integers(0, 5, g.size).astype(np.float64)) for g in graph.groups}  # ties
    plan = pb.plan(graph, scores, ratio=ratio, round_to=round_to)
    for g, kept in plan.keep.items():
        k = int(kept.numel())
        want = _choose_loop(g, scores[g].numpy(), k)
        assert kept.dtype == torch.int64 and np.array_equal(kept.numpy(), want), g
    want = _slot_keep_loop(plan)
    got = surgery.slot_keep(plan)
    assert list(got) == list(want)
    for key, idx in got.items():
        assert idx.dtype == torch.int64 and np.array_equal(idx.numpy(), want[key]), key


def test_removed_units_with_numpy_style_indices():
    graph = GRAPHS[1][1]
    plan = pb.plan(graph, pb.score(GRAPHS[1][0], graph, "l1"), ratio=0.5)
    fast = plan.removed_units()
    g = next(iter(plan.keep))
    plan.keep[g] = plan.keep[g] - g.size  # negative indices: numpy counts from the end
    assert np.array_equal(plan.removed_units(), fast)


@pytest.mark.parametrize("model,graph", GRAPHS, ids=IDS)
@pytest.mark.parametrize("criterion", ["l1", "l2", "aaws", "bn_scale"])
def test_weight_scores_are_the_per_slot_sums(model, graph, criterion):
    mods = dict(model.named_modules())
    total = np.zeros(graph.n_units)
    for (kind, name, role), lab in graph.slots.items():
        m = mods[name]
        if kind != "module" or role != "out":
            continue
        if criterion == "bn_scale":
            if not isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) or m.weight is None:
                continue
            v = m.weight.detach().abs()
        elif not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        else:
            st = ops.channel_stats(m.weight.detach(), 0)
            v = {"l1": st[:, 0], "l2": st[:, 1].sqrt(), "aaws": st[:, 0] / m.weight[0].numel()}[criterion]
        np.add.at(total, lab[lab >= 0], v.double().numpy()[lab >= 0])
    scores = pb.score(model, graph, criterion)
    for g in graph.groups:
        assert np.array_equal(scores[g].numpy(), total[g.comps]), g


def test_submodules_are_get_submodule():
    model = GRAPHS[3][0]
    names = [n for n, _ in model.named_modules()]
    found = _slots.submodules(model, names[::-1])
    assert list(found) == names[::-1]
    assert all(found[n] is model.get_submodule(n) for n in names)
    with pytest.raises(ValueError, match="has no module .features.nope. that the graph names"):
        _slots.submodules(model, ["features.nope"])


def test_graph_without_slots():
    graph = pb.trace(nn.Sequential(nn.Flatten(), nn.Identity()), torch.randn(1, 4))
    assert graph.groups == [] and _slots.kept_indices(graph, np.zeros(graph.n_units, bool)) == {}
    assert criteria.CRITERIA["l1"](nn.Sequential(nn.Flatten(), nn.Identity()), graph).shape == (graph.n_units,)
