"""pybench.bench.executors: the local executor and a local Ray instance (2 CPUs) give the same records for a
CPU suite."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pybench.bench import executors, results
from pybench.bench import suite as psuite

SUITE = """
[suite]
name = "exectest"
[matrix]
models = ["cifar_resnet20"]
levels = [0, 0.3, 0.5]
criteria = ["l1"]
batch_sizes = [1, 2]
[models.cifar_resnet20]
input_size = [3, 16, 16]
[metrics]
collect = ["macs", "latency"]
repeats = 1
warmup = 0
iters = 2
[run]
isolation = "group"
timeout_s = 120
"""


def _folder(path: Path, s: psuite.Suite) -> Path:
    path.mkdir(parents=True)
    (path / "suite.toml").write_text(s.text)
    (path / "run.json").write_text(json.dumps({"run_id": path.name, "suite": s.name}))
    return path


def _execute(ex: executors.Executor, folder: Path, cells: list[psuite.Cell]) -> list[dict]:
    from pybench import measure

    store = results.Store(folder)
    seen: list[dict] = []

    def emit(rec: dict) -> None:  # what the runner does with a record: append it to the store
        store.append(rec)
        seen.append(rec)

    ex.execute(folder, cells, run_id=folder.name, env=measure.environment().to_dict(), timeout_s=120,
               isolation="group", emit=emit, say=lambda _: None)
    return seen


@pytest.fixture(scope="module")
def suite() -> psuite.Suite:
    return psuite.loads(SUITE, "exectest.toml")


@pytest.fixture(scope="module")
def local_records(tmp_path_factory, suite) -> dict[str, dict]:
    folder = _folder(tmp_path_factory.mktemp("local") / "run", suite)
    recs = _execute(executors.LocalExecutor(), folder, suite.cells())
    return {r["cell_id"]: r for r in recs}


def test_local_executor_runs_every_cell(local_records, suite):
    assert sorted(local_records) == sorted(c.cell_id for c in suite.cells())
    assert all(r["status"] == "ok" for r in local_records.values())
    for r in local_records.values():
        assert r["metrics"]["latency_p50_ms"] > 0 and r["achieved"]["macs"] > 0
    dense = [r for r in local_records.values() if r["config"]["level"] == 0]
    pruned = [r for r in local_records.values() if r["config"]["level"] == 0.5]
    assert dense[0]["achieved"]["params"] > pruned[0]["achieved"]["params"]


@pytest.mark.slow
def test_ray_matches_local_and_a_dead_worker_loses_only_its_cell(tmp_path, suite, local_records):
    pytest.importorskip("ray")
    cells = suite.cells()
    dense_bs1 = next(c for c in cells if c.level == 0 and c.batch_size == 1)
    pruned_bs2 = next(c for c in cells if c.level == 0.5 and c.batch_size == 2)
    # one cell's Ray worker dies once (retried: ok), another's on every attempt (failed after the retry)
    fault = f"die_once:{dense_bs1.cell_id};die:{pruned_bs2.cell_id}"
    ex = executors.RayExecutor(num_cpus=2, runtime_env={"env_vars": {"PYBENCH_RAY_FAULT": fault}})
    folder = _folder(tmp_path / "ray", suite)
    t0 = time.perf_counter()
    recs = _execute(ex, folder, cells)
    print(f"ray executor: {len(cells)} cells on a local 2-CPU Ray instance in {time.perf_counter() - t0:.1f} s")

    by_id = {r["cell_id"]: r for r in recs}
    assert len(recs) == len(cells) and sorted(by_id) == sorted(local_records)
    dead = by_id.pop(pruned_bs2.cell_id)
    assert dead["status"] == "failed" and "Ray worker died (2 attempt(s))" in dead["error"]
    assert dead["config"] == pruned_bs2.config
    for cid, r in by_id.items():
        loc = local_records[cid]
        assert r["status"] == "ok", r.get("error")
        assert r["config"] == loc["config"] and r["group_id"] == loc["group_id"]
        for k in ("params", "macs", "dense_params", "dense_macs", "params_kept", "macs_kept"):
            assert r["achieved"][k] == loc["achieved"][k], (cid, k)
        assert r["metrics"]["latency_p50_ms"] > 0
        assert r["details"]["executor"]["name"] == "ray"
    # the records went through the store: the run folder loads and resumes like a local one
    df = results.load(folder)
    assert len(df) == len(cells) and (df["status"] == "ok").sum() == len(cells) - 1
    assert set(results.Store(folder).finished(include_failed=False)) == set(by_id)
    # the dead-once cell was retried, and the retry wrote a marker in the shared run folder
    assert (folder / f".ray-fault-{dense_bs1.cell_id}").exists()


def test_unreachable_address_is_a_clear_error():
    pytest.importorskip("ray")
    with pytest.raises(ConnectionError, match=r"--address '127.0.0.1:1': no Ray cluster answers.*ray start --head"):
        executors.RayExecutor("127.0.0.1:1", connect_timeout_s=2).connect()
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        executors.RayExecutor("nonsense").connect()


def test_bad_arguments():
    with pytest.raises(ValueError, match="--executor 'dask'"):
        executors.get_executor("dask")
    with pytest.raises(ValueError, match="--address is for --executor ray"):
        executors.get_executor("local", address="1.2.3.4:6379")
    with pytest.raises(ValueError, match="cpus_per_cell must be > 0"):
        executors.RayExecutor(cpus_per_cell=0)
    with pytest.raises(ValueError, match="max_retries"):
        executors.RayExecutor(max_retries=-1)
    assert isinstance(executors.get_executor("ray", "auto"), executors.RayExecutor)


def test_cli_offers_exactly_the_registered_executors():
    """`pybench run --executor` lists its choices without importing the harness: they must be the registry's."""
    from pybench.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    choices = next(a.choices for a in run._actions if a.dest == "executor")
    assert sorted(choices) == sorted(executors.EXECUTORS)
