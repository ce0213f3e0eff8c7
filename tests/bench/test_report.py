"""Reports: pruned rows joined with their dense baselines, exact derived figures, Markdown and self-contained HTML."""

from __future__ import annotations

import re

import pytest

from pybench.bench import report
from pybench.bench import results as R


def rec(cell_id, level, bs, p50, macs, params, peak, top1, status="ok", criterion="l1", model="m"):
    return {"cell_id": cell_id, "group_id": f"g{level}", "run_id": "r", "status": status,
            "error": None if status == "ok" else "RuntimeError: out of memory\ntrace",
            "config": {"suite": "t", "model": model, "criterion": "none" if level == 0 else criterion,
                       "schedule": "none" if level == 0 else "one_shot", "level": level, "batch_size": bs,
                       "dtype": "float32", "device": "cpu", "seed": 0},
            "achieved": {} if status != "ok" else {"params": params, "macs": macs},
            "metrics": {} if status != "ok" else {"latency_p50_ms": p50, "peak_memory_bytes": peak, "top1": top1,
                                                  "latency_noise": 0.01},
            "environment": {"hostname": "box", "cpu_model": "cpu9", "torch": "2.x", "gpus": []}}


@pytest.fixture
def run(tmp_path):
    st = R.Store(tmp_path / "run")
    st.append(rec("d1", 0, 1, 10.0, 1000, 100, 4096, 0.90))
    st.append(rec("d8", 0, 8, 40.0, 1000, 100, 8192, 0.90))
    st.append(rec("p1", 0.5, 1, 4.0, 250, 30, 1024, 0.85))
    st.append(rec("p8", 0.5, 8, 20.0, 250, 30, 2048, 0.85))
    st.append(rec("q1", 0.5, 1, 5.0, 500, 50, 2048, 0.88, criterion="l2"))
    st.append(rec("f1", 0.3, 1, 0, 0, 0, 0, 0, status="failed"))
    return tmp_path / "run"


def test_analyse_exact_figures(run):
    a = report.analyse(R.load(run)).set_index("cell_id")
    assert sorted(a.index) == ["p1", "p8", "q1"]  # pruned ok cells only
    assert a.loc["p1", "speedup"] == pytest.approx(10.0 / 4.0)
    assert a.loc["p8", "speedup"] == pytest.approx(40.0 / 20.0)  # against the dense cell of the same batch size
    assert a.loc["p1", "theoretical_speedup"] == pytest.approx(4.0)
    assert a.loc["p1", "macs_removed"] == pytest.approx(0.75) and a.loc["p1", "params_removed"] == pytest.approx(0.7)
    assert a.loc["p8", "memory_saved"] == pytest.approx(0.75)
    assert a.loc["q1", "top1_change"] == pytest.approx(-2.0)


def test_markdown_and_html(run, tmp_path):
    md_path, html_path = report.write(run, out_dir=tmp_path / "rep")
    md = md_path.read_text()
    assert "## Dense baselines" in md and "## m: pruned vs dense" in md
    assert "2.50x" in md and "4.00x" in md and "75.0%" in md and "-2.0" in md
    assert "## Failed cells (1)" in md and "out of memory" in md
    assert re.search(r"\|\s*box\s*\|", md)  # the environment of the run
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 2  # realised vs theoretical, accuracy vs MACs kept
    assert not re.search(r'src="(?!data:)', page) and "<link" not in page  # self-contained
    assert "<table>" in page


def test_no_records_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "records.jsonl").write_text("")
    with pytest.raises(ValueError, match="no records"):
        report.write(tmp_path / "empty")


def test_high_noise_is_flagged(tmp_path):
    st = R.Store(tmp_path / "noisy")
    for r in (rec("d1", 0, 1, 10.0, 1000, 100, 4096, 0.9), rec("p1", 0.5, 1, 4.0, 250, 30, 1024, 0.85)):
        r["metrics"]["latency_noise"] = 0.5
        st.append(r)
    df = R.load(tmp_path / "noisy")
    assert "Latency noise is high (median 50%" in report.markdown(df)
    assert report.analyse(df)["speedup_noise"].tolist() == [0.5]
    quiet = R.load(tmp_path / "noisy").assign(latency_noise=0.02)
    assert "Latency noise is high" not in report.markdown(quiet)


def test_pins_table_names_the_biggest_reason(tmp_path):
    st = R.Store(tmp_path / "run")
    st.append(rec("d1", 0, 1, 10.0, 1000, 100, 4096, 0.90))
    pruned = rec("p1", 0.5, 1, 4.0, 250, 30, 1024, 0.85)
    pruned["achieved"]["pins"] = {"channels": 200, "pinned": 150,
                                  "reasons": [["blocks.0: Tensor.norm: no channel rule", 100], ["x: split", 50]]}
    st.append(pruned)
    md = report.write(tmp_path / "run", out_dir=tmp_path / "rep")[0].read_text()
    assert "## Channels no plan can remove" in md
    section = md.split("## Channels no plan can remove")[1]
    row = next(line for line in section.splitlines() if line.startswith("| m "))
    assert "| 150 " in row and "| 200 " in row and "75.0%" in row and "100 by blocks.0: Tensor.norm" in row


def test_infinite_values_show_a_dash_instead_of_crashing():
    from pybench.bench import report

    assert report._fmt(float("inf"), "int") == "—" and report._fmt(float("-inf"), "pct") == "—"
    assert report._fmt(float("nan"), "int") == "" and report._fmt(None, "x") == ""
    assert report._fmt(2**20, "mb") == "1.00" and report._fmt(1234.0, "int") == "1,234"


def test_paired_speedups_are_shown_with_their_interval(tmp_path):
    st = R.Store(tmp_path / "run")
    st.append(rec("d1", 0, 1, 10.0, 1000, 100, 4096, 0.90))
    paired = rec("p1", 0.5, 1, 4.0, 250, 30, 1024, 0.85)
    paired["metrics"].update(speedup=2.31, speedup_ci_low=2.25, speedup_ci_high=2.38, speedup_target_met=True)
    loose = rec("q1", 0.5, 1, 5.0, 500, 50, 2048, 0.88, criterion="l2")
    loose["metrics"].update(speedup=1.8, speedup_ci_low=1.5, speedup_ci_high=2.2, speedup_target_met=False)
    st.append(paired)
    st.append(loose)
    st.append(rec("r1", 0.5, 1, 8.0, 500, 50, 2048, 0.88, criterion="fpgm"))  # an older record: no pairing
    a = report.analyse(R.load(tmp_path / "run")).set_index("cell_id")
    assert a.loc["p1", "speedup"] == 2.31 and a.loc["p1", "speedup_unpaired"] == pytest.approx(2.5)
    assert a.loc["r1", "speedup"] == pytest.approx(10.0 / 8.0) and not a.loc["r1", "speedup_paired"]
    md = report.markdown(R.load(tmp_path / "run"))
    assert "2.31x [2.25, 2.38]" in md and "1.80x [1.50, 2.20]*" in md and "1.25x (unpaired)" in md
    assert "95 % interval" in md
    assert report.plots(R.load(tmp_path / "run"))  # the error bars draw
    # a paired speedup's noise is its interval's relative half-width; an unpaired one's, its latencies' noise
    assert a.loc["p1", "speedup_noise"] == pytest.approx((2.38 - 2.25) / 2 / 2.31)
    assert a.loc["q1", "speedup_noise"] == pytest.approx(0.35 / 1.8) and a.loc["r1", "speedup_noise"] == 0.01
    assert "1 of 2 paired speedups did not reach [metrics] target_ci" in md


def test_noisy_latencies_beside_paired_speedups_say_which_to_trust(tmp_path):
    st = R.Store(tmp_path / "noisy")
    dense, pruned = rec("d1", 0, 1, 10.0, 1000, 100, 4096, 0.9), rec("p1", 0.5, 1, 4.0, 250, 30, 1024, 0.85)
    pruned["metrics"].update(speedup=2.4, speedup_ci_low=2.38, speedup_ci_high=2.42, speedup_target_met=True)
    for r in (dense, pruned):
        r["metrics"]["latency_noise"] = 0.5
        st.append(r)
    md = report.markdown(R.load(tmp_path / "noisy"))
    assert "Latency noise is high (median 50%" in md and "absolute latencies are unreliable, while the speedups" in md
    assert "paired speedups did not reach" not in md


def test_a_failed_paired_timing_shows_no_speedup_and_says_why(tmp_path):
    st = R.Store(tmp_path / "run")
    st.append(rec("d1", 0, 1, 10.0, 1000, 100, 4096, 0.90))
    failed = rec("p1", 0.5, 1, 4.0, 250, 30, 1024, 0.85)
    failed["metrics"]["speedup"] = None
    failed["details"] = {"speedup_error": "paired timing against the dense model failed: RuntimeError: boom\ntrace"}
    st.append(failed)
    df = R.load(tmp_path / "run")
    assert df.set_index("cell_id").loc["p1", "speedup_error"] == ("paired timing against the dense model failed: "
                                                                  "RuntimeError: boom")
    a = report.analyse(df).set_index("cell_id")
    assert a.loc["p1", "speedup"] != a.loc["p1", "speedup"]  # NaN: not the two cells' ratio (2.5) in its place
    assert a.loc["p1", "speedup_unpaired"] == pytest.approx(2.5)
    md = report.markdown(df)
    assert "— (paired timing failed)" in md and "2.50x" not in md
    assert "Paired timing failed for 1 pruned cells" in md and "RuntimeError: boom" in md


def test_roundings_and_backends_get_their_own_columns_and_rows(tmp_path):
    st = R.Store(tmp_path / "run")
    for backend in ("eager", "onnxruntime"):
        d = rec(f"d-{backend}", 0, 1, 10.0, 1000, 100, 4096, 0.9)
        d["config"]["backend"] = backend
        st.append(d)
        for rt, s in ((1, 2.0), (8, 2.5)):
            p = rec(f"p{rt}-{backend}", 0.5, 1, 4.0, 250, 30, 1024, 0.85)
            p["config"].update(backend=backend, prune={"round_to": rt})
            p["metrics"].update(speedup=s + (backend != "eager"), speedup_ci_low=s - 0.1, speedup_ci_high=s + 1.1,
                                speedup_target_met=True)
            st.append(p)
    df = R.load(tmp_path / "run")
    assert sorted(df["round_to"].dropna().astype(int)) == [1, 1, 8, 8] and df["round_to"].isna().sum() == 2
    md = report.markdown(df)
    table = md.split("## Speedup per backend")[1].split("\n## ")[0]
    header, _, *rows = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert [h.strip() for h in header.split("|")[-3:-1]] == ["eager", "onnxruntime"]  # eager first
    assert len(rows) == 2 and "round_to 8" in rows[1] and "round_to" not in rows[0]
    assert "2.00x [1.90, 3.10]" in rows[0] and "3.00x [1.90, 3.10]" in rows[0] and "3.50x [2.40, 3.60]" in rows[1]
    assert "| round_to " in md.split("## m: pruned vs dense")[1]
    assert report.analyse(df).groupby("backend").size().to_dict() == {"eager": 2, "onnxruntime": 2}
