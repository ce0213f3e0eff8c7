"""The CLI: --help everywhere, exit codes, and the reliability test: kill -9 a run at random moments, resume, and
no finished cell is lost or duplicated, the store always readable."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pybench import cli
from pybench.bench import results as R
from pybench.bench import suite as S

ROOT = Path(__file__).resolve().parents[2]
TINY = """
[suite]
name = "tiny"
[matrix]
models = ["xor_mlp"]
levels = [0.25, 0.5]
criteria = ["l1", "l2"]
batch_sizes = [1, 2, 4]
[metrics]
collect = ["latency", "macs"]
repeats = 2
warmup = 1
iters = 3
"""


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


@pytest.mark.parametrize("cmd", [[], ["run"], ["report"], ["compare"], ["check"], ["prune"], ["lut"], ["profile"],
                                 ["zoo"], ["ops-bench"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: pybench" in capsys.readouterr().out


def test_bad_usage_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[suite]\nname="bad"\n[matrix]\nmodels=["xor_mlp"]\ndtypes=["fp8"]\n')
    assert cli.main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'dtypes'" in err and "bfloat16" in err
    assert not (tmp_path / "results").exists()  # nothing ran
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert cli.main(["check", str(tmp_path / "nope"), "--baseline", str(tmp_path / "nope2")]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["check", str(tmp_path), "--baseline", str(tmp_path), "--threshold", "five"])
    assert e.value.code == 2
    assert cli.main(["prune", "not_a_model"]) == 2


def test_dry_run_prints_the_matrix(tiny, capsys):
    assert cli.main(["run", str(tiny), "--dry-run", "--filter", "criterion=l1,none"]) == 0
    out = capsys.readouterr().out
    assert "9 cells" in out  # dense 3 + l1 at two levels x 3 batch sizes
    assert out.count("| todo") == 9 and "l2" not in out


def test_run_report_check_compare(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert cli.main(["run", str(tiny), "--out", str(out), "--no-progress", "--filter", "criterion=l1,none",
                     "--filter", "batch_size=1"]) == 0
    assert len(R.load(out)) == 3
    assert cli.main(["report", str(out), "--quiet"]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert cli.main(["compare", str(out), str(out)]) == 0
    assert "latency_p50_ms ratio" in capsys.readouterr().out
    # a slower copy of the run fails the gate with exit 1 and a table of regressions
    slow = tmp_path / "slow"
    for r in R.Store(out).records():
        r["metrics"]["latency_p50_ms"] *= 2
        r["metrics"]["latency_noise"] = 0.0
        R.Store(slow).append(r)
    base = tmp_path / "base"
    for r in R.Store(out).records():
        r["metrics"]["latency_noise"] = 0.0
        R.Store(base).append(r)
    assert cli.main(["check", str(slow), "--baseline", str(base), "--threshold", "5%"]) == 1
    assert "3 regression(s)" in capsys.readouterr().out
    assert cli.main(["check", str(base), "--baseline", str(base), "--threshold", "5%"]) == 0
    assert cli.main(["check", str(base), "--baseline", str(base), "--threshold", "0.05"]) == 0
    capsys.readouterr()
    for bad in ("5", "1", "0", "-5%", "150%"):  # a bare 5 would be 500 %
        with pytest.raises(SystemExit) as e:
            cli.main(["check", str(base), "--baseline", str(base), "--threshold", bad])
        assert e.value.code == 2
    assert "would mean 500%; write a percentage (5%) or a fraction below 1 (0.05)" in capsys.readouterr().err
    # a gate that compares nothing (an empty run, another suite's baseline) fails with exit 2, naming why
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "records.jsonl").write_text("")
    assert cli.main(["check", str(empty), "--baseline", str(base)]) == 2
    assert "nothing was compared" in capsys.readouterr().err
    assert cli.main(["compare", str(empty), str(base)]) == 2
    # a baseline from another host is refused unless allowed, and both machines are printed
    foreign = tmp_path / "foreign"
    for r in R.Store(base).records():
        r["environment"]["hostname"] = "elsewhere"
        R.Store(foreign).append(r)
    assert cli.main(["check", str(base), "--baseline", str(foreign)]) == 2
    assert "another machine" in capsys.readouterr().err
    assert cli.main(["check", str(base), "--baseline", str(foreign), "--allow-foreign-baseline"]) == 0
    assert "baseline: elsewhere" in capsys.readouterr().out
    # a failing cell makes `run` exit 1
    monkeypatch.setenv("PYBENCH_FAULT", "raise:*")
    assert cli.main(["run", str(tiny), "--out", str(tmp_path / "f"), "--no-progress", "--filter", "level=0",
                     "--filter", "batch_size=1"]) == 1


def test_prune_and_profile(tmp_path, capsys):
    import torch

    f = tmp_path / "xor.pt"
    assert cli.main(["prune", "xor_mlp", "--ratio", "0.5", "-o", str(f)]) == 0
    assert "params 42 -> 22" in capsys.readouterr().out
    try:
        from pybench.prune import serialize
        model = serialize.load(f)
    except ImportError:
        model = torch.load(f, weights_only=False)
    assert model(torch.randn(3, 2)).shape == (3, 2) and model.fc1.out_features == 4
    assert cli.main(["profile", "xor_mlp", "--iters", "2", "--out", str(tmp_path / "tr")]) == 0
    assert "pruned" in capsys.readouterr().out



def test_profile_on_a_backend_writes_its_own_profile_and_refuses_what_cannot_run(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "ort"
    assert cli.main(["profile", "xor_mlp", "--iters", "2", "--out", str(out), "--backend", "onnxruntime",
                     "--backend-profile"]) == 0
    text = capsys.readouterr().out
    assert ", on onnxruntime" in text and "onnxruntime profile pruned: " in text
    own = sorted(out.glob("onnxruntime-*.json"))
    assert len(own) == 2 and all(json.loads(p.read_text()) for p in own)  # ONNX Runtime's event lists
    assert {p.name for p in out.glob("*.json")} >= {"dense.json", "pruned.json"}
    for argv, says in ((["--backend", "tensorrt"], "--backend tensorrt: backend 'tensorrt' runs on cuda only"),
                       (["--backend", "inductor:zz"], "backend 'inductor' has no mode 'zz'"),
                       (["--backend", "eager", "--backend-profile"], "backend 'eager' has no profiler of its own")):
        assert cli.main(["profile", "xor_mlp", "--iters", "1", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err


def _records_ok(store: R.Store) -> list[str]:
    recs = store.records()  # must always parse (a torn tail is skipped, never an exception)
    ids = [r["cell_id"] for r in recs]
    assert len(ids) == len(set(ids)), f"duplicated cells: {[i for i in ids if ids.count(i) > 1]}"
    return ids


def test_kill_9_at_random_moments_then_resume(tiny, tmp_path):
    """The reliability test: SIGKILL the run at random moments, resume each time; in the end every cell exactly
    once, all ok, the store readable after every kill, and no worker outlives its killed parent."""
    out = tmp_path / "run"
    expected = {c.cell_id for c in S.expand(S.load(tiny))}
    cmd = [sys.executable, "-m", "pybench.cli", "run", str(tiny), "--out", str(out), "--no-progress"]
    rng = random.Random(1234)
    store = R.Store(out)
    kills, seen = 0, 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(5):  # five runs killed at random moments (before, during and between cells), each resumed
        proc = subprocess.Popen(cmd + (["--resume"] if out.exists() else []), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(2.0, 25.0))
        except subprocess.TimeoutExpired:
            workers = psutil.Process(proc.pid).children(recursive=True)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            _, alive = psutil.wait_procs(workers, timeout=10)
            assert not alive, "a worker outlived its killed parent"
        ids = _records_ok(store)
        assert set(ids) <= expected and len(ids) >= seen  # nothing finished was lost
        seen = len(ids)
    final = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= 1
    ids = _records_ok(store)
    assert set(ids) == expected and len(ids) == len(expected)
    assert all(r["status"] == "ok" for r in store.records())
    print(f"kill -9 test: {kills} kills, {seen} cells done before the last resume, {len(ids)} cells in the end, "
          "each once")


def test_torn_record_from_a_kill_is_repaired_on_resume(tiny, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "pybench.cli", "run", str(tiny), "--out", str(out), "--no-progress",
            "--filter", "criterion=none,l1", "--filter", "batch_size=1"]
    assert subprocess.run(base, env=env, cwd=tmp_path, capture_output=True).returncode == 0
    recs = R.Store(out).records()
    assert len(recs) == 3
    # simulate a kill in the middle of appending the last record: drop it and leave half of its line
    lines = R.Store(out).path.read_bytes().splitlines(keepends=True)
    R.Store(out).path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert len(R.Store(out).records()) == 2
    p = subprocess.run(base + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "repaired" in p.stderr
    again = R.Store(out).records()
    assert sorted(r["cell_id"] for r in again) == sorted(r["cell_id"] for r in recs)
    assert all(json.loads(x) for x in R.Store(out).path.read_bytes().splitlines())
