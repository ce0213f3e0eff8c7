"""Every zoo model at ratios 0.3 and 0.7: forward works, output shape unchanged, params and MACs fell, and
pruned == masked outputs (eval, fp32, rtol 1e-4 / atol 1e-5). Small inputs (64x64 where the architecture allows)."""

from __future__ import annotations

import gc

import pytest
import torch
from _engine_util import calibrate, count_params, create, example_input, zoo_names
from torch.utils.flop_counter import FlopCounterMode

import pybench as pb


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_names())
def test_zoo_model_prunes(name):
    torch.manual_seed(0)
    x = example_input(name, batch=2)
    m = calibrate(create(name, num_classes=10), x)
    with torch.no_grad(), FlopCounterMode(display=False) as dense:
        ref = m(x)
    params = count_params(m)
    g = pb.trace(m, x)
    scores = pb.score(m, g, "l1")
    assert g.groups, f"{name}: nothing prunable ({g.pinned[:3]})"
    for ratio in (0.3, 0.7):
        p = pb.plan(g, scores, ratio=ratio)
        pruned, masked = pb.apply(m, p), pb.mask(m, p)
        with torch.no_grad():
            with FlopCounterMode(display=False) as small:
                out = pruned(x)
            torch.testing.assert_close(out, masked(x), rtol=1e-4, atol=1e-5)  # apply == mask
        assert out.shape == ref.shape
        assert count_params(pruned) < params, (name, ratio)
        assert small.get_total_flops() < dense.get_total_flops(), (name, ratio)  # MACs fell
        del pruned, masked
        gc.collect()
