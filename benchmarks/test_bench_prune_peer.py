"""pybench vs Torch-Pruning 1.6.1 (DepGraph), side by side in one run, on the CPU.

    pytest benchmarks/test_bench_prune_peer.py --benchmark-only -s

Per model (random init, 1x3x224x224, ratio 0.5, local L1 magnitude, classifier outputs kept):
- pybench: trace + score + plan + apply (a new pruned model; the input model untouched);
- Torch-Pruning: DependencyGraph build + importance + step of a ``MagnitudePruner`` (p=1) on a fresh deep copy
  (the copy is made outside the timed region; Torch-Pruning prunes in place).
Median of ``ROUNDS`` warm runs each, interleaved. Target: pybench >= 5x faster per model. The parameter counts
of both pruned models are reported (they agree where both prune the same groups).
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import pybench as pb

warnings.filterwarnings("ignore")
tp = pytest.importorskip("torch_pruning", reason="install the peers extra: pip install -e .[peers]")

MODELS = ["resnet50", "vgg16", "mobilenet_v2", "densenet121", "efficientnet_b0", "regnet_y_400mf"]
ROUNDS = 5
TARGET = 5.0


def _pybench(model: nn.Module, x: torch.Tensor) -> nn.Module:
    graph = pb.trace(model, x)
    plan = pb.plan(graph, pb.score(model, graph, "l1"), ratio=0.5)
    return pb.apply(model, plan)


def _torch_pruning(model: nn.Module, x: torch.Tensor) -> nn.Module:
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[classifier])
    pruner.step()
    return model


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_prune_vs_torch_pruning(benchmark, name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    ours, peer = [], []
    # Torch-Pruning traces with autograd, so neither runs under no_grad
    pruned = _pybench(model, x)  # warm-up both
    theirs = _torch_pruning(copy.deepcopy(model), x)
    for _ in range(ROUNDS):
        t = time.perf_counter()
        _pybench(model, x)
        ours.append(time.perf_counter() - t)
        fresh = copy.deepcopy(model)
        t = time.perf_counter()
        _torch_pruning(fresh, x)
        peer.append(time.perf_counter() - t)
        del fresh
    benchmark.pedantic(_pybench, args=(model, x), rounds=1, iterations=1)
    ours_s, peer_s = statistics.median(ours), statistics.median(peer)
    ratio = peer_s / ours_s
    benchmark.extra_info.update({
        "pybench_s": round(ours_s, 4), "torch_pruning_s": round(peer_s, 4), "speedup": round(ratio, 2),
        "params_dense": _params(model), "params_pybench": _params(pruned), "params_torch_pruning": _params(theirs)})
    print(f"\n{name}: pybench {ours_s:.3f} s, Torch-Pruning {peer_s:.3f} s, speedup {ratio:.1f}x; params "
          f"{_params(model):,} -> pybench {_params(pruned):,} / Torch-Pruning {_params(theirs):,}")
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    assert ratio >= TARGET, f"{name}: pybench is {ratio:.1f}x faster than Torch-Pruning, target {TARGET}x"
