"""pb.measure.profile: op table of a dense and a narrower model, chrome traces on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import pybench as pb


def net(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def test_op_table_and_traces(tmp_path: Path) -> None:
    r = pb.measure.profile(net(32), net(16), torch.randn(2, 3, 32, 32), iters=3, warmup=1, out_dir=tmp_path / "p")
    assert r.error is None and r.metric == "self CPU time" and r.iters == 3
    rows = {row["op"]: row for row in r.rows}
    conv = rows["aten::convolution"]
    assert conv["dense_calls"] == conv["pruned_calls"] == 2  # per forward: the two conv layers
    assert rows["aten::addmm"]["dense_calls"] == 1
    for row in r.rows:
        assert row["ratio"] == (pytest.approx(row["pruned_ms"] / row["dense_ms"]) if row["dense_ms"] else None)
    assert [row["dense_ms"] for row in r.rows] == sorted((row["dense_ms"] for row in r.rows), reverse=True)
    assert r.dense_total_ms == pytest.approx(sum(row["dense_ms"] for row in r.rows))
    assert r.pruned_total_ms == pytest.approx(sum(row["pruned_ms"] for row in r.rows))
    for label in ("dense", "pruned"):
        trace = json.loads(Path(r.traces[label]).read_text())
        names = {e.get("name") for e in trace["traceEvents"]}
        assert "aten::convolution" in names
    assert "aten::convolution" in r.table()
    assert r.to_dataframe().loc["aten::convolution", "dense_calls"] == 2
    json.dumps(r.to_dict())


def test_models_must_fit_the_inputs() -> None:
    with pytest.raises(pb.measure.MeasureInputError, match=r"pruned.*\[1, 4, 8, 8\]"):
        pb.measure.profile(nn.Conv2d(4, 4, 3), nn.Conv2d(3, 4, 3), torch.randn(1, 4, 8, 8), iters=1)
