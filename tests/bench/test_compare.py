"""compare (ratios of matched cells) and check (the regression gate, with noise)."""

from __future__ import annotations

import pytest

from pybench.bench import compare as C
from pybench.bench import results as R


def rec(cell_id, p50, noise=0.01, peak=1000.0, top1=0.9, status="ok", host="a"):
    return {"cell_id": cell_id, "group_id": "g", "run_id": "r", "status": status,
            "error": None if status == "ok" else "worker killed by SIGKILL",
            "config": {"suite": "t", "model": "m", "criterion": "l1", "schedule": "one_shot", "level": 0.5,
                       "batch_size": 1, "dtype": "float32", "device": "cpu", "seed": 0},
            "achieved": {"macs": 100, "params": 10},
            "metrics": {} if status != "ok" else {"latency_p50_ms": p50, "latency_noise": noise,
                                                  "peak_memory_bytes": peak, "memory_noise": 0.0, "top1": top1,
                                                  "throughput": 1000 / p50},
            "environment": {"hostname": host, "gpus": []}}


def write(folder, recs):
    st = R.Store(folder)
    for r in recs:
        st.append(r)
    return folder


def test_compare_ratios(tmp_path):
    a = write(tmp_path / "a", [rec("c1", 10.0), rec("c2", 4.0), rec("only_a", 1.0)])
    b = write(tmp_path / "b", [rec("c1", 5.0, host="b"), rec("c2", 6.0, host="b"), rec("only_b", 1.0, host="b")])
    res = C.compare(a, b, labels=("h100", "h200"))
    rows = {r["cell"]: r for r in res.rows}
    assert rows["c1"]["latency_p50_ms ratio"] == pytest.approx(0.5)
    assert rows["c2"]["latency_p50_ms ratio"] == pytest.approx(1.5)
    assert rows["c1"]["throughput ratio"] == pytest.approx(2.0)
    assert res.only_a == ["only_a"] and res.only_b == ["only_b"]
    md = res.markdown()
    assert "h200 vs h100" in md and "1 cell(s) only in h100" in md
    assert "data:image/png;base64," in res.html()


def test_check_flags_regressions_beyond_threshold(tmp_path):
    base = write(tmp_path / "base", [rec("c1", 10.0), rec("c2", 10.0), rec("c3", 10.0), rec("c4", 10.0, top1=0.9),
                                     rec("gone", 1.0)])
    run = write(tmp_path / "run", [rec("c1", 10.4),            # +4%: inside 5%
                                   rec("c2", 11.0),            # +10%: a regression
                                   rec("c3", 13.0, noise=0.2),  # +30% but its repeats spread 20%: ignored, said so
                                   rec("c4", 9.0, top1=0.8),   # faster, but 10 points less accurate
                                   rec("new", 1.0)])
    res = C.check(run, base, threshold=0.05)
    got = {(r["cell"], r["metric"]) for r in res.regressions}
    assert got == {("c2", "latency_p50_ms"), ("c4", "top1")}
    assert [(n["cell"], n["metric"]) for n in res.noisy] == [("c3", "latency_p50_ms")]
    assert res.missing == ["gone"] and res.failed
    md = res.markdown()
    assert "2 regression(s)" in md and "+10.0%" in md and "-10.0 pts" in md
    assert "not judged: noise above the threshold" in md and "c3" in md
    assert not C.check(run, base, threshold=0.5).failed  # a looser gate passes c2 and c4


def paired(cell_id, speedup, low, high, **kw):
    r = rec(cell_id, 10.0, **kw)
    r["metrics"].update(speedup=speedup, speedup_ci_low=low, speedup_ci_high=high, speedup_target_met=True)
    return r


def test_check_judges_a_paired_speedup_by_its_interval(tmp_path):
    base = write(tmp_path / "base", [paired("s1", 2.0, 1.96, 2.04), paired("s2", 2.0, 1.96, 2.04),
                                     paired("s3", 2.0, 1.96, 2.04), paired("s4", 2.0, 1.9, 2.1)])
    run = write(tmp_path / "run", [paired("s1", 1.7, 1.66, 1.74),   # -15 %, intervals far apart: a regression
                                   paired("s2", 1.9, 1.86, 1.94),   # -5 %: 1.94 / 1.96 is inside 1 - 5 %
                                   rec("s3", 10.0),                 # no paired speedup now: not judged, said why
                                   paired("s4", 1.8, 1.5, 2.1)])    # -10 %, but its interval reaches 1: no verdict
    res = C.check(run, base, threshold=0.05, metrics=["speedup"])
    assert [(r["cell"], r["metric"]) for r in res.regressions] == [("s1", "speedup")]
    assert res.compared == 4 and res.failed
    unjudged = {n["cell"]: n["noise"] for n in res.noisy}
    assert unjudged == {"s3": "the run has no paired speedup"}
    assert "speedup" in C.CHECK_METRICS and not C.check(run, base, threshold=0.2, metrics=["speedup"]).failed


def test_check_failed_cell_is_a_regression(tmp_path):
    base = write(tmp_path / "base", [rec("c1", 10.0)])
    run = write(tmp_path / "run", [rec("c1", 0, status="failed")])
    res = C.check(run, base, threshold=0.05)
    assert res.failed and res.failed_cells[0]["cell"] == "c1" and "SIGKILL" in res.failed_cells[0]["error"]


def test_check_bad_arguments(tmp_path):
    base = write(tmp_path / "base", [rec("c1", 10.0)])
    for bad in (0, 1, 5):  # a fraction in (0, 1): 5 is not 5 %
        with pytest.raises(ValueError, match="threshold must be a fraction in"):
            C.check(base, base, threshold=bad)
    with pytest.raises(ValueError, match="unknown metric.*allowed: latency_p50_ms"):
        C.check(base, base, metrics=["speed"])


def test_a_gate_that_compared_nothing_cannot_pass(tmp_path):
    base = write(tmp_path / "base", [rec("c1", 10.0), rec("c2", 10.0)])
    other = write(tmp_path / "other", [rec("x1", 10.0)])  # another suite's cells (or every id changed)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "records.jsonl").write_text("")
    for run in (other, empty):
        with pytest.raises(C.NothingComparedError, match="nothing was compared"):
            C.check(run, base)
    with pytest.raises(C.NothingComparedError, match="no ok cell in common"):
        C.compare(base, other)


def test_a_baseline_from_another_machine_is_refused_unless_allowed(tmp_path):
    base = write(tmp_path / "base", [rec("c1", 10.0, host="ci-runner-7")])
    run = write(tmp_path / "run", [rec("c1", 10.0, host="laptop")])
    with pytest.raises(C.ForeignBaselineError, match="another machine.*laptop.*ci-runner-7"):
        C.check(run, base)
    res = C.check(run, base, allow_foreign_baseline=True)
    md = res.markdown()
    assert res.compared == 1 and "run: laptop" in md and "baseline: ci-runner-7" in md
