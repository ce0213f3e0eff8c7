"""The ops benchmark's bookkeeping: cases cover issue 2's sizes, rows and bytes are computed right."""

from __future__ import annotations

import torch

from pybench import opsbench


def test_cases_cover_the_issue_sizes():
    shapes = {(c.op, c.shape) for c in opsbench.cases()}
    for needed in [("channel_stats", (512, 512, 3, 3)), ("channel_stats", (2048, 512, 1, 1)),
                   ("channel_stats", (4096, 25088)), ("activation_stats", (64, 256, 56, 56)),
                   ("activation_stats", (64, 2048, 7, 7)), ("channel_gather", (2048, 512, 3, 3))]:
        assert needed in shapes


def test_run_on_a_small_case_gives_a_consistent_row():
    small = opsbench.OpCase("channel_stats", "tiny", (8, 4, 3, 3), opsbench._weight((8, 4, 3, 3)),
                            lambda x: torch.ops.pybench.channel_stats(x, 0), opsbench._eager_channel_stats, 5.0)
    (row,) = opsbench.run("cpu", repeats=2, selected=[small])
    assert row.mbytes == round(8 * 4 * 9 * 4 / 1e6, 1)
    assert row.ratio == row.eager_ms / row.fused_ms
    assert row.ratio_met == (row.ratio >= 5.0)
    text = opsbench.table([row], {"copy_gbs": 10.0, "sum_gbs": 5.0, "mbytes": 256.0})
    assert "tiny" in text and "copy 10.0 GB/s" in text


def test_gather_moves_only_the_kept_part_twice():
    case = next(c for c in opsbench.cases() if c.op == "channel_gather")
    args = {"x": torch.empty(8, 6, 3, 3), "out_idx": torch.arange(4), "in_idx": torch.arange(3)}
    assert case.moved_bytes(args) == 2 * 4 * 3 * 9 * 4
