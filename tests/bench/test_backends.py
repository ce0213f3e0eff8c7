"""Inference backends: the registry and its refusals, one export per model per cell, outputs checked against eager
float32 (a wrong answer fails, never times), paired dense-vs-pruned timing through the backend, and the axis in
suites, ids, records and reports."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import pybench as pb
from pybench.bench import backends as B
from pybench.bench import suite as S

HAVE_ORT = all(importlib.util.find_spec(p) for p in ("onnx", "onnxruntime", "onnxscript"))
HAVE_OV = importlib.util.find_spec("openvino") is not None
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="pip install 'pybench[backends]' (onnxruntime)")
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="pip install 'pybench[backends]' (openvino)")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


def test_the_registry_names_every_backend_and_refuses_what_cannot_run():
    assert sorted(B.BACKENDS) == ["cuda_graphs", "eager", "inductor", "onnxruntime", "openvino", "tensorrt"]
    assert B.parse("inductor:max-autotune") == ("inductor", "max-autotune") and B.parse("eager") == ("eager", "")
    assert B.create("inductor").mode == "default" and B.create("inductor:reduce-overhead").mode == "reduce-overhead"
    with pytest.raises(ValueError, match="backend 'inductor' has no mode 'fastest'; its modes: default, "):
        B.create("inductor:fastest")
    with pytest.raises(KeyError, match="unknown backend 'tvm'; known: cuda_graphs, eager"):
        B.create("tvm")
    assert B.unavailable("tensorrt", "cpu", "float32") == "backend 'tensorrt' runs on cuda only, not on cpu"
    assert B.unavailable("cuda_graphs", "cpu", "float32") == "backend 'cuda_graphs' runs on cuda only, not on cpu"
    assert B.unavailable("openvino", "cpu", "bfloat16") == ("backend 'openvino' does not run bfloat16 on cpu (it "
                                                             "runs float32 there)")
    assert B.unavailable("eager", "cpu", "float32") is None
    v = B.versions("inductor:max-autotune")
    assert v["name"] == "inductor" and v["mode"] == "max-autotune" and v["torch"] == torch.__version__.split("+")[0] \
        or v["torch"] == torch.__version__


def test_a_missing_package_names_the_pip_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert B.unavailable("openvino", "cpu", "float32") == ("backend 'openvino' needs openvino, which is not "
                                                            "installed: pip install 'pybench[backends]'")
    text = SUITE.replace("BACKENDS", '["eager", "openvino"]')
    with pytest.raises(S.SuiteError, match=r"\[matrix\]: key 'backends' has 'openvino': backend 'openvino' needs "
                                           r"openvino, which is not installed: pip install 'pybench\[backends\]'"):
        S.loads(text, "b.toml")
    S.loads(text, "b.toml", require_data=False)  # a dry run here may still list the cells


class _Off(B.Backend):
    """A backend that answers wrongly (eager plus one), or fails to export with a long message."""

    name = "off"

    def prepare(self, model, inputs):
        if self.mode == "fail":
            raise RuntimeError("export failed: op aten::weird is not supported\n" + "detail line\n" * 200)
        return lambda *xs: model(*xs) + 1.0


def test_a_wrong_answer_fails_and_an_export_failure_is_summarised():
    m, x = _net(), torch.randn(1, 3, 12, 12)
    with pytest.raises(B.BackendOutputError, match=r"backend 'off': output differs from eager float32 by .*beyond "
                                                   r"the 0.001 allowed for float32"):
        pb.measure.latency(m, x, iters=2, wrap=B.Prepared(_Off(), "float32"))
    with pytest.raises(B.BackendPrepareError) as info:
        pb.measure.latency(m, x, iters=2, wrap=B.Prepared(_Off("fail"), "float32"))
    msg = str(info.value)
    assert msg.startswith("backend 'off' could not prepare Sequential: RuntimeError: export failed: op aten::weird")
    assert msg.count("detail line") == 2 and len(msg) < 800  # the first lines, not the exporter's whole story
    assert B.tolerance("float16") == B.tolerance("bfloat16") == 5e-2


@pytest.mark.parametrize("spec", ["eager", pytest.param("onnxruntime", marks=needs_ort),
                                  pytest.param("openvino", marks=needs_ov)])
def test_each_model_is_prepared_once_checked_and_timed_paired(spec):
    dense, x = _net(), torch.randn(1, 3, 12, 12)
    pruned, _ = pb.prune(dense, x, ratio=0.5)
    prep = B.Prepared(B.create(spec), "float32")
    r = pb.measure.latency(pruned, x, warmup=1, iters=3, batch_size=2, wrap=prep)
    again = pb.measure.latency(pruned, x, warmup=1, iters=3, batch_size=2, wrap=prep)  # a repeat: no new export
    assert r.error is None and r.p50_ms > 0 and again.p50_ms > 0 and len(prep.entries) == 1
    entry = next(iter(prep.entries.values()))
    assert entry.prepare_s >= 0 and entry.max_rel_error <= B.tolerance("float32")
    # the backend's answer is eager's, on the very input it was checked on
    fn = entry.fn
    xb = x.repeat(2, 1, 1, 1)
    torch.testing.assert_close(torch.as_tensor(fn(xb)), pruned(xb), rtol=1e-4, atol=1e-5)
    p = pb.measure.paired_latency(dense, pruned, x, batch_size=2, max_time_s=1.0, min_pairs=4, wrap=prep)
    assert len(prep.entries) == 2 and p.error is None and p.speedup > 0 and p.pairs >= 4  # the dense one added
    described = prep.describe()
    assert described["name"] == spec and len(described["prepared"]) == 2 and described["tolerance"] == 1e-3


SUITE = """
[suite]
name = "b"
[matrix]
models = ["xor_mlp"]
levels = [0.5]
backends = BACKENDS
[metrics]
collect = ["latency", "memory", "macs"]
repeats = 2
warmup = 1
iters = 3
max_time_s = 1.0
"""


def test_eager_ids_do_not_move_and_other_backends_get_their_own():
    plain = S.expand(S.loads(SUITE.replace("backends = BACKENDS\n", ""), "b.toml"))
    both = S.expand(S.loads(SUITE.replace("BACKENDS", '["eager", "inductor:max-autotune"]'), "b.toml"))
    assert len(both) == 2 * len(plain) == 4
    eager = [c for c in both if c.backend == "eager"]
    other = [c for c in both if c.backend != "eager"]
    assert [c.cell_id for c in eager] == [c.cell_id for c in plain]  # the default axis leaves ids alone
    assert not {c.cell_id for c in other} & {c.cell_id for c in eager}
    assert {c.group_id for c in other} == {c.group_id for c in eager}  # pruned once, measured on each backend
    assert other[0].label().endswith("cpu inductor:max-autotune seed=0") and "eager" not in eager[0].label()
    assert S.Cell.from_json(other[0].to_json()).backend == "inductor:max-autotune"


@pytest.mark.parametrize("backends, says", [
    ('["tensorrt"]', "key 'backends' has 'tensorrt': backend 'tensorrt' runs on cuda only, not on cpu; drop it"),
    ('["inductor:turbo"]', "key 'backends' has 'inductor:turbo': backend 'inductor' has no mode 'turbo'"),
    ('["tvm"]', "key 'backends' has 'tvm'; allowed values: cuda_graphs, eager, inductor, onnxruntime, openvino, "
                "tensorrt (NAME or NAME:MODE)"),
    ("[]", "key 'backends' is empty"),
    ('["openvino"]\ndtypes = ["bfloat16"]', "backend 'openvino' does not run bfloat16 on cpu"),
])
def test_backends_that_cannot_run_are_refused_when_the_suite_loads(backends, says):
    with pytest.raises(S.SuiteError, match=None) as info:
        S.loads(SUITE.replace("BACKENDS", backends), "b.toml")
    assert says in str(info.value)


@needs_ort
def test_a_suite_on_two_backends_records_speedups_prepare_times_and_errors_per_backend(tmp_path):
    from pybench.bench import driver, report
    from pybench.bench import results as R

    suite = S.loads(SUITE.replace("BACKENDS", '["eager", "onnxruntime"]'), "b.toml")
    summary = driver.run(suite, tmp_path, progress=False, log=lambda s: None)
    assert (summary.ok, summary.failed) == (4, 0), summary.failures
    recs = {(r["config"]["backend"], r["config"]["level"]): r for r in R.Store(tmp_path).records()}
    ort = recs[("onnxruntime", 0.5)]
    m, d = ort["metrics"], ort["details"]
    assert m["prepare_s"] > 0 and m["dense_prepare_s"] > 0 and m["backend_max_rel_error"] <= 1e-3
    assert m["speedup_ci_low"] <= m["speedup"] <= m["speedup_ci_high"]
    assert d["backend"]["name"] == "onnxruntime" and d["backend"]["onnxruntime"] and "memory_skipped" in d
    assert "peak_memory_bytes" not in m and "peak_memory_bytes" in recs[("eager", 0.5)]["metrics"]
    assert "prepare_s" not in recs[("eager", 0.5)]["metrics"]
    df = R.load(tmp_path)
    assert sorted(df["backend"]) == ["eager", "eager", "onnxruntime", "onnxruntime"]
    a = report.analyse(df)
    assert len(a) == 2 and set(a["backend"]) == {"eager", "onnxruntime"}  # each pruned cell joined to its own dense
    md = report.markdown(df)
    table = md.split("## Speedup per backend")[1].split("##")[0]
    assert "| eager " in table.splitlines()[2] + table.splitlines()[1] and "onnxruntime" in table
    assert report.plots(df)


def test_a_backend_that_compiles_on_its_first_call_does_not_spend_the_timing_budget():
    import time

    dense, x = _net(), torch.randn(1, 3, 12, 12)
    pruned, _ = pb.prune(dense, x, ratio=0.5)
    first: list[int] = []

    def lazy(m, inputs):  # a compile on the first call, as torch.compile does, of 1 s
        def run(*xs):
            if id(m) not in first:
                first.append(id(m))
                time.sleep(1.0)
            return m(*xs)
        return run

    p = pb.measure.paired_latency(dense, pruned, x, max_time_s=0.5, min_pairs=4, wrap=lazy)
    assert len(first) == 2 and p.error is None and p.pairs >= 4 and p.elapsed_s < 1.0
    assert max(p.dense_ms + p.pruned_ms) < 500  # no block timed the compile


def test_models_of_the_same_shapes_but_other_weights_are_prepared_apart():
    a, x = _net(), torch.randn(1, 3, 12, 12)
    b = _net()
    with torch.no_grad():
        b[0].weight.mul_(2)  # the shapes of a, other weights: a fine-tuned model whose pins kept every channel
    prep = B.Prepared(B.create("eager"), "float32")
    fa, fb = prep(a, x), prep(b, x)
    assert len(prep.entries) == 2 and fa is a and fb is b and prep(a, x) is a
