"""Data-driven criteria speed targets (issue 4), as ratios measured in one run on cifar_resnet56.

    pytest benchmarks/test_bench_criteria.py --benchmark-only -s

- LFE of one group with batched masks + prefix reuse >= 5x faster than one full forward per mask, with the same
  importances (float tolerance). Measured for a late group (layer3.4.conv1's filters: the prefix is most of the
  network) with the target, and for a middle group (layer2.4.conv1) reported without one.
- Activation-criteria collection (all groups, one pass) <= 1.3x a plain no-grad pass over the same loader.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pybench as pb
from pybench.prune.criteria import lfe

warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*reference.*")


@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    m = pb.zoo.create("cifar_resnet56", num_classes=10).eval()
    g = pb.trace(m, torch.randn(1, 3, 32, 32))
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        y = m(x).argmax(1)  # labels the dense net gets right, so masks move the loss
    return m, g, x, y


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


@pytest.mark.parametrize("producer,target", [("layer3.4.conv1", 5.0), ("layer2.4.conv1", None)])
def test_lfe_batched_prefix_reuse_vs_full_forward_per_mask(resnet56, producer, target, benchmark):
    m, g, x, y = resnet56
    grp = g.group_of(producer)
    data = DataLoader(TensorDataset(x, y), batch_size=16)
    kw = {"n_masks": 48, "seed": 0}  # fewer than 10 x N masks: the ratio is per mask, the baseline is slow
    ref, t_ref = _timed(lambda: lfe.lfe_group(m, g, grp, data, batched=False, **kw))
    fast, t_fast = _timed(lambda: lfe.lfe_group(m, g, grp, data, **kw))
    fast2 = benchmark.pedantic(lambda: lfe.lfe_group(m, g, grp, data, **kw), rounds=1, warmup_rounds=0)
    t_fast = min(t_fast, benchmark.stats.stats.min)
    ratio = t_ref / t_fast
    benchmark.extra_info.update(group=producer, size=grp.size, masks=kw["n_masks"], batch=16,
                                per_mask_s=t_ref, batched_s=t_fast, ratio=ratio)
    print(f"\nlfe {producer} ({grp.size} filters, {kw['n_masks']} masks, batch 16): one forward per mask "
          f"{t_ref:.2f} s, batched + prefix reuse {t_fast:.2f} s: {ratio:.1f}x")
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast2, fast)
    if target is not None:
        assert ratio >= target, f"lfe batched {ratio:.1f}x < {target}x the per-mask forward"


def test_activation_collection_vs_plain_pass(resnet56, benchmark):
    m, g, _, _ = resnet56
    torch.manual_seed(1)
    data = DataLoader(TensorDataset(torch.randn(256, 3, 32, 32), torch.zeros(256).long()), batch_size=64)

    def plain():
        with torch.no_grad():
            for xb, _ in data:
                m(xb)

    def collect():
        return pb.score(m, g, "act_std", data=data)

    plain(), collect()  # warm up
    tp, tc = [], []
    for _ in range(3):  # interleaved, min of 3: the machine's load changes
        tp.append(_timed(plain)[1])
        tc.append(_timed(collect)[1])
    benchmark.pedantic(collect, rounds=1, warmup_rounds=0)
    ratio = min(tc) / min(tp)
    benchmark.extra_info.update(plain_s=min(tp), collect_s=min(tc), ratio=ratio, backend=str(pb.ops.backend("cpu")))
    print(f"\nactivation collection {min(tc):.3f} s vs plain pass {min(tp):.3f} s: {ratio:.2f}x "
          f"(ops backend: {pb.ops.backend('cpu')})")
    assert ratio <= 1.3, f"activation collection costs {ratio:.2f}x a plain pass (> 1.3x)"
