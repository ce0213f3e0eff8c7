"""Every zoo model at ratios 0.3 and 0.7: forward works, output shape unchanged, params and MACs fell, and
pruned == masked outputs (eval, fp32, rtol 1e-4 / atol 1e-5). Small inputs (64x64 where the architecture allows)."""

from __future__ import annotations

import copy
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


# A dozen zoo models on the device: the trace, the fused stats (score) and the gather (apply) run on that device's
# kernels. The device's pruned model must equal its masked model, and its weights the CPU gather's bit for bit.
DEVICE_ZOO = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
              "densenet121", "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11_bn", "convnext_tiny", "googlenet"]
_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def no_tf32():
    """fp32 convolutions and matmuls in full fp32 on the GPU (TF32 would put 1e-3 between pruned and masked)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_CUDA)])
@pytest.mark.parametrize("name", DEVICE_ZOO)
def test_apply_equals_mask_on_the_device(name, device, no_tf32):
    torch.manual_seed(0)
    x = example_input(name, batch=2)
    m = calibrate(create(name, num_classes=10), x)
    md, xd = copy.deepcopy(m).to(device), x.to(device)
    g = pb.trace(md, xd)
    scores = pb.score(md, g, "l1")
    cpu_scores = pb.score(m, g, "l1")
    for grp in g.groups:
        assert scores[grp].device.type == "cpu"  # scores come back to the host whatever the weights' device
        torch.testing.assert_close(scores[grp], cpu_scores[grp], rtol=1e-5, atol=1e-6)
    p = pb.plan(g, cpu_scores, ratio=0.5)
    pruned, masked = pb.apply(md, p), pb.mask(md, p)
    assert {t.device.type for t in pruned.state_dict().values()} == {torch.device(device).type}
    with torch.no_grad():
        out = pruned(xd)
        torch.testing.assert_close(out, masked(xd), rtol=1e-4, atol=1e-5)  # apply == mask on the device
    assert out.shape == m(x).shape and count_params(pruned) < count_params(m)
    on_cpu = pb.apply(m, p).state_dict()
    for key, t in pruned.state_dict().items():
        assert torch.equal(t.cpu(), on_cpu[key]), key  # the device's gather copies exactly what the CPU's does
