"""Every zoo model at ratios 0.3 and 0.7: forward works, output shape unchanged, params and MACs fell, and
pruned == masked outputs (eval, fp32, rtol 1e-4 / atol 1e-5). Small inputs (64x64 where the architecture allows)."""

from __future__ import annotations

import gc

import pytest
import torch
from _engine_util import assert_apply_equals_mask, calibrate, count_params, create, example_input, macs, zoo_names

import pybench as pb


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_names())
def test_zoo_model_prunes(name):
    torch.manual_seed(0)
    x = example_input(name, batch=2)
    m = calibrate(create(name, num_classes=10), x)
    with torch.no_grad():
        ref = m(x)
    params, flops = count_params(m), macs(m, x)
    g = pb.trace(m, x)
    scores = pb.score(m, g, "l1")
    assert g.groups, f"{name}: nothing prunable ({g.pinned[:3]})"
    for ratio in (0.3, 0.7):
        p = pb.plan(g, scores, ratio=ratio)
        pruned, _, out = assert_apply_equals_mask(m, p, x)
        assert out.shape == ref.shape
        assert count_params(pruned) < params, (name, ratio)
        assert macs(pruned, x) < flops, (name, ratio)
        del pruned
        gc.collect()
