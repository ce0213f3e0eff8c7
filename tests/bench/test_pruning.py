"""The harness prunes through the engine's one one-shot path: a suite's one_shot cell is pb.prune with the cell's
settings, normalize_by included."""

from __future__ import annotations

import torch
import torch.nn as nn

import pybench as pb
from pybench.bench import suite as S
from pybench.bench.config import PruneSettings
from pybench.bench.pruning import prune_with


def _skewed_net() -> nn.Module:
    """Two prunable groups whose L1 scores are spread differently: conv1's filters score 1, 2, ..., 8, conv2's all
    3. Normalised by the mean, conv1's four lowest fall under conv2's; by the max, seven of them do."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        for k in range(8):
            net[0].weight[k].fill_((k + 1) / net[0].weight[k].numel())
            net[2].weight[k].fill_(3 / net[2].weight[k].numel())
    return net


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_one_shot_cell_honours_normalize_by_as_pb_prune_does():
    net, x = _skewed_net(), torch.randn(1, 3, 8, 8)
    by = {}
    for norm in ("mean", "max"):
        settings = PruneSettings(scope="global", schedule_options={"normalize_by": norm})
        ours = prune_with(net, x, criterion="l1", schedule="one_shot", level=0.5, settings=settings)
        engine, _ = pb.prune(net, x, ratio=0.5, criterion="l1", scope="global", normalize_by=norm)
        assert _widths(ours) == _widths(engine)
        assert torch.equal(ours(x), engine(x))
        by[norm] = _widths(ours)
    assert by["mean"][:2] == [4, 4] and by["max"][0] < 4, by  # the option reaches the plan


def test_suite_one_shot_options_reach_the_cell():
    text = ('[suite]\nname = "n"\n[matrix]\nmodels = ["xor_mlp"]\nlevels = [0, 0.5]\nschedules = ["one_shot"]\n'
            '[prune]\nscope = "global"\nschedule_options = { one_shot = { normalize_by = "max" } }\n')
    cells = S.expand(S.loads(text, "n.toml"))
    pruned = [c for c in cells if c.level > 0]
    assert pruned and all(c.prune.schedule_options == {"normalize_by": "max"} for c in pruned)
    assert all(c.prune is None for c in cells if c.level == 0)
