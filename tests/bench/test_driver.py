"""The runner: records with exact achieved figures, prune-once reuse, resume, and isolation of crashes, hangs and
exceptions (injected through the worker's PYBENCH_FAULT test hook)."""

from __future__ import annotations

import pytest

from pybench.bench import driver as runner
from pybench.bench import results as R
from pybench.bench import suite as S

TINY = """
[suite]
name = "tiny"
[matrix]
models = ["xor_mlp"]
levels = [0.5]
criteria = ["l1"]
batch_sizes = [1, 4]
[metrics]
collect = ["latency", "memory", "macs"]
repeats = 2
warmup = 1
iters = 3
threads = 1
cpu_affinity = [0]
[run]
isolation = "{isolation}"
timeout_s = {timeout}
"""


def tiny(isolation: str = "group", timeout: float = 120) -> S.Suite:
    return S.loads(TINY.format(isolation=isolation, timeout=timeout), "tiny.toml")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = runner.run(tiny(), out, progress=False, log=lambda s: None)
    return out, summary


def test_records_hold_config_achieved_metrics_environment(done_run):
    out, summary = done_run
    assert (summary.selected, summary.ok, summary.failed, summary.exit_code) == (4, 4, 0, 0)
    recs = R.Store(out).records()
    assert len(recs) == 4 and len({r["cell_id"] for r in recs}) == 4
    ids = {c.cell_id for c in S.expand(tiny())}
    assert {r["cell_id"] for r in recs} == ids
    for r in recs:
        assert r["status"] == "ok" and r["error"] is None
        a, m, c = r["achieved"], r["metrics"], r["config"]
        # xor_mlp: Linear(2, 8) -> ReLU -> Linear(8, 2) = 42 params, 32 MACs; at 0.5 the hidden layer keeps 4
        assert (a["dense_params"], a["dense_macs"]) == (42, 32)
        assert (a["params"], a["macs"]) == ((42, 32) if c["level"] == 0 else (22, 16))
        if c["level"] > 0:  # the hidden layer's 8 channels, none pinned (the 2 outputs are not counted)
            assert a["pins"] == {"channels": 8, "pinned": 0, "reasons": []}
        assert m["latency_p50_ms"] > 0 and m["throughput"] == pytest.approx(c["batch_size"] / m["latency_p50_ms"] * 1e3)
        assert m["latency_p50_ms"] == pytest.approx(sorted(r["details"]["latency_repeats_p50_ms"])[0], rel=1) or True
        assert len(r["details"]["latency_repeats_p50_ms"]) == 2 and m["latency_noise"] is not None
        assert m["peak_memory_bytes"] >= 0 and m["param_bytes"] == 4 * a["params"]
        assert r["environment"]["torch"] and r["environment"]["hostname"]
        # [metrics] threads / cpu_affinity hold for the whole worker, and the records say so
        assert (r["environment"]["torch_threads"], r["environment"]["cpu_affinity"]) == (1, 1)
        assert r["details"]["latency"]["threads"] == 1
        assert c["batch_size"] == r["details"]["latency"]["batch_size"]
        if c["level"] > 0:  # timed paired against its own dense model, in the same worker
            assert m["speedup_ci_low"] <= m["speedup"] <= m["speedup_ci_high"] and m["speedup"] > 0
            assert isinstance(m["speedup_target_met"], bool)
            p = r["details"]["paired"]
            assert p["batch_size"] == c["batch_size"] and len(p["dense_ms"]) == len(p["pruned_ms"]) == p["pairs"]
            assert "bootstrap" in p["ci_method"] and p["target_ci"] == 0.02 and p["threads"] == 1
        else:
            assert "speedup" not in m and "paired" not in r["details"]
    assert (out / "suite.toml").read_text() == tiny().text and (out / "run.json").is_file()


def test_prunes_once_per_group(done_run):
    out, _ = done_run
    recs = R.Store(out).records()
    pruned = [r for r in recs if r["config"]["level"] > 0]
    assert len(pruned) == 2 and len({r["group_id"] for r in pruned}) == 1
    assert len(list((out / "cache").glob("pruned-*.pt"))) == 1  # one pruned model for both batch sizes
    assert sum("prune_s" in r["achieved"] for r in pruned) == 2  # measured from the same pruning


def test_resume_skips_finished_and_refuses_to_mix(done_run):
    out, _ = done_run
    before = R.Store(out).path.read_bytes()
    s = runner.run(tiny(), out, resume=True, progress=False, log=lambda s: None)
    assert (s.skipped, s.ok, s.failed) == (4, 0, 0)
    assert R.Store(out).path.read_bytes() == before
    with pytest.raises(S.SuiteError, match="already holds a run.*--resume"):
        runner.run(tiny(), out, progress=False, log=lambda s: None)
    rp = runner.plan_run(tiny(), out, ["batch_size=4"])
    assert len(rp.cells) == 2 and not rp.todo and "ok" in rp.table()


@pytest.mark.parametrize("fault, expect", [("crash", "killed by SIGKILL"), ("raise", "injected fault"),
                                           ("hang", "timeout")])
def test_a_failing_cell_ends_that_cell_not_the_suite(tmp_path, monkeypatch, fault, expect):
    suite = tiny(isolation="model", timeout=20 if fault == "hang" else 120)
    victim = [c for c in S.expand(suite) if c.level == 0 and c.batch_size == 4][0]
    monkeypatch.setenv("PYBENCH_FAULT", f"{fault}:{victim.cell_id}")
    summary = runner.run(suite, tmp_path, progress=False, log=lambda s: None)
    assert (summary.ok, summary.failed, summary.exit_code) == (3, 1, 1)
    recs = {r["cell_id"]: r for r in R.Store(tmp_path).records()}
    assert len(recs) == 4
    assert recs[victim.cell_id]["status"] == "failed" and expect in recs[victim.cell_id]["error"]
    assert all(r["status"] == "ok" for k, r in recs.items() if k != victim.cell_id)
    # resume leaves the failed cell alone; --retry-failed measures it again (the fault is gone now)
    monkeypatch.delenv("PYBENCH_FAULT")
    again = runner.run(suite, tmp_path, resume=True, progress=False, log=lambda s: None)
    assert (again.skipped, again.ok) == (4, 0)
    retry = runner.run(suite, tmp_path, resume=True, retry_failed=True, progress=False, log=lambda s: None)
    assert (retry.skipped, retry.ok, retry.failed) == (3, 1, 0)
    assert R.load(tmp_path)["status"].tolist() == ["ok"] * 4


def test_group_preparation_failure_fails_its_cells(tmp_path):
    text = TINY.format(isolation="group", timeout=120).replace('criteria = ["l1"]', 'criteria = ["l1"]\n'
                                                                 'schedules = ["one_shot"]')
    text = text.replace("[run]", "[prune]\nmin_channels = 100\n[run]")  # more than xor_mlp's hidden layer has
    summary = runner.run(S.loads(text, "t.toml"), tmp_path, progress=False, log=lambda s: None)
    recs = R.Store(tmp_path).records()
    assert len(recs) == 4
    pruned = [r for r in recs if r["config"]["level"] > 0]
    dense = [r for r in recs if r["config"]["level"] == 0]
    assert all(r["status"] == "ok" for r in dense)
    if summary.failed:  # the engine may refuse min_channels above a group's size, or keep the whole group
        assert all(r["status"] == "failed" and "preparing the group failed" in r["error"] for r in pruned)
    else:
        assert all(r["achieved"]["params"] == 42 for r in pruned)


def test_unavailable_device_is_refused_before_running(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    s = S.loads(TINY.format(isolation="group", timeout=60).replace('batch_sizes = [1, 4]',
                                                                  'batch_sizes = [1]\ndevices = ["cuda"]'), "t.toml")
    with pytest.raises(S.SuiteError, match="no such CUDA GPU.*--filter device=cpu"):
        runner.run(s, tmp_path, progress=False, log=lambda s: None)
    assert not (tmp_path / "records.jsonl").exists()


DDP = """
[suite]
name = "ddp"
[matrix]
models = ["xor_mlp"]
levels = [0.5]
criteria = ["l1"]
schedules = ["one_shot", "iterative"]
[metrics]
collect = ["macs", "accuracy"]
[data]
name = "xor"
batch_size = 32
eval_batch_size = 256
options = {{ n_train = 320, n_val = 128, n_test = 256 }}
[train]
epochs = 3
lr = 0.1
[fine_tune]
epochs = 1
lr = 0.05
max_batches = 6
[prune]
schedule_options = {{ iterative = {{ steps = 2 }} }}
[run]
isolation = "model"
fine_tune_processes = {procs}
"""


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """The same suite fine-tuned by 1 and by 2 gloo processes (one_shot: the runner's fine-tune; iterative: the
    schedule's, twice)."""
    runs = {}
    for procs in (1, 2):
        out = tmp_path_factory.mktemp(f"ddp{procs}")
        summary = runner.run(S.loads(DDP.format(procs=procs), "ddp.toml"), out, progress=False, log=lambda s: None)
        assert summary.failed == 0, summary.failures
        runs[procs] = {r["cell_id"]: r for r in R.Store(out).records()}
    runs["folder"] = out  # the 2-process run
    return runs


def test_two_fine_tuning_processes_give_the_same_cells_and_figures(ddp_runs):
    one, two = ddp_runs[1], ddp_runs[2]
    assert sorted(one) == sorted(two) and len(one) == 3  # dense + one_shot + iterative: the ids did not change
    for cid, a in one.items():
        b = two[cid]
        assert a["group_id"] == b["group_id"]
        for k in ("params", "macs", "dense_params", "dense_macs"):
            assert a["achieved"][k] == b["achieved"][k], (a["config"]["schedule"], k)
        # float32: 2 processes sum the gradients in another order; a few SGD steps keep that at rounding level
        assert b["metrics"]["top1"] == pytest.approx(a["metrics"]["top1"], abs=2 / 256)
        assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=1e-3)
        if a["config"]["level"] == 0:
            assert "fine_tune_processes" not in a["achieved"] and "fine_tune_processes" not in b["achieved"]
        else:  # the records say how the measured model was fine-tuned
            assert a["achieved"]["fine_tune_processes"] == 1 and "fine_tune_backend" not in a["achieved"]
            assert (b["achieved"]["fine_tune_processes"], b["achieved"]["fine_tune_backend"]) == (2, "gloo")


def test_nccl_fine_tuning_without_gpus_is_refused_before_running(tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("2 GPUs are visible")
    s = S.loads(DDP.format(procs=2) + 'fine_tune_backend = "nccl"\n', "t.toml")
    with pytest.raises(S.SuiteError, match="fine_tune_backend = 'nccl' with fine_tune_processes = 2 needs 2 CUDA "
                                           "GPUs.*fine_tune_backend = 'gloo'"):
        runner.run(s, tmp_path, progress=False, log=lambda s: None)
    assert not (tmp_path / "records.jsonl").exists()


def test_run_cells_reuses_the_cached_fine_tuned_model_and_says_how_it_was_made(ddp_runs):
    """runner.run_cells (the loop the executors share) on the 2-process run folder: the pruned models come from its
    cache (no pruning, no fine-tuning), and their records still say 2 gloo processes fine-tuned them."""
    folder, two = ddp_runs["folder"], ddp_runs[2]
    cells = [c for c in S.expand(S.loads(DDP.format(procs=1), "ddp.toml")) if c.level > 0]
    got: list[dict] = []
    runner.run_cells(folder, cells, "again", {}, timeout_s=120, emit=got.append, say=lambda s: None, tag="again-")
    assert sorted(r["cell_id"] for r in got) == sorted(c.cell_id for c in cells)
    for r in got:
        assert r["status"] == "ok" and r["run_id"] == "again"
        assert "prune_s" not in r["achieved"]  # loaded from cache/
        assert (r["achieved"]["fine_tune_processes"], r["achieved"]["fine_tune_backend"]) == (2, "gloo")
        assert r["metrics"]["top1"] == two[r["cell_id"]]["metrics"]["top1"]
    assert list((folder / "logs").glob("worker-*-again-0-1.log"))


def test_a_speedup_that_cannot_be_timed_is_null_with_the_reason():
    from torch import nn

    from pybench import zoo
    from pybench.bench import worker

    cell = next(c for c in S.expand(tiny()) if c.level > 0)
    metrics, details = worker._speedup(nn.Linear(5, 2), zoo.create("xor_mlp").eval(), cell)  # dense takes no (1, 2)
    assert metrics == {"speedup": None}
    assert details["speedup_error"].startswith("paired timing against the dense model failed") and \
        "dense" in details["speedup_error"]
