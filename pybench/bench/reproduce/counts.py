"""Martineau's AlexNet table: parameters and FLOPs left after pruning 10 / 30 / 50 / 75 % of the conv filters.

The poster's AlexNet has 57.0 M parameters: torchvision's AlexNet with a 10-class head (57,044,810), so the table is
counted on that model at 224 x 224. The poster prunes convolutional filters only (``layers=["Conv2d"]``); the
classifier's hidden widths stay, but its first layer loses the inputs the last conv no longer produces. Counts do
not depend on the weights for a per-layer ratio (``local``); a global ranking (``global``, activation mean on
random inputs, as the poster's criterion) does, so each seed draws new weights and inputs. MACs are counted by
``torch.utils.flop_counter``; the poster's FLOPs column (0.815 G dense) uses another convention, so the
reductions are compared, not the absolute figures.
"""

from __future__ import annotations

import platform
import time
import warnings
from typing import Any

import torch

from pybench.bench.reproduce import REPRODUCTIONS
from pybench.bench.reproduce.table import Reproduction

LEVELS = (0.1, 0.3, 0.5, 0.75)
# the poster's table: (params removed %, FLOPs removed %) at each level
PAPER = {0.1: (3.86, 18.4), 0.3: (17.0, 45.3), 0.5: (34.0, 65.3), 0.75: (52.6, 83.7)}
X = torch.zeros(1, 3, 224, 224)


def _counts(model: torch.nn.Module) -> tuple[int, int]:
    import pybench as pb

    f = pb.measure.flops(model, X)
    return f.params, f.total_macs


def _one_seed(seed: int) -> dict[str, dict[str, Any]]:
    import pybench as pb

    torch.manual_seed(seed)
    dense = pb.zoo.create("alexnet", num_classes=10).eval()
    p0, m0 = _counts(dense)
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(8, 3, 224, 224, generator=g), torch.randint(0, 10, (8,), generator=g))]
    out = {"dense": {"params": p0, "macs": m0, "params_removed_pct": 0.0, "macs_removed_pct": 0.0}}
    for level in LEVELS:
        for scope, criterion in (("local", "l1"), ("global", "act_mean")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # training-mode dropout: values only, the trace is the same
                pruned, _ = pb.prune(dense, X, ratio=level, criterion=criterion, scope=scope, data=batches,
                                     layers=("Conv2d",))
            p, m = _counts(pruned)
            out[f"{scope} {criterion}, conv filters {level:.0%}"] = {
                "params": p, "macs": m, "params_removed_pct": 100 * (1 - p / p0),
                "macs_removed_pct": 100 * (1 - m / m0),
                "conv_widths": "/".join(str(c.out_channels) for c in pruned.modules()
                                        if isinstance(c, torch.nn.Conv2d))}
    return out


@REPRODUCTIONS.register("alexnet-counts")
def alexnet_counts(seeds: int, progress: bool = False) -> Reproduction:
    """Martineau's AlexNet parameters / FLOPs table, pybench's counts beside the poster's."""
    t0 = time.perf_counter()
    methods: dict[str, list[dict[str, Any]]] = {}
    for seed in range(seeds):
        for name, row in _one_seed(seed).items():
            methods.setdefault(name, []).append({"seed": seed, **row})
        if progress:
            print(f"alexnet-counts: seed {seed + 1}/{seeds} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    paper = {"dense": "57.0 M params, 0.815 G FLOPs"}
    for level, (pp, fp) in PAPER.items():
        for scope in ("local l1", "global act_mean"):
            paper[f"{scope}, conv filters {level:.0%}"] = f"params -{pp:g} %, FLOPs -{fp:g} %"
    protocol = [
        "Martineau, \"Pruning Filters in CNNs\", Performances table: torchvision AlexNet with a 10-class head "
        "(57,044,810 parameters, the poster's 57.0 M), 224 x 224 input, conv filters pruned at 10 / 30 / 50 / 75 % "
        "(`layers = [\"Conv2d\"]`: the classifier keeps its widths, its first layer loses the inputs of the filters "
        "the last conv drops). `local l1`: that fraction of each conv layer; `global act_mean`: that fraction of "
        "all conv filters in one ranking of activation means (Wang et al.'s mean normalisation) on a random batch. "
        "MACs by torch.utils.flop_counter (the poster's FLOPs count differs in convention: compare the reductions). "
        "Counts only: no training; seeds draw the weights and the batch."]
    names = list(methods)
    return Reproduction(
        name="alexnet-counts", title="Martineau: AlexNet parameters and FLOPs after pruning conv filters",
        protocol=protocol, methods=methods, paper=paper, paper_column="poster", compare_on="params_removed_pct",
        baseline="dense", references=tuple(names), seconds=time.perf_counter() - t0,
        environment={"torch": torch.__version__, "python": platform.python_version(),
                     "machine": platform.machine()})
