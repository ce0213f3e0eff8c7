"""The GPU proof script without a GPU: its dry run end to end, budgets, stopping a step at its budget, packing,
and the summary's readers (sanitizer logs, JUnit XML, a real run folder)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from pybench.bench import driver as runner
from pybench.bench import suite as S

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


proof = _load("gpu_proof")
summary = _load("gpu_proof_summary")
STEPS = ["env", "install", "verify", "cuda_tests", "memcheck", "racecheck", "initcheck", "ops_bench", "suite",
         "report"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("proof") / "out"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_proof.sh"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    return out, r


def test_the_plan_fits_nine_minutes_and_names_each_step():
    steps = proof.plan(Path("/tmp/x"), sys.executable, "9.0", "/opt/cuda/bin/compute-sanitizer")
    assert [s.name for s in steps] == STEPS
    assert sum(s.budget_s for s in steps) + proof.SUMMARY_RESERVE_S <= proof.TOTAL_BUDGET_S == 540
    install = steps[1]
    assert install.env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert {"--no-build-isolation", "--no-deps", "--no-index", "-e"} <= set(install.argv)
    for s in steps[4:7]:
        assert s.argv[:3] == ["/opt/cuda/bin/compute-sanitizer", "--tool", s.name]
        assert s.argv[-1].endswith("gpu_sanitize_ops.py") and s.env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"
    assert "--kernel-name" in steps[4].argv and "--kernel-name" not in steps[6].argv  # initcheck sees all writes
    assert steps[3].argv[steps[3].argv.index("-m", 2) + 1] == "cuda"  # pytest -m cuda
    assert steps[7].argv[steps[7].argv.index("--device") + 1] == "cuda"


def test_dry_run_prints_every_command_and_budget_and_exits_0(dry_run):
    out, r = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in STEPS:
        assert f"[{name}] budget " in r.stdout, name
    steps = {s["name"]: s for s in json.loads((out / "proof" / "steps.json").read_text())}
    assert [s for s in steps] == STEPS
    assert steps["install"]["state"] == steps["report"]["state"] == "printed"  # never run without a GPU
    for name in ("env", "verify", "cuda_tests", "memcheck", "ops_bench", "suite"):
        assert steps[name]["state"] == "ok", (name, steps[name])
        assert steps[name]["seconds"] <= steps[name]["budget_s"]
    proof_dir = out / "proof"
    assert "tests collected" in (proof_dir / "cuda_tests.log").read_text()
    assert "test_apply_equals_mask_on_the_device[resnet50-cuda]" in (proof_dir / "cuda_tests.log").read_text()
    assert ", 0 differ from the reference" in (proof_dir / "memcheck.log").read_text()
    assert "# suite gpu-proof: 24 cells" in (proof_dir / "suite.log").read_text()
    rows = json.loads((proof_dir / "ops-bench.json").read_text())["rows"]
    assert rows and all(row["fused_gbs"] > 0 for row in rows)
    env = json.loads((proof_dir / "env.json").read_text())
    assert env["python"] and "git_commit" in env


def test_dry_run_summary_has_every_section(dry_run):
    out, _ = dry_run
    md = (out / "summary.md").read_text()
    for heading in ("## Machine", "## Steps", "## CUDA tests", "## compute-sanitizer", "## Fused ops",
                    "## Realised speedup", "## Failures"):
        assert heading in md, heading
    data = json.loads((out / "summary.json").read_text())
    assert data["dry_run"] is True and [s["name"] for s in data["steps"]] == STEPS
    assert len(data["ops_bench"]["rows"]) == len(json.loads((out / "proof" / "ops-bench.json").read_text())["rows"])


def _step(name: str, code: str, budget: float, needs: str = "") -> object:
    return proof.Step(name, budget, [sys.executable, "-c", code], [sys.executable, "-c", code], "test", needs=needs)


def test_a_step_is_stopped_at_its_budget_with_its_children_and_the_rest_goes_on(tmp_path):
    pid_file = tmp_path / "child.pid"
    hang = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    steps = [_step("hang", hang, 2.0), _step("after", "print('fine')", 10), _step("needs_hang", "1", 10, "hang"),
             _step("fails", "raise SystemExit(4)", 10)]
    t0 = time.monotonic()
    outcomes = proof.run_proof(tmp_path, steps=steps, echo=lambda s: None)
    assert time.monotonic() - t0 < 20
    states = {o.name: (o.state, o.returncode) for o in outcomes}
    assert states == {"hang": ("budget", None), "after": ("ok", 0), "needs_hang": ("skipped", None),
                      "fails": ("failed", 4)}
    assert "stopped at its budget of 2 s" in outcomes[0].note
    assert "hang did not succeed" in outcomes[2].note
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert (tmp_path / "proof" / "after.log").read_text().endswith("fine\n")


def test_the_total_budget_caps_every_step(tmp_path):
    steps = [_step("slow", "import time; time.sleep(30)", 100), _step("late", "1", 100)]
    t0 = time.monotonic()
    outcomes = proof.run_proof(tmp_path, steps=steps, total_budget_s=proof.SUMMARY_RESERVE_S + 8,
                               echo=lambda s: None)
    assert time.monotonic() - t0 < 15
    assert outcomes[0].state == "budget" and "total budget ran out" in outcomes[0].note
    assert outcomes[1].state == "budget" and "total budget was spent" in outcomes[1].note


def test_only_and_skip_and_bad_step_names(tmp_path):
    steps = [_step("a", "1", 10), _step("b", "1", 10)]
    got = proof.run_proof(tmp_path, steps=steps, only=["b"], echo=lambda s: None)
    assert [o.state for o in got] == ["skipped", "ok"]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_proof.py"), "--dry-run", "--only", "nope",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no step 'nope'" in r.stderr and "install" in r.stderr


def test_pack_leaves_at_most_8_files_and_keeps_the_logs(tmp_path):
    p = tmp_path / "proof"
    (p / "suite" / "cache").mkdir(parents=True)
    (p / "suite" / "cache" / "pruned-x.pt").write_bytes(b"0" * 1000)
    (p / "suite" / "records.jsonl").write_text("{}\n")
    (p / "ops-bench.json").write_text("{}")
    (p / "memcheck.log").write_text("log")
    for name in ("summary.md", "summary.json"):
        (tmp_path / name).write_text("s")
    archive = proof.pack(tmp_path)
    files = sorted(f.name for f in tmp_path.iterdir())
    assert files == ["gpu-proof-logs.tar.gz", "ops-bench.json", "records.jsonl", "summary.json", "summary.md"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "proof/memcheck.log" in names and "proof/suite/records.jsonl" in names
    assert not any("cache" in n for n in names)


SANITIZER_LOG = """\
========= COMPUTE-SANITIZER
========= Invalid __global__ read of size 4 bytes
=========     at void pybench::(anonymous namespace)::runs_kernel<float, Moments<float>, float>(...)+0x1b0
=========     by thread (31,0,0) in block (2,0,0)
=========     Address 0x7f00 is out of bounds
========= Uninitialized __global__ memory read of size 4 bytes
=========     at void at::native::vectorized_elementwise_kernel<4, ...>(...)+0x2c0
=========     by thread (0,0,0) in block (0,0,0)
========= Error: Race reported between Write access at pybench::(anonymous namespace)::rows_kernel+0x90
=========     and Read access at pybench::(anonymous namespace)::rows_kernel+0xa0 [1024 hazards]
========= Target application returned an error
========= ERROR SUMMARY: 3 errors
"""


def test_sanitizer_counts_read_the_summary_and_attribute_pybench_kernels(tmp_path):
    log = tmp_path / "memcheck.log"
    log.write_text(SANITIZER_LOG)
    c = summary.sanitizer_counts(log)
    assert (c["errors"], c["in_pybench"]) == (3, 2)
    assert c["first"][0] == "========= Invalid __global__ read of size 4 bytes"
    log.write_text("compute-sanitizer: unknown option --kernel-name\n")
    assert summary.sanitizer_counts(log)["errors"] is None  # never ran: no count, not zero
    log.write_text("========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n")
    assert summary.sanitizer_counts(log) == {"errors": 0, "in_pybench": 0, "first": []}


def test_junit_counts_of_a_real_pytest_run(tmp_path):
    (tmp_path / "test_x.py").write_text(textwrap.dedent("""
        import pytest
        def test_ok(): pass
        def test_bad(): assert 1 == 2, "one is not two"
        @pytest.mark.skip(reason="no")
        def test_skip(): pass
    """))
    xml = tmp_path / "x.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    str(tmp_path / "test_x.py")], capture_output=True, timeout=120, cwd=tmp_path)
    c = summary.junit_counts(xml)
    assert (c["tests"], c["passed"], c["failures"], c["skipped"]) == (3, 1, 1, 1)
    assert len(c["failed"]) == 1 and "test_bad" in c["failed"][0] and "one is not two" in c["failed"][0]
    assert summary.junit_counts(tmp_path / "missing.xml") == {"tests": None}


TINY = """
[suite]
name = "tiny-proof"
[matrix]
models = ["cifar_resnet20"]
levels = [0, 0.5]
batch_sizes = [2]
[metrics]
collect = ["latency", "memory", "macs"]
repeats = 2
warmup = 1
iters = 3
"""


def test_summary_of_a_real_run_folder(tmp_path):
    run = tmp_path / "proof" / "suite"
    runner.run(S.loads(TINY, "tiny.toml"), run, progress=False, log=lambda s: None)
    (tmp_path / "proof" / "steps.json").write_text(json.dumps([{"name": "suite", "state": "ok", "seconds": 5.0,
                                                                 "budget_s": 105, "note": "", "log": "suite.log"}]))
    md, data = summary.build(tmp_path)
    recs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    dense = next(r for r in recs if r["config"]["level"] == 0)
    pruned = next(r for r in recs if r["config"]["level"] == 0.5)
    (row,) = data["speedups"]
    # the paired speedup the worker measured (dense and pruned alternately), with its interval
    assert row["speedup"] == pytest.approx(pruned["metrics"]["speedup"]) and "speedup" not in dense["metrics"]
    assert row["speedup_ci"] == [pruned["metrics"]["speedup_ci_low"], pruned["metrics"]["speedup_ci_high"]]
    assert f"{row['speedup']:.2f}x [{row['speedup_ci'][0]:.2f}, {row['speedup_ci'][1]:.2f}]" in md
    assert row["macs_speedup"] == pytest.approx(dense["achieved"]["macs"] / pruned["achieved"]["macs"])
    assert row["realised_over_macs"] == pytest.approx(row["speedup"] / row["macs_speedup"])
    assert f"{row['macs_speedup']:.2f}x" in md and "cifar_resnet20" in md
    assert data["failures"] == [] and "None." in md
