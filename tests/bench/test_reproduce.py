"""`pybench reproduce`: the table arithmetic (means, rates, the paired test), the xor reproduction end to end, and
the command's refusals."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
from scipy.stats import wilcoxon

from pybench.bench import reproduce
from pybench.bench.reproduce.table import Reproduction


def _rep() -> Reproduction:
    acc = {"random": [0.5, 0.6, 0.55, 0.52], "good": [0.9, 0.8, 0.95, 0.7], "dense": [1.0, 1.0, 0.99, 1.0]}
    methods = {m: [{"seed": s, "accuracy": a, "left": 3, "success": a >= 0.9} for s, a in enumerate(v)]
               for m, v in acc.items()}
    return Reproduction(name="t", title="T", protocol=["p"], methods=methods, paper={"good": "88 %"},
                        paper_column="paper", compare_on="accuracy", baseline="random", references=("dense",))


def test_summary_means_stds_rates_and_the_paired_test():
    rows = {r["method"]: r for r in _rep().summary()}
    good = rows["good"]
    assert good["accuracy_mean"] == pytest.approx(statistics.fmean([0.9, 0.8, 0.95, 0.7]))
    assert good["accuracy_std"] == pytest.approx(statistics.stdev([0.9, 0.8, 0.95, 0.7]))
    assert good["success_rate"] == 0.5 and good["left_mean"] == 3
    diffs = [0.4, 0.2, 0.4, 0.18]
    assert good["diff_vs_baseline"] == pytest.approx(statistics.fmean(diffs))
    assert good["p_vs_baseline"] == pytest.approx(wilcoxon(diffs, alternative="greater").pvalue)
    assert good["beats_baseline"] is False  # 4 seeds: the smallest one-sided p is 1/16 > 0.05
    assert "p_vs_baseline" not in rows["random"] and "p_vs_baseline" not in rows["dense"]  # baseline, reference


def test_markdown_is_a_table_with_the_papers_column():
    md = _rep().markdown()
    assert "\n\n| method" in md  # a blank line before the table, or Markdown does not render it
    line = next(x for x in md.splitlines() if x.startswith("| good"))
    assert "88 %" in line and "does not beat" in line and "50%" in line
    assert "(reference)" in next(x for x in md.splitlines() if x.startswith("| dense"))


def test_all_equal_differences_give_p_1():
    rep = _rep()
    rep.methods["same"] = [dict(r) for r in rep.methods["random"]]
    assert {r["method"]: r for r in rep.summary()}["same"]["p_vs_baseline"] == 1.0


@pytest.mark.parametrize("seeds", [0, 2, True, 3.0])
def test_run_refuses_fewer_than_three_seeds(seeds):
    with pytest.raises(ValueError, match="seeds must be an integer >= 3"):
        reproduce.run("xor", seeds=seeds)


def test_run_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown reproduction 'nope'; known: .*xor"):
        reproduce.run("nope", seeds=3)


@pytest.mark.slow
def test_xor_three_seeds_end_to_end(tmp_path):
    rep = reproduce.run("xor", seeds=3, out=tmp_path)
    data = json.loads((tmp_path / "xor.json").read_text())
    assert (tmp_path / "xor.md").read_text() == rep.markdown()
    methods = data["methods"]
    assert set(methods) == set(reproduce.xor.PAPER)
    for name, runs in methods.items():
        assert [r["seed"] for r in runs] == [0, 1, 2]
        for r in runs:
            assert 0.0 <= r["accuracy"] <= 1.0 and r["success"] == (r["accuracy"] >= 0.95)
            if "->" in name:  # the paper's fixed-count prunings end at the minimal network
                assert r["hidden_left"] == 3
    assert all(r["hidden_left"] == 10 for r in methods["FCN10, trained"])
    assert all(1 <= r["hidden_left"] <= 10 for r in methods["lfe + alpha 0.5 % (layerwise_alpha)"])
    assert sum(r["success"] for r in methods["FCN10, trained"]) >= 2  # the paper: 99.5 %
    summary = {r["method"]: r for r in data["summary"]}
    assert "p_vs_baseline" in summary["lfe, one-shot 10 -> 3"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pybench.cli", "reproduce", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown reproduction 'nope'; known: alexnet-counts, xor"),
    (["xor", "--seeds", "2"], "--seeds must be >= 3"),
    (["xor", "--out", "/proc/pybench-nope"], "--out /proc/pybench-nope: cannot write there"),
])
def test_cli_refuses_in_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_alexnet_counts_three_seeds(tmp_path):
    rep = reproduce.run("alexnet-counts", seeds=3, out=tmp_path)
    methods = json.loads((tmp_path / "alexnet-counts.json").read_text())["methods"]
    assert all(r["params"] == 57_044_810 for r in methods["dense"])  # the poster's 57.0 M: a 10-class head
    local = methods["local l1, conv filters 50%"]
    assert all(r["conv_widths"] == "32/96/192/128/128" for r in local)  # half of each conv's filters
    assert len({r["params"] for r in local}) == 1  # a per-layer ratio's counts do not depend on the weights
    for level in ("10%", "30%", "50%", "75%"):
        for name in (f"local l1, conv filters {level}", f"global act_mean, conv filters {level}"):
            for r in methods[name]:
                assert 0 < r["params_removed_pct"] < 100 and 0 < r["macs_removed_pct"] < 100
                assert r["params_removed_pct"] == pytest.approx(100 * (1 - r["params"] / 57_044_810))
    assert "params -34 %, FLOPs -65.3 %" in rep.markdown()
