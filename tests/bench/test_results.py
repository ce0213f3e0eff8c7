"""The append-only store: whole-line records, torn lines tolerated and repaired, pandas loading, Parquet."""

from __future__ import annotations

import json
import math
import multiprocessing as mp

import pytest

from pybench.bench import results as R


def rec(cell_id: str, status: str = "ok", level: float = 0.0, p50: float = 1.0, **metrics) -> dict:
    return {"schema": R.SCHEMA_VERSION, "cell_id": cell_id, "group_id": "g" + cell_id, "run_id": "r", "status": status,
            "error": None if status == "ok" else "boom",
            "config": {"suite": "t", "model": "m", "criterion": "none" if level == 0 else "l1",
                       "schedule": "none" if level == 0 else "one_shot", "level": level, "batch_size": 1,
                       "dtype": "float32", "device": "cpu", "seed": 0},
            "achieved": {"params": 10, "macs": 100}, "metrics": {"latency_p50_ms": p50, **metrics},
            "environment": {"hostname": "h", "gpus": []}}


def test_append_and_read_roundtrip(tmp_path):
    st = R.Store(tmp_path)
    for i in range(5):
        st.append(rec(f"c{i}", p50=float(i)))
    got = st.records()
    assert [r["cell_id"] for r in got] == [f"c{i}" for i in range(5)]
    assert got[3]["metrics"]["latency_p50_ms"] == 3.0
    assert st.path.read_bytes().count(b"\n") == 5


def test_nan_becomes_null(tmp_path):
    st = R.Store(tmp_path)
    st.append(rec("a", latency_noise=float("nan"), x=float("inf")))
    line = st.path.read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert st.records()[0]["metrics"]["latency_noise"] is None


@pytest.mark.parametrize("tail", [b'{"schema": 1, "cell_id": "torn", "sta', b"garbage-without-newline",
                                  b"not json at all\n"])
def test_torn_last_line_is_skipped_then_repaired(tmp_path, tail):
    st = R.Store(tmp_path)
    st.append(rec("a"))
    st.append(rec("b"))
    good = st.path.read_bytes()
    with open(st.path, "ab") as f:
        f.write(tail)
    assert [r["cell_id"] for r in R.read_records(st.path)] == ["a", "b"]  # readable while torn
    assert R.repair(st.path) == len(tail)
    assert st.path.read_bytes() == good
    st.append(rec("c"))  # and appends after the repair are whole lines again
    assert [r["cell_id"] for r in st.records()] == ["a", "b", "c"]
    assert R.repair(st.path) == 0


def _writer(folder: str, k: int) -> None:
    st = R.Store(folder)
    for i in range(40):
        st.append(rec(f"w{k}-{i}", pad="x" * 3000))  # lines bigger than a pipe buffer's atomic size


def test_concurrent_appenders_never_interleave(tmp_path):
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=_writer, args=(str(tmp_path), k)) for k in range(3)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    lines = (tmp_path / R.RECORDS).read_bytes().splitlines()
    assert len(lines) == 120
    assert sorted(json.loads(x)["cell_id"] for x in lines) == sorted(f"w{k}-{i}" for k in range(3) for i in range(40))


def test_finished_keeps_last_status(tmp_path):
    st = R.Store(tmp_path)
    st.append(rec("a"))
    st.append(rec("b", status="failed"))
    assert set(st.finished()) == {"a", "b"}
    assert set(st.finished(include_failed=False)) == {"a"}
    st.append(rec("b"))  # retried and now ok
    assert st.finished(include_failed=False)["b"]["status"] == "ok"


def test_load_columns_and_latest(tmp_path):
    run1, run2 = tmp_path / "results" / "s" / "r1", tmp_path / "results" / "s" / "r2"
    R.Store(run1).append(rec("a"))
    R.Store(run1).append(rec("b", level=0.5, p50=0.5))
    R.Store(run1).append(rec("b", level=0.5, p50=0.25))  # a later record of the same cell wins
    R.Store(run2).append(rec("a", p50=2.0))
    df = R.load([run1, run2])
    for col in ["model", "criterion", "schedule", "level", "batch_size", "dtype", "device", "status", "cell_id",
                "latency_p50_ms", "params", "macs", "run"]:
        assert col in df.columns, col
    assert len(df) == 3
    assert df[(df.cell_id == "b")]["latency_p50_ms"].tolist() == [0.25]
    assert len(R.load([run1], latest=False)) == 3
    assert len(R.load(tmp_path / "results" / "s")) == 3  # a folder of runs, searched recursively
    assert sorted(df[df.cell_id == "a"]["latency_p50_ms"]) == [1.0, 2.0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        R.load(tmp_path / "nope")


def test_parquet_export(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    R.Store(tmp_path / "run").append(rec("a", p50=1.5))
    out = R.to_parquet(tmp_path / "run", tmp_path / "x.parquet")
    back = pd.read_parquet(out)
    assert back["latency_p50_ms"].tolist() == [1.5] and back["cell_id"].tolist() == ["a"]
    assert not math.isnan(back["level"][0])


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    st = R.Store(tmp_path)
    st.append(rec("a"))
    st.append(rec("b"))
    whole = st.path.read_bytes()
    st.path.write_bytes(whole[:-1])  # the writer died between the record and its newline
    assert R.repair(st.path) == 0
    assert st.path.read_bytes() == whole and [r["cell_id"] for r in st.records()] == ["a", "b"]
