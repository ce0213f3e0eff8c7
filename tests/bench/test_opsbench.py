"""The ops benchmark's bookkeeping: cases cover issue 2's sizes, rows and bytes are computed right."""

from __future__ import annotations

import torch

from pybench.bench import opsbench


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


def test_large_cases_are_at_least_256_mb_in_every_dtype_and_layout():
    large = opsbench.large_cases()
    assert {c.op for c in large} == {"channel_stats", "activation_stats", "channel_gather"}
    for case in large:
        n = 1
        for s in case.shape:
            n *= s
        assert n * torch.empty((), dtype=case.dtype).element_size() >= opsbench.LARGE_MB * opsbench.MB, case.layer
    acts = {(c.dtype, "channels_last" in c.layer) for c in large if c.op == "activation_stats"}
    assert acts == {(dt, cl) for dt in (torch.float32, torch.float16, torch.bfloat16) for cl in (False, True)}
    assert {c.dtype for c in large if c.op == "channel_stats"} == {torch.float32, torch.float16, torch.bfloat16}
    def key(c):
        return c.op, c.layer, c.shape, c.dtype

    assert [key(c) for c in opsbench.cases(large=True)] == [key(c) for c in opsbench.cases() + large]


def test_make_builds_the_case_dtype_and_layout():
    case = next(c for c in opsbench.large_cases() if c.op == "activation_stats" and c.dtype == torch.bfloat16
                and "channels_last" in c.layer)
    small = opsbench.OpCase(case.op, case.layer, (2, 8, 4, 4), opsbench._activation((2, 8, 4, 4), True, case.dtype),
                            case.fused, case.eager, case.target_ratio, case.dtype)
    x = small.make(torch.device("cpu"))["x"]
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()


def test_bandwidth_is_judged_only_on_large_cases():
    tiny = opsbench.OpCase("channel_stats", "tiny", (8, 4, 3, 3), opsbench._weight((8, 4, 3, 3)),
                           lambda x: torch.ops.pybench.channel_stats(x, 0), opsbench._eager_channel_stats, 5.0)
    (row,) = opsbench.run("cpu", repeats=1, selected=[tiny], copy_gbs=1e-9)
    assert row.bandwidth_met is None and row.copy_share == row.fused_gbs / 1e-9
    big = opsbench.OpCase("channel_stats", "big", (64, 1_000_000), opsbench._weight((64, 1_000_000)),
                          lambda x: torch.ops.pybench.channel_stats(x, 0), opsbench._eager_channel_stats, 5.0)
    (row,) = opsbench.run("cpu", repeats=1, selected=[big], copy_gbs=1e-3)
    assert row.mbytes == 256.0 and row.copy_share > 1 and row.bandwidth_met is None  # a CPU is not judged
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert opsbench.bandwidth_verdict(0.84, 256.0, cuda) is False
    assert opsbench.bandwidth_verdict(0.85, 256.0, cuda) is True
    assert opsbench.bandwidth_verdict(0.10, 255.9, cuda) is None and opsbench.bandwidth_verdict(None, 900, cuda) is None
    assert opsbench.bandwidth_verdict(0.10, 900.0, cpu) is None
    slow = opsbench.BenchRow(**{**row.to_dict(), "bandwidth_met": False})
    text = opsbench.table([slow], {"copy_gbs": 1e6, "sum_gbs": 1e6, "mbytes": 256.0})
    assert ">= 85% NO" in text and "float32" in text


def test_calls_per_sample_is_one_on_cpu():
    assert opsbench._calls_per_sample((lambda: None,), torch.device("cpu")) == 1
    assert opsbench._time_calls(lambda: None, torch.device("cpu"), 3) >= 0
