"""pb.latency_table measured for real on a small net, and `pybench lut`."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import pybench as pb
from pybench import cli
from pybench.bench.lut import sample_counts
from pybench.prune.lut import LatencyTable, LutMismatchError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, padding=1, groups=1), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.Conv2d(24, 8, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


X = torch.randn(1, 3, 12, 12)


def test_sample_counts_sweep_steps_and_just_below():
    assert sample_counts(64) == [1, 8, 15, 16, 24, 32, 39, 40, 48, 56, 64]
    c = sample_counts(512, max_points=8)
    assert c[0] == 1 and c[-1] == 512 and len([v for v in c if v % 8 == 0]) == 9
    assert all(v % 4 == 0 for v in sample_counts(96, multiple=4))  # a grouped layer: whole groups only
    assert sample_counts(3) == [1, 3]


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return pb.latency_table(_net(), X, threads=1, max_points=3, max_time_s=0.05)


def test_table_covers_every_sliced_layer_with_measured_staircases(table):
    names = {lay.name for lay in table.layers}
    assert names == {"0", "1", "3", "5", "6", "9"}  # convs, BN and the classifier
    by = {lay.name: lay for lay in table.layers}
    assert by["9"].out is None and by["9"].inp is not None  # its outputs never change, its inputs do
    assert by["5"].tied and by["5"].inp is None  # depthwise: one count
    assert by["3"].out is not None and by["3"].inp is not None and by["3"].joint  # both, and both together
    assert by["0"].inp is None  # the image channels are no group's
    for lay in table.layers:
        for d in (lay.out, lay.inp):
            if d is not None:
                assert d.counts[-1] == d.size and d.ratios[-1] == 1.0 and all(r > 0 for r in d.ratios)
    assert table.key["device"] == "cpu" and table.key["backend"] == "eager" and table.key["batch_size"] == 1
    assert table.predict_ratio({}) == pytest.approx(1.0)
    assert 0 < table.predict_ratio(dict.fromkeys(range(len(table.model["groups"])), 1)) < 1


def test_plan_from_a_measured_table_runs_and_equals_its_mask(table, tmp_path):
    model = _net()
    table.save(tmp_path / "t.json")
    lut = LatencyTable.load(tmp_path / "t.json")
    pruned, plan = pb.prune(model, X, latency_budget=0.6, lut=lut)
    assert plan.predicted_latency <= 0.6
    torch.testing.assert_close(pruned(X), pb.mask(model, plan)(X), rtol=1e-4, atol=1e-5)
    with pytest.raises(LutMismatchError, match="dtype='float32', not 'float16'"):
        lut.check(dtype="float16")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="align=0"):
        pb.latency_table(_net(), X, align=0)
    with pytest.raises(ValueError, match="runs on cuda only"):
        pb.latency_table(_net(), X, backend="tensorrt")


def test_cli_lut_measures_saves_plots_and_refuses(tmp_path, capsys):
    out, png = tmp_path / "t.json", tmp_path / "s.png"
    assert cli.main(["lut", "cifar_resnet20", "--points", "2", "--point-time", "0.02", "--out", str(out),
                     "--plot", str(png)]) == 0
    assert LatencyTable.load(out).model["class"] == "CifarResNet" and png.stat().st_size > 1000
    assert cli.main(["lut", "x", "--table", str(out), "--plot", str(tmp_path / "again.png")]) == 0
    capsys.readouterr()
    assert cli.main(["lut", "x", "--table", str(tmp_path / "none.json")]) == 2
    assert cli.main(["lut", "cifar_resnet20", "--plot", str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "--out FILE" in err[1]
