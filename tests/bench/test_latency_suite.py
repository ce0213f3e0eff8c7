"""Suites with ``[prune] target = "latency"``: levels are latency budgets met on each cell's own target, the records
carry the prediction and the measurements, and bad settings are refused before anything runs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import pybench as pb
from pybench.bench import driver as runner
from pybench.bench import report
from pybench.bench import results as R
from pybench.bench import suite as S

SUITE = """
[suite]
name = "budgets"
[matrix]
models = ["cifar_resnet20"]
levels = [0, 0.6]
criteria = ["l1"]
batch_sizes = {batches}
[models.cifar_resnet20]
input_size = [3, 16, 16]
[metrics]
collect = ["latency", "macs"]
repeats = 1
warmup = 1
iters = 3
threads = 1
max_time_s = 1.0
[prune]
{prune}
"""

LATENCY = 'target = "latency"\n'

FAST = 'latency_rounds = 2\nlut_options = { max_points = 2, between = 0, max_time_s = 0.05 }'


def _text(batches="[1]", prune=FAST, target=True):
    return SUITE.format(batches=batches, prune=(LATENCY if target else "") + prune)


def _suite(tmp_path, batches="[1]", prune=FAST, target=True):
    path = tmp_path / "budgets.toml"
    path.write_text(_text(batches, prune, target))
    return S.load(path)


def test_budget_groups_are_per_target_and_ratio_ids_do_not_move(tmp_path):
    cells = [c for c in _suite(tmp_path, batches="[1, 2]").cells() if c.level > 0]
    assert len(cells) == 2 and cells[0].group_id != cells[1].group_id  # each target plans its own cut
    ratio = S.loads(_text("[1, 2]", "", target=False), "r.toml").cells()
    pruned = [c for c in ratio if c.level > 0]
    assert pruned[0].group_id == pruned[1].group_id  # a ratio plan is shared by its targets, as before
    spelled = S.loads(_text("[1, 2]", 'target = "ratio"\nlatency_rounds = 3\nlatency_tolerance = 0.05',
                            target=False), "d.toml")
    assert [c.cell_id for c in ratio] == [c.cell_id for c in spelled.cells()]  # new keys at defaults: same ids


@pytest.mark.parametrize("prune, message", [
    ("latency_rounds = 0", "'latency_rounds' must be an integer >= 1"),
    ("latency_tolerance = 1.5", "'latency_tolerance' must be a fraction in (0, 1)"),
    ("lut_options = { align = 8, colour = 1 }", "colour"),
    ('lut = "../elsewhere.json"', "leads outside the suite's folder"),
    ('lut = "missing.json"', "does not exist"),
])
def test_bad_latency_settings_are_refused(tmp_path, prune, message):
    with pytest.raises(S.SuiteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _suite(tmp_path, prune=prune)


def test_latency_keys_without_the_target_and_other_schedules_are_refused(tmp_path):
    text = _text()
    with pytest.raises(S.SuiteError, match="'target' has 'flops'"):
        S.loads(_text(prune='target = "flops"', target=False), "t.toml")
    with pytest.raises(S.SuiteError, match="used only with target"):
        S.loads(_text(target=False), "t.toml")
    with pytest.raises(S.SuiteError, match=r"schedules must be \[\"one_shot\"\], got iterative"):
        S.loads(text.replace('criteria = ["l1"]', 'criteria = ["l1"]\nschedules = ["one_shot", "iterative"]'),
                "t.toml")


def test_a_table_file_must_fit_every_target_of_the_matrix(tmp_path):
    torch.manual_seed(0)
    model = pb.zoo.create("cifar_resnet20", num_classes=10)
    table = pb.latency_table(model, torch.randn(1, 3, 16, 16), threads=1, max_points=2, between=0, max_time_s=0.05)
    table.save(tmp_path / "t.json")
    suite = _suite(tmp_path, prune='lut = "t.json"')
    assert suite.prune.lut == str((tmp_path / "t.json").resolve())
    with pytest.raises(S.SuiteError, match="batch_size 2.*latency table is for batch_size=1"):
        _suite(tmp_path, batches="[1, 2]", prune='lut = "t.json"')
    # the cell id follows the table's content, not the folder it lives in
    (tmp_path / "sub").mkdir()
    table.save(tmp_path / "sub" / "t.json")
    moved = _suite(tmp_path / "sub", prune='lut = "t.json"')
    assert [c.cell_id for c in moved.cells()] == [c.cell_id for c in suite.cells()]


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budgets")
    out = tmp / "run"
    summary = runner.run(_suite(tmp), out, progress=False, log=lambda s: None)
    return out, summary


def test_budget_cells_record_prediction_and_measurements(budget_run):
    out, summary = budget_run
    df = R.load(out)
    assert (df["status"] == "ok").all(), df.get("error")
    cell = df[df["level"] > 0].iloc[0]
    assert cell["latency_budget"] == 0.6 and cell["lut"] == "measured" and cell["lut_s"] > 0
    fit = cell["latency_fit"]
    assert 1 <= len(fit["rounds"]) <= 2 and fit["rounds"][0]["planned_budget"] == 0.6
    chosen = fit["rounds"][fit["chosen"]]
    assert cell["predicted_latency"] == chosen["predicted"] and cell["planned_latency"] == chosen["measured"]
    assert chosen["measured_low"] <= chosen["measured"] <= chosen["measured_high"]
    assert cell["predicted_latency"] <= 0.6 + 1e-9 and cell["params"] < cell["dense_params"]
    assert cell["speedup"] > 0  # the cell's own paired timing, after the cut
    tables = list((out / "cache").glob("lut-*.json"))
    assert len(tables) == 1
    table = pb.LatencyTable.load(tables[0])  # plain JSON, read back as data
    assert table.key["batch_size"] == 1 and table.key["threads"] == 1
    a = report.analyse(df)
    row = a[a["level"] > 0].iloc[0]
    assert row["latency_kept"] == pytest.approx(1 / row["speedup"])
    assert row["budget_miss"] == pytest.approx(row["latency_kept"] / 0.6 - 1)
    md = report.markdown(df)
    assert "Latency budgets" in md and "0.6" in md


def test_a_run_reusing_the_cache_keeps_how_the_budget_was_met(budget_run, tmp_path):
    import shutil

    out, _ = budget_run
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(out / "cache", again / "cache")
    runner.run(_suite(tmp_path), again, progress=False, log=lambda s: None)
    first, second = (R.load(d) for d in (out, again))
    f, s = (d[d["level"] > 0].iloc[0] for d in (first, second))
    assert pd.isna(s.get("prune_s")) and f["prune_s"] > 0  # the second run's cut came from the cache
    assert s["latency_fit"] == f["latency_fit"] and s["predicted_latency"] == f["predicted_latency"]
