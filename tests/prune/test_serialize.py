"""pb.save / pb.load: a pruned model restored from the file alone, in a fresh process, outputs identical."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from _engine_util import calibrate, count_params

import pybench as pb

ZOO = ["resnet18", "mobilenet_v2", "densenet121", "convnext_tiny", "cifar_resnet20", "efficientnet_b0"]


@pytest.mark.parametrize("name", ZOO)
def test_round_trip_in_a_fresh_process(tmp_path, name):
    torch.manual_seed(0)
    size = 32 if name.startswith("cifar") else 64
    x = torch.randn(2, 3, size, size)
    m = calibrate(pb.zoo.create(name, num_classes=10), x)
    pruned, _ = pb.prune(m, x, ratio=0.5)
    with torch.no_grad():
        expected = pruned(x)
    path = tmp_path / "pruned.pt"
    pb.save(pruned, path)
    torch.save(x, tmp_path / "x.pt")
    blob = torch.load(path, weights_only=True)  # tensors and JSON only
    assert set(blob) == {"format", "spec", "state_dict"}
    code = textwrap.dedent(f"""
        import torch, warnings
        warnings.filterwarnings("ignore")
        import pybench as pb
        m = pb.load({str(path)!r})
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        with torch.no_grad():
            torch.save(m(x), {str(tmp_path / 'y.pt')!r})
        print(sum(p.numel() for p in m.parameters()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) == count_params(pruned)
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), expected)


def _user_model(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 4, 1))


def test_user_model_by_callable(tmp_path):
    m = _user_model(8).eval()
    x = torch.randn(1, 3, 6, 6)
    pruned, _ = pb.prune(m, x, ratio=0.5)
    path = tmp_path / "u.pt"
    pb.save(pruned, path, spec=f"{__name__}:_user_model", kwargs={"width": 8})
    with pytest.raises(PermissionError, match="outside pybench's model registry"):
        pb.load(path)  # the file names code: refused unless trusted by name
    loaded = pb.load(path, trust=[f"{__name__}:_user_model"])
    assert loaded[0].out_channels == 4 and loaded[1].num_features == 4 and loaded[3].in_channels == 4
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_save_without_spec_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="pybench_spec"):
        pb.save(_user_model(), tmp_path / "a.pt")
    with pytest.raises(ValueError, match="module:callable"):
        pb.save(_user_model(), tmp_path / "a.pt", spec="no_colon")
    torch.save({"x": torch.ones(1)}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="not a pybench pruned-model file"):
        pb.load(tmp_path / "b.pt")
