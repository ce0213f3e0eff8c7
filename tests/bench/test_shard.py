"""pybench.bench.shard: shard specs, the deterministic split, and merging shard run folders."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pybench.bench import results, shard
from pybench.bench import suite as psuite

SUITE = """
[suite]
name = "shardtest"
[matrix]
models = ["cifar_resnet20"]
levels = [0, 0.3, 0.5]
criteria = ["l1", "l2"]
batch_sizes = [1, 4]
seeds = [0, 1]
[models.cifar_resnet20]
input_size = [3, 16, 16]
[metrics]
collect = ["macs"]
repeats = 1
[run]
isolation = "model"
timeout_s = 120
"""


@pytest.fixture(scope="module")
def cells() -> list[psuite.Cell]:
    return psuite.expand(psuite.loads(SUITE, "shardtest.toml"))


# ---------------------------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize("spec, want", [("1/1", (1, 1)), ("2/4", (2, 4)), (" 4 / 4 ", (4, 4)), ((3, 5), (3, 5))])
def test_parse_shard(spec, want):
    s = shard.parse_shard(spec)
    assert (s.index, s.count) == want and str(s) == f"{want[0]}/{want[1]}"


@pytest.mark.parametrize("spec, words", [("3/2", "outside 1..2"), ("0/0", "count is 0"), ("0/4", "start at 1"),
                                         ("-1/4", "outside"), ("a/b", "not a shard spec"), ("2", "not a shard"),
                                         ("1/2/3", "not a shard"), ("", "not a shard"), (None, "not a shard")])
def test_parse_shard_bad(spec, words):
    with pytest.raises(ValueError) as e:
        shard.parse_shard(spec)
    msg = str(e.value)
    assert words in msg and repr(spec) in msg and "1 <= i <= n" in msg


# ---------------------------------------------------------------------------------------------------------- split
def test_suite_size(cells):
    # 2 seeds x (dense + 2 levels x 2 criteria) x 2 batch sizes
    assert len(cells) == 2 * (1 + 2 * 2) * 2 == 20


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 25])
def test_split_partitions_the_cells(cells, n):
    parts = shard.split(cells, n)
    assert len(parts) == n
    ids = [c.cell_id for p in parts for c in p]
    assert sorted(ids) == sorted(c.cell_id for c in cells)  # every cell exactly once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # select() agrees with split() and keeps the input order
    for i in range(1, n + 1):
        got = shard.select(cells, f"{i}/{n}")
        assert {c.cell_id for c in got} == {c.cell_id for c in parts[i - 1]}
        assert got == [c for c in cells if c in got]


def test_split_independent_of_order(cells):
    shuffled = list(cells)
    random.Random(1).shuffle(shuffled)
    a = [[c.cell_id for c in p] for p in shard.split(cells, 3)]
    b = [[c.cell_id for c in p] for p in shard.split(shuffled, 3)]
    assert a == b


def test_split_same_in_another_process(cells):
    # no salted hash(): a fresh interpreter (another machine, another PYTHONHASHSEED) deals the same shards
    code = ("import json, sys; from pybench import shard, suite; "
            "cells = suite.expand(suite.loads(sys.stdin.read(), 's.toml')); "
            "print(json.dumps([[c.cell_id for c in p] for p in shard.split(cells, 3)]))")
    out = subprocess.run([sys.executable, "-c", code], input=SUITE, capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[c.cell_id for c in p] for p in shard.split(cells, 3)]


def test_split_by_group_keeps_groups_whole(cells):
    parts = shard.split(cells, 3, by="group")
    assert sorted(c.cell_id for p in parts for c in p) == sorted(c.cell_id for c in cells)
    where = {}
    for k, p in enumerate(parts):
        for c in p:
            assert where.setdefault(c.group_id, k) == k
    # 10 groups of 2 cells over 3 shards: 4 + 3 + 3 groups
    assert sorted(len(p) for p in parts) == [6, 6, 8]


def test_split_bad_input(cells):
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        shard.split(cells, 0)
    with pytest.raises(ValueError, match="by='x'"):
        shard.split(cells, 2, by="x")
    with pytest.raises(ValueError, match="more than once"):
        shard.split(cells + cells[:1], 2)


# ---------------------------------------------------------------------------------------------------------- merge
def _fake_shard(folder: Path, suite_name: str, cells: list[psuite.Cell], text: str = SUITE, spec: str | None = None,
                status: str = "ok", hostname: str = "h1", config_patch: dict | None = None) -> Path:
    """A run folder laid out as pybench.bench.driver writes it (run.json, suite.toml, records.jsonl)."""
    folder.mkdir(parents=True)
    env = {"hostname": hostname, "cpu_model": "cpu-x", "gpus": []}
    meta = {"run_id": folder.name, "suite": suite_name, "suite_path": "s.toml", "started": "2026-01-01T00:00:00+00:00",
            "environment": env}
    if spec:
        meta["shard"] = spec
    (folder / "run.json").write_text(json.dumps(meta))
    (folder / "suite.toml").write_text(text)
    store = results.Store(folder)
    for c in cells:
        cfg = {**c.config, **(config_patch or {})}
        store.append({"schema": 1, "cell_id": c.cell_id, "group_id": c.group_id, "run_id": folder.name,
                      "status": status, "error": None if status == "ok" else "boom", "config": cfg,
                      "achieved": {"params": 100, "macs": 1000}, "metrics": {}, "details": {}, "environment": env,
                      "started": meta["started"], "finished": meta["started"], "duration_s": 1.0})
    return folder


def test_merge_joins_shards(tmp_path, cells):
    parts = shard.split(cells, 3)
    dirs = [_fake_shard(tmp_path / f"s{i + 1}", "shardtest", p, spec=f"{i + 1}/3") for i, p in enumerate(parts)]
    res = shard.merge(dirs, tmp_path / "merged")
    assert (res.cells, res.ok, res.failed, res.records, res.missing) == (20, 20, 0, 20, [])
    df = results.load(tmp_path / "merged")
    assert sorted(df["cell_id"]) == sorted(c.cell_id for c in cells)
    meta = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert meta["suite"] == "shardtest" and [m["shard"] for m in meta["merged_from"]] == ["1/3", "2/3", "3/3"]
    assert [m["records"] for m in meta["merged_from"]] == [len(p) for p in parts]
    assert (tmp_path / "merged" / "suite.toml").read_text() == SUITE
    # a merged run resumes like any other: every cell is finished
    assert set(results.Store(tmp_path / "merged").finished()) == {c.cell_id for c in cells}


def test_merge_reports_missing_cells(tmp_path, cells):
    parts = shard.split(cells, 3)
    dirs = [_fake_shard(tmp_path / f"s{i + 1}", "shardtest", parts[i], spec=f"{i + 1}/3") for i in (0, 2)]
    res = shard.merge(dirs, tmp_path / "merged")
    assert sorted(res.missing) == sorted(c.cell_id for c in parts[1])
    assert any("shard(s) 2 of 3" in w for w in res.warnings)
    with pytest.raises(shard.MergeError, match=r"7 cell\(s\) of suite 'shardtest' have no record"):
        shard.merge(dirs, tmp_path / "merged2", require_complete=True)


def test_merge_overlap_prefers_ok(tmp_path, cells):
    a = _fake_shard(tmp_path / "a", "shardtest", cells[:12], status="failed")
    b = _fake_shard(tmp_path / "b", "shardtest", cells[8:])
    res = shard.merge([b, a], tmp_path / "m")  # the failed copies come later, the ok ones still win
    assert (res.cells, res.ok, res.failed, res.records) == (20, 12, 8, 20)  # the 4 overlapping cells once each
    assert any("4 cell(s) were measured by more than one shard" in w for w in res.warnings)
    assert len(results.Store(tmp_path / "m").records()) == 20  # no duplicated records
    df = results.load(tmp_path / "m")
    st = dict(zip(df["cell_id"], df["status"], strict=True))
    assert all(st[c.cell_id] == "ok" for c in cells[8:]) and all(st[c.cell_id] == "failed" for c in cells[:8])


def test_merge_refuses_different_suites(tmp_path, cells):
    a = _fake_shard(tmp_path / "a", "shardtest", cells[:5])
    b = _fake_shard(tmp_path / "b", "other", cells[5:])
    with pytest.raises(shard.MergeError, match="different suites.*'shardtest'.*'other'"):
        shard.merge([a, b], tmp_path / "m")
    c = _fake_shard(tmp_path / "c", "shardtest", cells[5:], text=SUITE.replace("repeats = 1", "repeats = 2"))
    with pytest.raises(shard.MergeError, match="different versions of suite 'shardtest'"):
        shard.merge([a, c], tmp_path / "m")
    assert not (tmp_path / "m" / "records.jsonl").exists()


def test_merge_refuses_conflicting_cells(tmp_path, cells):
    a = _fake_shard(tmp_path / "a", "shardtest", cells[:5])
    b = _fake_shard(tmp_path / "b", "shardtest", cells[4:], config_patch={"timeout_s": 5.0})
    with pytest.raises(shard.MergeError, match=rf"cell {cells[4].cell_id} has different configurations.*timeout_s"):
        shard.merge([a, b], tmp_path / "m")
    # where the data lives may differ between machines
    c = _fake_shard(tmp_path / "c", "shardtest", cells[4:], config_patch={"data_root": "/elsewhere"})
    assert shard.merge([a, c], tmp_path / "m").cells == 20


def test_merge_refuses_bad_folders(tmp_path, cells):
    a = _fake_shard(tmp_path / "a", "shardtest", cells[:5], spec="1/2")
    b = _fake_shard(tmp_path / "b", "shardtest", cells[5:], spec="1/2")
    c = _fake_shard(tmp_path / "c", "shardtest", cells[5:], spec="2/3")
    with pytest.raises(shard.MergeError, match="both shard 1/2"):
        shard.merge([a, b], tmp_path / "m")
    with pytest.raises(shard.MergeError, match="split different ways"):
        shard.merge([a, c], tmp_path / "m")
    with pytest.raises(shard.MergeError, match="not a run folder"):
        shard.merge([a, tmp_path], tmp_path / "m")
    with pytest.raises(shard.MergeError, match="no shard folders"):
        shard.merge([], tmp_path / "m")
    with pytest.raises(shard.MergeError, match="already exists and is not empty"):
        shard.merge([a], b)


def test_merge_warns_on_mixed_hardware(tmp_path, cells):
    a = _fake_shard(tmp_path / "a", "shardtest", cells[:10])
    b = _fake_shard(tmp_path / "b", "shardtest", cells[10:])
    meta = json.loads((b / "run.json").read_text())
    meta["environment"]["cpu_model"] = "cpu-y"
    (b / "run.json").write_text(json.dumps(meta))
    res = shard.merge([a, b], tmp_path / "m")
    assert any("different hardware" in w for w in res.warnings)


@pytest.mark.slow
def test_shards_of_a_real_run_merge_to_the_whole_suite(tmp_path):
    """Two shards run by the real runner (selected through its cell_id filter), merged: the suite's cells, once."""
    from pybench.bench import driver as runner

    text = SUITE.replace("seeds = [0, 1]", "seeds = [0]").replace('criteria = ["l1", "l2"]', 'criteria = ["l1"]')
    s = psuite.loads(text, "shardtest.toml")
    all_cells = s.cells()
    dirs = []
    for i in (1, 2):
        mine = shard.select(all_cells, f"{i}/2")
        out = tmp_path / f"shard{i}"
        summary = runner.run(s, out, filters=["cell_id=" + ",".join(c.cell_id for c in mine)], progress=False,
                             log=lambda _: None)
        assert (summary.ok, summary.failed) == (len(mine), 0)
        dirs.append(out)
    res = shard.merge(dirs, tmp_path / "merged", require_complete=True)
    df = results.load(tmp_path / "merged")
    assert sorted(df["cell_id"]) == sorted(c.cell_id for c in all_cells) and res.missing == []
    assert (df["status"] == "ok").all() and df["macs"].notna().all()
    # same model and level -> same MACs per sample whichever shard measured it
    dense = df[df["level"] == 0]
    assert dense["params"].nunique() == 1
