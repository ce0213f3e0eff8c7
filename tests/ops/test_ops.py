"""The fused ops against their pure-PyTorch reference, on the CPU (and on CUDA where a GPU is present)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from pybench import ops

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# fp32-or-better accumulation: the tolerance reflects the input's rounding, not the kernel's
TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-10), torch.float16: (1e-3, 1e-2),
       torch.bfloat16: (1e-3, 1e-2)}

WEIGHT_CASES = [  # (shape, dim): bias / BN, linear, conv, 3-D, edge sizes
    ((10,), 0),
    ((1,), 0),
    ((64, 300), 0),
    ((64, 300), 1),
    ((64, 32, 3, 3), 0),
    ((64, 32, 3, 3), 1),
    ((64, 32, 3, 3), -1),
    ((5, 7, 9), 1),
    ((4096, 4, 1, 1), 0),
    ((1, 4096, 1, 1), 1),
    ((3, 1, 5, 5), 1),
    ((0, 8, 3, 3), 1),
]

ACTIVATION_SHAPES = [(4, 8, 5, 5), (2, 3, 37, 41), (3, 4096, 2, 2), (5, 1, 6, 6), (7, 33), (3, 5, 9), (2, 6, 3, 4, 5),
                     (0, 16, 4, 4)]


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    rtol, atol = TOL[dtype]
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def _relu_data(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g) + 0.3).to(dtype).to(device)


# ----------------------------------------------------------------------------------------------------- channel_stats
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", WEIGHT_CASES)
def test_channel_stats_matches_reference(shape, dim, dtype, device):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
    out = ops.channel_stats(w, dim)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.device == w.device
    _close(out, ops.ref_channel_stats(w, dim), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_channel_stats_definition(device):
    w = torch.tensor([[1.0, -2.0, 3.0], [0.0, -1.0, 0.5]], device=device)
    expected = torch.tensor([[6.0, 14.0, 2.0], [1.5, 1.25, -0.5]])
    torch.testing.assert_close(ops.channel_stats(w, 0).cpu(), expected)
    torch.testing.assert_close(ops.channel_stats(w, 1).cpu(), torch.tensor([[1.0, 1.0, 1.0], [3.0, 5.0, -3.0],
                                                                            [3.5, 9.25, 3.5]]))


@pytest.mark.parametrize("inner", [*range(1, 50), 63, 64, 65, 100, 4095, 4096, 4097])
def test_channel_stats_filters_batched_or_alone_give_the_same_bits(inner):
    # the CPU kernel reduces 8 filters at a time where it can: each must get the bits it gets alone (a 1-row
    # tensor takes the one-filter path), special values included
    g = torch.Generator().manual_seed(inner)
    w = torch.randn(67, inner, generator=g) * 10.0 ** torch.randint(-3, 4, (67, 1), generator=g)
    w[3, 0], w[5, -1], w[9, inner // 2], w[11, 0] = -0.0, float("inf"), float("nan"), 1e-40
    w[12] = -0.0
    out = ops.channel_stats(w, 0)
    for c in range(w.shape[0]):
        assert torch.equal(out[c].view(torch.int32), ops.channel_stats(w[c:c + 1], 0)[0].view(torch.int32)), c


@pytest.mark.parametrize("device", DEVICES)
def test_channel_stats_strided_views(device):
    base = torch.randn(32, 16, 5, 5, device=device)
    views = [base[::2], base[:, ::3], base.transpose(0, 1), base.contiguous(memory_format=torch.channels_last),
             base[..., 1:4]]
    for view in views:
        for dim in range(4):
            _close(ops.channel_stats(view, dim), ops.ref_channel_stats(view.contiguous(), dim), torch.float32)


# -------------------------------------------------------------------------------------------------- activation_stats
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ACTIVATION_SHAPES)
def test_activation_stats_matches_reference(shape, dtype, device):
    x = _relu_data(shape, dtype, device)
    out = ops.activation_stats(x)
    assert out.dtype == torch.float64 and out.shape == (shape[1], 4)
    _close(out, ops.ref_activation_stats(x), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_activation_stats_channels_last(dtype, device):
    x = _relu_data((4, 24, 9, 11), dtype, device)
    xc = x.contiguous(memory_format=torch.channels_last)
    assert not xc.is_contiguous()
    _close(ops.activation_stats(xc), ops.ref_activation_stats(x), dtype)
    x3 = _relu_data((2, 6, 3, 4, 5), dtype, device).contiguous(memory_format=torch.channels_last_3d)
    _close(ops.activation_stats(x3), ops.ref_activation_stats(x3.contiguous()), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_activation_stats_non_contiguous_views(device):
    x = _relu_data((6, 10, 8, 8), torch.float32, device)
    for view in (x[:, ::2], x[..., ::2, 1:], x[1::2], x.transpose(2, 3)):
        _close(ops.activation_stats(view), ops.ref_activation_stats(view.contiguous()), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_activation_stats_accumulate_equals_concatenation(dtype, rtol, layout, device):
    batches = [_relu_data((n, 12, 7, 7), dtype, device, seed=n) for n in (3, 1, 8, 5)]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    state = None
    for b in batches:
        state = ops.activation_stats(b.contiguous(memory_format=fmt), state)
    one_shot = ops.activation_stats(torch.cat(batches))
    torch.testing.assert_close(state, one_shot, rtol=rtol, atol=rtol)
    torch.testing.assert_close(state, ops.ref_activation_stats(torch.cat(batches)), rtol=rtol, atol=rtol)
    assert state[:, 0].eq(17 * 49).all() and state[:, 3].eq(one_shot[:, 3]).all()  # counts are exact


@pytest.mark.parametrize("device", DEVICES)
def test_activation_stats_state_dtype_and_empty_batch(device):
    x = _relu_data((4, 5, 3, 3), torch.float32, device)
    state32 = ops.activation_stats(x, torch.zeros(5, 4, device=device))
    assert state32.dtype == torch.float32
    _close(state32, ops.ref_activation_stats(x), torch.float32)
    empty = torch.empty(0, 5, 3, 3, device=device)
    torch.testing.assert_close(ops.activation_stats(empty, state32), state32)
    assert ops.activation_stats(empty).abs().sum() == 0


def test_activation_stats_is_stable_far_from_zero():
    # values around 1e4 with spread 1: a one-pass sum of squares would lose every digit of the variance
    x = (1e4 + torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(3))).float()
    out = ops.activation_stats(x)
    ref = ops.ref_activation_stats(x)
    torch.testing.assert_close(out[:, 2] / out[:, 0], ref[:, 2] / ref[:, 0], rtol=1e-3, atol=0)


def test_activation_summary():
    x = torch.tensor([[[0.0, 2.0]], [[4.0, 0.0]]]).reshape(2, 1, 2)
    s = ops.activation_summary(ops.activation_stats(x))
    assert s["mean"].item() == pytest.approx(1.5)
    assert s["std"].item() == pytest.approx(torch.tensor([0.0, 2.0, 4.0, 0.0]).std(unbiased=False).item())
    assert s["apoz"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------- channel_gather
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(10,), (64, 300), (64, 32, 3, 3), (5, 7, 9), (4096, 1, 1, 1), (1, 1)])
def test_channel_gather_matches_reference(shape, dtype, device):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(shape, generator=g).to(dtype).to(device)
    out_idx = torch.randperm(shape[0], generator=g)[: max(1, shape[0] // 2)].to(device)
    in_idx = torch.randperm(shape[1], generator=g)[: max(1, shape[1] // 3)].to(device) if len(shape) > 1 else None
    for o, i in [(out_idx, in_idx), (None, in_idx), (out_idx, None), (None, None)]:
        out = ops.channel_gather(w, o, i)
        assert out.is_contiguous() and out.dtype == dtype
        assert torch.equal(out, ops.ref_channel_gather(w, o, i))


@pytest.mark.parametrize("device", DEVICES)
def test_channel_gather_int32_indices_views_and_fresh_storage(device):
    w = torch.randn(16, 8, 3, 3, device=device)
    view = w.transpose(0, 1)  # non-contiguous input
    o, i = torch.tensor([3, 0, 7], device=device, dtype=torch.int32), torch.tensor([15, 1], device=device)
    assert torch.equal(ops.channel_gather(view, o, i), view[o.long()][:, i])
    full = ops.channel_gather(w)
    assert torch.equal(full, w) and full.data_ptr() != w.data_ptr()


@pytest.mark.parametrize("device", DEVICES)
def test_channel_gather_duplicates_allowed_and_empty(device):
    # Documented choice: duplicate indices are allowed and copy the channel twice, as index_select does.
    w = torch.arange(12.0, device=device).reshape(4, 3)
    dup = torch.tensor([2, 2, 0], device=device)
    assert torch.equal(ops.channel_gather(w, dup, None), w[[2, 2, 0]])
    assert torch.equal(ops.channel_gather(w, None, torch.tensor([1, 1], device=device)), w[:, [1, 1]])
    empty = ops.channel_gather(w, torch.empty(0, dtype=torch.long, device=device), None)
    assert empty.shape == (0, 3)


# -------------------------------------------------------------------------------------------------- the list forms
def _mixed_weights(device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    shapes = [(10,), (64, 300), (64, 32, 3, 3), (96, 1, 3, 3), (5, 7, 9), (0, 8, 3, 3), (40, 24, 1, 1)]
    dtypes = (torch.float32, torch.float16)
    return [torch.randn(s, generator=g).to(dtype).to(device) for s in shapes for dtype in dtypes]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_channel_stats_list_is_the_single_op_on_each(device, dim):
    ws = [w for w in _mixed_weights(device) if w.dim() > (1 if dim == 1 else 0)]
    got = ops.channel_stats_list(ws, dim)
    assert len(got) == len(ws)
    for w, out, ref in zip(ws, got, ops.ref_channel_stats_list(ws, dim), strict=True):
        assert torch.equal(out, ops.channel_stats(w, dim))  # the same kernel, bit for bit
        _close(out, ref, w.dtype)
    assert ops.channel_stats_list([], 0) == []


@pytest.mark.parametrize("device", DEVICES)
def test_channel_gather_list_is_the_single_op_on_each(device):
    g = torch.Generator().manual_seed(4)
    ws, outs, ins = [], [], []
    for k, w in enumerate(_mixed_weights(device)):
        o = torch.randperm(w.shape[0], generator=g)[: w.shape[0] // 2]
        i = torch.randperm(w.shape[1], generator=g)[: max(1, w.shape[1] // 3)] if w.dim() > 1 else None
        o, i = [(o, i), (None, i), (o, None), (None, None)][k % 4]
        ws.append(w)
        outs.append(None if o is None else o.to(device, torch.int32 if k % 3 == 0 else torch.int64))
        ins.append(None if i is None else i.to(device))
    got = ops.channel_gather_list(ws, outs, ins)
    for w, o, i, out, ref in zip(ws, outs, ins, got, ops.ref_channel_gather_list(ws, outs, ins), strict=True):
        assert torch.equal(out, ops.channel_gather(w, o, i)) and torch.equal(out, ref)
        assert out.is_contiguous() and out.dtype == w.dtype
    assert ops.channel_gather_list([], [], []) == []


def test_list_faces_split_tensors_of_several_devices():
    cpu, meta = torch.randn(6, 4), torch.empty(8, 4, device="meta")
    stats = ops.channel_stats_list([cpu, meta, cpu], 0)
    assert [t.device.type for t in stats] == ["cpu", "meta", "cpu"] and stats[1].shape == (8, 3)
    assert torch.equal(stats[2], ops.channel_stats(cpu, 0))
    idx, midx = torch.tensor([1, 3]), torch.tensor([0], device="meta")
    got = ops.channel_gather_list([cpu, meta], [idx, midx], [None, None])
    assert torch.equal(got[0], cpu[[1, 3]]) and got[1].shape == (1, 4) and got[1].device.type == "meta"


# ------------------------------------------------------------------------- every op, dtype and layout (GPU proof)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_every_op_in_every_dtype_and_layout(layout, dtype, device):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    g = torch.Generator().manual_seed(5)
    w = torch.randn(40, 24, 3, 3, generator=g).to(dtype).to(device).contiguous(memory_format=fmt)
    x = torch.relu(torch.randn(3, 40, 9, 7, generator=g)).to(dtype).to(device).contiguous(memory_format=fmt)
    wd, xd = w.contiguous(), x.contiguous()  # the reference reads a plain NCHW copy
    for dim in (0, 1):
        _close(ops.channel_stats(w, dim), ops.ref_channel_stats(wd, dim), dtype)
        for got, ref in zip(ops.channel_stats_list([w, x], dim), ops.ref_channel_stats_list([wd, xd], dim),
                            strict=True):
            _close(got, ref, dtype)
    _close(ops.activation_stats(x), ops.ref_activation_stats(xd), dtype)
    state = ops.activation_stats(x[:1])
    _close(ops.activation_stats(x[1:], state), ops.ref_activation_stats(xd), dtype)
    o = torch.tensor([39, 0, 7, 7], device=device)
    i = torch.tensor([3, 23, 1], device=device, dtype=torch.int32)
    assert torch.equal(ops.channel_gather(w, o, i), ops.ref_channel_gather(wd, o, i))
    got = ops.channel_gather_list([w, x], [o, None], [i, o[:2]])
    assert torch.equal(got[0], wd[o][:, i.long()]) and torch.equal(got[1], xd[:, o[:2]])


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_at_launch_shape_edges(device):
    # more channels than a warp multiple, more pieces than a row block, runs longer and shorter than a block;
    # sums over 1e5 fp32 elements round at ~1e-5 of their size in any order, hence rtol 1e-4
    def _close(got, want, dtype):
        torch.testing.assert_close(got.double().cpu(), want.double().cpu(), rtol=1e-4, atol=1e-4)

    g = torch.Generator().manual_seed(6)
    for shape, dim in [((3, 70001, 2), 1), ((70001, 3), 0), ((2, 5, 70001), 1), ((1, 257, 1, 1), 1)]:
        w = torch.randn(shape, generator=g).to(device)
        _close(ops.channel_stats(w, dim), ops.ref_channel_stats(w, dim), torch.float32)
    for shape in [(70001, 3), (2, 33, 1, 70001), (40000, 2, 1, 1)]:
        x = torch.relu(torch.randn(shape, generator=g)).to(device)
        _close(ops.activation_stats(x), ops.ref_activation_stats(x), torch.float32)
    x4 = torch.relu(torch.randn(4, 33, 65, 65, generator=g)).to(device).contiguous(memory_format=torch.channels_last)
    _close(ops.activation_stats(x4), ops.ref_activation_stats(x4.contiguous()), torch.float32)
    w = torch.randn(300, 1000, generator=g).to(device)
    rows, cols = torch.randperm(300, generator=g)[:299].to(device), torch.randperm(1000, generator=g)[:999].to(device)
    assert torch.equal(ops.channel_gather(w, rows, cols), w[rows][:, cols])


# ------------------------------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    (lambda: ops.channel_stats(torch.zeros(4, 4, dtype=torch.int64), 0), TypeError, "w must be a floating-point"),
    (lambda: ops.channel_stats(torch.zeros(4, 4), 2), IndexError, "dim 2 is out of range for w of rank 2"),
    (lambda: ops.channel_stats(torch.zeros(4, 4), -3), IndexError, "dim -3 is out of range"),
    (lambda: ops.channel_stats(torch.tensor(1.0), 0), ValueError, "at least 1 dimension"),
    (lambda: ops.activation_stats(torch.zeros(5)), ValueError, "x must have shape (N, C, ...)"),
    (lambda: ops.activation_stats(torch.zeros(2, 3, dtype=torch.int32)), TypeError, "x must be a floating-point"),
    (lambda: ops.activation_stats(torch.zeros(2, 3), torch.zeros(4, 4)), ValueError,
     "state must have shape [C, 4] = [3, 4]"),
    (lambda: ops.activation_stats(torch.zeros(2, 3), torch.zeros(3, 4, dtype=torch.float16)), TypeError,
     "state must be float32 or float64"),
    (lambda: ops.channel_gather(torch.zeros(4, 3), torch.tensor([4]), None), IndexError,
     "out_idx holds 4, out of range for dim 0 of w (size 4; valid 0..3)"),
    (lambda: ops.channel_gather(torch.zeros(4, 3), None, torch.tensor([-1])), IndexError, "in_idx holds -1"),
    (lambda: ops.channel_gather(torch.zeros(4, 3), torch.tensor([0.0]), None), TypeError,
     "out_idx must be an int32 or int64 tensor"),
    (lambda: ops.channel_gather(torch.zeros(4, 3), torch.tensor([[0]]), None), ValueError, "out_idx must be 1-D"),
    (lambda: ops.channel_gather(torch.zeros(4), None, torch.tensor([0])), ValueError, "in_idx needs w of rank >= 2"),
    (lambda: ops.channel_gather(torch.zeros(4, 3, dtype=torch.int64), None, None), TypeError,
     "w must be a floating-point"),
    (lambda: ops.channel_gather(torch.zeros(4, 3), torch.tensor([0], device="meta"), None), ValueError,
     "out_idx is on meta but w is on cpu"),
    (lambda: torch.ops.pybench.channel_stats_list([torch.zeros(2), torch.zeros(2, device="meta")], 0), ValueError,
     "ws[1] is on meta but ws[0] is on cpu"),
    (lambda: torch.ops.pybench.channel_stats_list([torch.zeros(4, 4), torch.zeros(4, 4)], 2), IndexError,
     "dim 2 is out of range for w of rank 2"),
    (lambda: ops.channel_gather_list([torch.zeros(4, 3)], [None, None], [None]), ValueError,
     "ws, out_idx and in_idx must have the same length, got 1, 2 and 1"),
    (lambda: ops.channel_gather_list([torch.zeros(4, 3), torch.zeros(2, 3)], [None, torch.tensor([2])], [None, None]),
     IndexError, "out_idx holds 2, out of range for dim 0 of w (size 2; valid 0..1)"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUT)
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_bad_input_errors(call, error, message, impl, monkeypatch):
    if impl == "reference":  # the reference must refuse the same input with the same message
        monkeypatch.setattr(torch.ops, "pybench", _ReferenceNamespace())
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


class _ReferenceNamespace:
    channel_stats = staticmethod(ops.ref_channel_stats)
    activation_stats = staticmethod(ops.ref_activation_stats)
    channel_gather = staticmethod(ops.ref_channel_gather)
    channel_stats_list = staticmethod(ops.ref_channel_stats_list)
    channel_gather_list = staticmethod(ops.ref_channel_gather_list)


def test_state_on_another_device_is_refused():
    with pytest.raises(ValueError, match="state is on meta but x is on cpu"):
        ops.activation_stats(torch.zeros(2, 3), torch.zeros(3, 4, device="meta"))


# ------------------------------------------------------------------------------------ registration, fake, compile
def test_schemas_match_the_extension():
    for name, schema in ops.SCHEMAS.items():
        assert str(getattr(torch.ops.pybench, name).default._schema) == f"pybench::{schema}"


def test_backend_reports_each_device():
    table = ops.backend()
    assert set(table) == {"cpu", "cuda"}
    assert ops.backend("cpu") == table["cpu"]
    if torch.cuda.is_available():
        assert ops.backend("cuda") == "pybench._C (CUDA)"


@pytest.mark.parametrize(
    "op,args",
    [
        ("channel_stats", (torch.randn(8, 4, 3, 3), 1)),
        ("activation_stats", (torch.relu(torch.randn(3, 4, 5, 5)), None)),
        ("activation_stats", (torch.relu(torch.randn(3, 4, 5, 5)), torch.zeros(4, 4, dtype=torch.float64))),
        ("channel_gather", (torch.randn(8, 4, 3, 3), torch.tensor([1, 5]), torch.tensor([0, 3]))),
        ("channel_stats_list", ([torch.randn(8, 4, 3, 3), torch.randn(5, 2)], 0)),
        ("channel_gather_list", ([torch.randn(8, 4, 3, 3), torch.randn(6)], [torch.tensor([1, 5]), None],
                                 [torch.tensor([0, 3]), None])),
    ],
)
def test_opcheck(op, args):
    torch.library.opcheck(getattr(torch.ops.pybench, op).default, args)


def test_meta_tensors_give_shapes():
    w = torch.empty(64, 32, 3, 3, device="meta")
    assert ops.channel_stats(w, 1).shape == (32, 3)
    assert ops.activation_stats(torch.empty(2, 7, 4, 4, device="meta")).shape == (7, 4)
    assert ops.channel_gather(w, torch.empty(5, dtype=torch.long, device="meta"), None).shape == (5, 32, 3, 3)
    assert [t.shape for t in ops.channel_stats_list([w, w[0]], 0)] == [(64, 3), (32, 3)]
    got = ops.channel_gather_list([w, w], [None, torch.empty(2, dtype=torch.long, device="meta")],
                                  [torch.empty(3, dtype=torch.long, device="meta"), None])
    assert [t.shape for t in got] == [(64, 3, 3, 3), (2, 32, 3, 3)]


def test_torch_compile_traces_through_the_ops():
    def scores(w: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        l1 = ops.channel_stats(w, 0)[:, 0]
        mean = ops.activation_stats(torch.relu(x))[:, 1]
        return ops.channel_gather(w, keep, None), l1 * mean.float()

    w, x, keep = torch.randn(8, 4, 3, 3), torch.randn(2, 8, 5, 5), torch.tensor([0, 2, 4])
    compiled = torch.compile(scores, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(w, x, keep), scores(w, x, keep), strict=True):
        torch.testing.assert_close(got, want)


def test_missing_extension_falls_back_to_reference_with_one_warning():
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["pybench._C"] = None  # as if the extension was never built
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
            from pybench import ops
        relevant = [w for w in caught if "pybench._C is not available" in str(w.message)]
        assert len(relevant) == 1, [str(w.message) for w in caught]
        assert ops.backend() == {"cpu": "reference (pure PyTorch)", "cuda": "reference (pure PyTorch)"}
        w = torch.randn(6, 3, 3, 3)
        assert torch.equal(ops.channel_stats(w, 0), ops.ref_channel_stats(w, 0))
        assert torch.equal(ops.channel_gather(w, torch.tensor([1]), None), w[[1]])
        assert torch.equal(ops.channel_stats_list([w], 0)[0], ops.ref_channel_stats(w, 0))
        assert torch.equal(ops.channel_gather_list([w], [torch.tensor([1])], [None])[0], w[[1]])
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_extension_without_the_list_ops_gets_them_on_the_reference():
    # an extension built before the list ops existed: they are defined on the reference, with one warning
    code = textwrap.dedent(
        """
        import sys, types, warnings
        import torch
        lib = torch.library.Library("pybench", "DEF")
        for schema in ["channel_stats(Tensor w, int dim) -> Tensor",
                       "activation_stats(Tensor x, Tensor? state=None) -> Tensor",
                       "channel_gather(Tensor w, Tensor? out_idx, Tensor? in_idx) -> Tensor"]:
            lib.define(schema)
        sys.modules["pybench._C"] = types.ModuleType("pybench._C")  # the old extension: those three schemas
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from pybench import ops
        relevant = [str(w.message) for w in caught if "predates" in str(w.message)]
        assert len(relevant) == 1 and "channel_stats_list, channel_gather_list" in relevant[0], relevant
        w = torch.randn(6, 3, 3, 3)
        assert torch.equal(ops.channel_stats_list([w], 0)[0], ops.ref_channel_stats(w, 0))
        assert torch.equal(ops.channel_gather_list([w], [torch.tensor([2])], [None])[0], w[[2]])
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_torch_export_traces_through_the_ops():
    class Scores(torch.nn.Module):
        def forward(self, w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return ops.channel_stats(w, 0), ops.activation_stats(torch.relu(x))

    w, x = torch.randn(8, 4, 3, 3), torch.randn(2, 8, 5, 5)
    exported = torch.export.export(Scores(), (w, x))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert {"pybench.channel_stats.default", "pybench.activation_stats.default"} <= targets
    for got, want in zip(exported.module()(w, x), Scores()(w, x), strict=True):
        torch.testing.assert_close(got, want)


def test_list_gather_takes_none_for_a_whole_list_of_indices():
    ws = [torch.randn(4, 3), torch.randn(5, 2, 3)]
    keep = [torch.tensor([0, 2]), torch.tensor([1, 3, 4])]
    for fn in (ops.channel_gather_list, ops.ref_channel_gather_list):
        got = fn(ws, keep, None)
        assert [g.shape for g in got] == [(2, 3), (3, 2, 3)] and torch.equal(got[1], ws[1][[1, 3, 4]])
        same = fn(ws)  # both None: plain copies
        assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(same, ws, strict=True))
