"""Fused ops vs eager PyTorch (issue 2's targets), as ratios measured in one run.

    pytest benchmarks/test_bench_ops.py --benchmark-only            # CPU
    pytest benchmarks/test_bench_ops.py --benchmark-only --device cuda   # GPU, when one is present

Targets: channel_stats >= 5x eager, activation_stats >= 10x, channel_gather >= 1.5x; on tensors of 100 MB and more
the stats ops read at >= 50 % of the sum bandwidth measured in the same run (>= 85 % of copy bandwidth on a GPU).
"""

from __future__ import annotations

import pytest
import torch

from pybench.bench import opsbench

BIG_MB = 100


@pytest.fixture(scope="module")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device(name)


@pytest.fixture(scope="module")
def bandwidth(device) -> dict[str, float]:
    return opsbench.bandwidth(device)


@pytest.mark.parametrize("case", opsbench.cases(), ids=lambda c: f"{c.op}[{c.layer}]")
def test_fused_vs_eager(case, device, bandwidth, benchmark):
    row = opsbench.run(device, repeats=5, selected=[case])[0]
    args = case.make(device)
    benchmark.pedantic(lambda: case.fused(**args), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(row.to_dict())
    benchmark.extra_info.update(bandwidth)
    assert row.ratio >= case.target_ratio, f"{case.op} {case.layer}: {row.ratio:.1f}x eager < {case.target_ratio}x"
    if case.op != "channel_gather" and row.mbytes >= BIG_MB:
        reference, share = ("copy_gbs", 0.85) if device.type == "cuda" else ("sum_gbs", 0.5)
        assert row.fused_gbs >= share * bandwidth[reference], (
            f"{case.op} {case.layer}: {row.fused_gbs:.1f} GB/s < {share:.0%} of {reference} "
            f"{bandwidth[reference]:.1f} GB/s")
