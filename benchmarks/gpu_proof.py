"""The GPU proof: install pybench against the machine's torch, then prove its CUDA path in one budgeted run.

    bash benchmarks/gpu_proof.sh [--out DIR] [--dry-run] [--pack] [--only STEP ...] [--skip STEP ...]

Steps, each with a time budget (killed at its budget, and the summary says so), all inside one total budget
(default 540 s, i.e. 9 minutes on an H100 / H200):

  env        GPU, driver, clocks, toolkit and torch versions (nvidia-smi, nvcc, torch)
  install    pip install --no-build-isolation --no-deps --no-index -e . with TORCH_CUDA_ARCH_LIST of the chip found
  verify     pybench._C loads and serves CUDA tensors
  cuda_tests pytest -m cuda: every op against its reference on the GPU, apply == mask on zoo models on CUDA
  memcheck, racecheck, initcheck
             compute-sanitizer over benchmarks/gpu_sanitize_ops.py (every op, dtype and layout): error counts
  ops_bench  pybench ops-bench --device cuda: GB/s against the copy bandwidth of the same run, ratio to eager
  suite      pybench run suites/gpu-proof.toml: resnet50 / mobilenet_v2 / efficientnet_b0, dense and pruned
  report     pybench report of the suite's run folder
  summary    summary.md and summary.json: the tables above and every failure

``--dry-run`` (no GPU needed) prints every step's command and budget and runs what a CPU can: the environment
probe, the import check, the CUDA tests' collection, the sanitizer workload on the CPU kernels, ops-bench on the
CPU, the suite's cell matrix and the summary. This file needs only the standard library, so it runs before pybench
is installed. docs/gpu.md says how to read the results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOTAL_BUDGET_S = 540.0  # 9 minutes: a failed step can be fixed and the proof run again within one lease
SUMMARY_RESERVE_S = 15.0  # kept back from the other steps so that the summary is always written
KILL_GRACE_S = 3.0
PACKED = ("summary.md", "summary.json", "ops-bench.json", "records.jsonl", "report.md", "report.html")


@dataclass
class Step:
    """One command of the proof. ``dry_argv`` is what a dry run executes instead (None: only printed)."""

    name: str
    budget_s: float
    argv: list[str]
    dry_argv: list[str] | None
    why: str
    env: dict[str, str] = field(default_factory=dict)
    needs: str = ""  # a step whose failure makes this one pointless (install -> everything that imports pybench)


@dataclass
class Outcome:
    """What became of a step. state: ok, failed, budget (stopped at its budget), skipped, printed (dry run)."""

    name: str
    state: str
    budget_s: float
    seconds: float = 0.0
    returncode: int | None = None
    command: str = ""
    log: str | None = None
    note: str = ""
    tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def toolkit_bin(name: str) -> str | None:
    """``name`` (compute-sanitizer, nvcc) from PATH, else from CUDA_HOME or the toolkit the nvcc on PATH runs."""
    found = shutil.which(name)
    if found:
        head = Path(found).read_bytes()[:4096] if Path(found).is_file() else b""
        if not head.startswith(b"#!"):
            return found
    roots = [os.environ.get("CUDA_HOME", "")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        head = Path(nvcc).read_bytes()[:4096]
        match = re.search(rb"exec\s+(\S+/nvcc)\b", head) if head.startswith(b"#!") else None
        real = Path(match.group(1).decode()) if match else Path(os.path.realpath(nvcc))
        roots.append(str(real.parent.parent))
    roots.append("/usr/local/cuda")
    for root in filter(None, roots):
        candidate = Path(root) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    return found


def gpu_arch(python: str = sys.executable) -> str | None:
    """The compute capability of GPU 0 as TORCH_CUDA_ARCH_LIST wants it ("9.0"): from nvidia-smi, else from torch;
    None where neither can tell (then setup.py's own default applies)."""
    asks = [["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            [python, "-c", "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))"]]
    for argv in asks:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        if out and re.fullmatch(r"\d+\.\d+", out[0]):
            return out[0]
    return None


def plan(out: Path, python: str, arch: str | None, sanitizer: str | None) -> list[Step]:
    """The proof's steps in order, with their budgets (seconds on an H100 / H200)."""
    proof = out / "proof"
    me = str(Path(__file__).resolve())
    workload = str(ROOT / "benchmarks" / "gpu_sanitize_ops.py")
    cli = [python, "-m", "pybench.cli"]
    install_env = {"MAX_JOBS": str(os.cpu_count() or 2)}
    if arch:
        install_env["TORCH_CUDA_ARCH_LIST"] = arch
    steps = [
        Step("env", 10, [python, me, "--probe-env", str(proof / "env.json")],
             [python, me, "--probe-env", str(proof / "env.json")], "GPU, driver, clocks, toolkit, torch"),
        Step("install", 120, [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                              "-e", str(ROOT)], None,
             f"build pybench._C against this torch for the chip found (TORCH_CUDA_ARCH_LIST={arch or 'unset'})",
             env=install_env),
        Step("verify", 15, [python, "-c", _VERIFY, "cuda"], [python, "-c", _VERIFY, "cpu"],
             "pybench._C loads and serves CUDA tensors", needs="install"),
        Step("cuda_tests", 90, [python, "-m", "pytest", "-m", "cuda", "tests", "-q", "-p", "no:cacheprovider",
                                "-o", "addopts=", "-rfEs", "--continue-on-collection-errors",
                                f"--junitxml={proof / 'cuda-tests.xml'}"],
             [python, "-m", "pytest", "-m", "cuda", "tests", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
              "--collect-only"], "every op against its reference on the GPU; apply == mask on CUDA", needs="install"),
    ]
    for tool in ("memcheck", "racecheck", "initcheck"):
        # initcheck checks every kernel: writes by torch's kernels must be seen for pybench's reads to count as
        # initialised; memcheck and racecheck instrument only pybench's kernels (torch's run at full speed)
        only_ours = [] if tool == "initcheck" else ["--kernel-name", "kns=pybench"]
        argv = [sanitizer or "compute-sanitizer", "--tool", tool, *only_ours, "--print-limit", "100",
                "--error-exitcode", "3", python, workload]
        steps.append(Step(tool, 30, argv, [python, workload, "--device", "cpu"] if tool == "memcheck" else None,
                          f"compute-sanitizer {tool} over every op, dtype and layout",
                          env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, needs="install"))
    steps += [
        Step("ops_bench", 50, [*cli, "ops-bench", "--device", "cuda", "--repeats", "5", "--sizes", "all", "--json",
                               str(proof / "ops-bench.json")],
             [*cli, "ops-bench", "--device", "cpu", "--repeats", "1", "--sizes", "layers", "--op", "channel_stats",
              "--json", str(proof / "ops-bench.json")],
             "each op's GB/s against the copy bandwidth (>= 85 % at >= 256 MB) and its ratio to eager",
             needs="install"),
        Step("suite", 120, [*cli, "run", str(ROOT / "suites" / "gpu-proof.toml"), "--out", str(proof / "suite"),
                            "--no-progress"],
             [*cli, "run", str(ROOT / "suites" / "gpu-proof.toml"), "--out", str(proof / "suite"), "--dry-run"],
             "resnet50, mobilenet_v2, efficientnet_b0 at 0 / 0.5, fp32 / fp16, batch 1 / 64", needs="install"),
        Step("report", 15, [*cli, "report", str(proof / "suite"), "--quiet"], None,
             "the suite's report.md / report.html", needs="suite"),
    ]
    return steps


_VERIFY = """
import sys, torch
from pybench import ops
table = ops.backend()
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())
print("pybench ops backend:", table)
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "torch sees no CUDA GPU"
    assert table["cuda"] == "pybench._C (CUDA)", f"CUDA tensors are served by {table['cuda']}, not the CUDA kernels"
    w = torch.randn(64, 32, 3, 3, device="cuda")
    torch.testing.assert_close(ops.channel_stats(w, 0), ops.ref_channel_stats(w, 0), rtol=1e-5, atol=1e-4)
    print("channel_stats on", torch.cuda.get_device_name(), "matches its reference")
"""


def probe_env(path: Path) -> dict[str, object]:
    """The machine as the proof found it: nvidia-smi's view of GPU 0, nvcc, compute-sanitizer, torch, git."""
    def run(argv: list[str]) -> str | None:
        """The command's output; None when it cannot run or fails (a copy of the tree without .git, say)."""
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    fields = ("name,driver_version,compute_cap,memory.total,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,"
              "power.limit,temperature.gpu,pstate,persistence_mode")
    env: dict[str, object] = {"python": sys.version.split()[0], "executable": sys.executable,
                              "cpus": os.cpu_count(), "host": os.uname().nodename}
    smi = shutil.which("nvidia-smi")
    if smi:
        for query in (fields, "name,driver_version,memory.total"):  # an older driver may not know every field
            text = run([smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"])
            if text:
                env["gpus"] = [dict(zip(query.split(","), (v.strip() for v in line.split(",")), strict=False))
                               for line in text.splitlines() if "," in line]
                break
        else:
            env["gpus"], env["gpu_reason"] = [], "nvidia-smi answered no query"
    else:
        env["gpus"] = []
        env["gpu_reason"] = "no nvidia-smi on PATH"
    for tool in ("nvcc", "compute-sanitizer"):
        exe = toolkit_bin(tool)
        env[tool] = (run([exe, "--version"]) or "").splitlines()[-1:] if exe else None
    env["torch"] = run([sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda, "
                        "torch.cuda.is_available())"])
    env["git_commit"] = run(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    status = run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    env["git_dirty"] = None if status is None else bool(status)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(env, indent=2))
    print(json.dumps(env, indent=2))
    return env


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's whole process group (pip's compilers, pytest's workers), SIGKILL after a grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, argv: list[str], budget_s: float, log: Path, echo: Callable[[str], None]) -> Outcome:
    """Run ``argv`` with its output in ``log``; stop it at ``budget_s``."""
    env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    outcome = Outcome(step.name, "ok", round(budget_s, 1), command=shlex.join(argv), log=log.name)
    start = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        try:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                    start_new_session=True)
        except OSError as e:
            outcome.state, outcome.note = "failed", f"could not start: {e}"
            return outcome
        try:
            outcome.returncode = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            outcome.state, outcome.note = "budget", f"stopped at its budget of {budget_s:.0f} s"
        except KeyboardInterrupt:
            _kill(proc)
            raise
    outcome.seconds = round(time.monotonic() - start, 1)
    if outcome.state == "ok" and outcome.returncode != 0:
        outcome.state, outcome.note = "failed", f"exit {outcome.returncode}"
    if outcome.state != "ok":
        outcome.tail = log.read_text(errors="replace").splitlines()[-12:]
    echo(f"[{step.name}] {outcome.state} in {outcome.seconds:.1f} s" + (f": {outcome.note}" if outcome.note else ""))
    return outcome


def run_proof(out: Path, *, dry_run: bool = False, only: list[str] | None = None, skip: list[str] | None = None,
              install: bool = True, total_budget_s: float = TOTAL_BUDGET_S, budget_scale: float = 1.0,
              python: str = sys.executable, steps: list[Step] | None = None,
              echo: Callable[[str], None] = print) -> list[Outcome]:
    """Run (or, dry, print and run what a CPU can) every step; returns their outcomes. ``steps`` replaces the
    plan (tests)."""
    proof = out / "proof"
    proof.mkdir(parents=True, exist_ok=True)
    arch = None if dry_run else gpu_arch(python)
    steps = steps if steps is not None else plan(out, python, arch, toolkit_bin("compute-sanitizer"))
    deadline = time.monotonic() + total_budget_s
    outcomes: list[Outcome] = []
    failed: set[str] = set()
    echo(f"# pybench GPU proof{' (dry run)' if dry_run else ''}: {len(steps)} steps, total budget "
         f"{total_budget_s:.0f} s, writing {out}")
    for step in steps:
        budget = step.budget_s * budget_scale
        argv = step.dry_argv if dry_run else step.argv
        echo(f"[{step.name}] budget {budget:.0f} s: {shlex.join(step.argv)}")
        if dry_run and argv is not None and argv != step.argv:
            echo(f"[{step.name}]   dry run, instead: {shlex.join(argv)}")
        if (only and step.name not in only) or (skip and step.name in skip) or (step.name == "install"
                                                                                and not install):
            outcomes.append(Outcome(step.name, "skipped", budget, command=shlex.join(step.argv), note="not asked for"))
            continue
        if step.needs in failed:
            outcomes.append(Outcome(step.name, "skipped", budget, command=shlex.join(step.argv),
                                    note=f"{step.needs} did not succeed"))
            failed.add(step.name)
            echo(f"[{step.name}] skipped: {step.needs} did not succeed")
            continue
        if argv is None:
            outcomes.append(Outcome(step.name, "printed", budget, command=shlex.join(step.argv),
                                    note="not run in a dry run"))
            continue
        left = deadline - time.monotonic() - SUMMARY_RESERVE_S
        if left < 5:
            outcomes.append(Outcome(step.name, "budget", budget, command=shlex.join(argv),
                                    note="the total budget was spent before this step"))
            failed.add(step.name)
            echo(f"[{step.name}] not run: the total budget is spent")
            continue
        o = run_step(step, argv, min(budget, left), proof / f"{step.name}.log", echo)
        if o.state == "budget" and left < budget:
            o.note = f"stopped when the total budget ran out ({left:.0f} s of its {budget:.0f} s)"
        if dry_run:
            o.note = ("dry run: " + o.note).strip(": ")
        outcomes.append(o)
        if o.state != "ok":
            failed.add(step.name)
    return outcomes


def write_summary(out: Path, outcomes: list[Outcome], dry_run: bool, python: str, budget_s: float,
                  echo: Callable[[str], None] = print) -> Outcome:
    """summary.md / summary.json through benchmarks/gpu_proof_summary.py (a subprocess: it imports pandas and
    pybench, which a failed install may have broken); a plain step table when that fails."""
    (out / "proof" / "steps.json").write_text(json.dumps([o.to_dict() for o in outcomes], indent=2))
    step = Step("summary", budget_s, [python, str(ROOT / "benchmarks" / "gpu_proof_summary.py"), str(out)]
                + (["--dry-run"] if dry_run else []), None, "summary.md and summary.json")
    o = run_step(step, step.argv, budget_s, out / "proof" / "summary.log", echo)
    if o.state != "ok" or not (out / "summary.md").is_file():
        lines = ["# pybench GPU proof: summary (fallback)", "",
                 f"The summary builder failed ({o.note}); its log is proof/summary.log.", "",
                 "| step | state | seconds | budget | note |", "|---|---|---|---|---|"]
        lines += [f"| {s.name} | {s.state} | {s.seconds} | {s.budget_s} | {s.note} |" for s in [*outcomes, o]]
        (out / "summary.md").write_text("\n".join(lines) + "\n")
        (out / "summary.json").write_text(json.dumps({"steps": [s.to_dict() for s in [*outcomes, o]]}, indent=2))
    return o


def pack(out: Path) -> Path:
    """Leave at most 8 files in ``out``: the summaries and main results, plus the rest in one tar.gz (the
    pruned-model cache left out)."""
    proof = out / "proof"
    for name, src in [("ops-bench.json", proof / "ops-bench.json"), ("records.jsonl", proof / "suite" /
                      "records.jsonl"), ("report.md", proof / "suite" / "report.md"),
                      ("report.html", proof / "suite" / "report.html")]:
        if src.is_file():
            shutil.copyfile(src, out / name)
    archive = out / "gpu-proof-logs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(proof, arcname="proof", filter=lambda t: None if "/cache" in t.name else t)
    shutil.rmtree(proof)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_proof", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", help="where everything goes (default: $OUT when set, else "
                        "results/gpu-proof/<UTC time>)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: print each step's command and budget, run "
                        "what a CPU can, write the summary, exit 0")
    parser.add_argument("--pack", action="store_true", default=None, help="leave only summary.md, summary.json, the "
                        "main results and one tar.gz of the logs in OUT (default when OUT comes from $OUT)")
    parser.add_argument("--no-pack", dest="pack", action="store_false", help="keep the proof/ folder as it is")
    parser.add_argument("--only", action="append", metavar="STEP", help="run only these steps (repeatable)")
    parser.add_argument("--skip", action="append", metavar="STEP", help="skip these steps (repeatable)")
    parser.add_argument("--no-install", action="store_true", help="use the pybench already installed")
    parser.add_argument("--total-budget", type=float, default=TOTAL_BUDGET_S, help="seconds for the whole proof "
                        f"(default {TOTAL_BUDGET_S:.0f})")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every step's budget (a slower "
                        "GPU or CPU than an H100 / H200 host)")
    parser.add_argument("--python", default=sys.executable, help="the Python that has torch (default: this one)")
    parser.add_argument("--probe-env", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_env:
        probe_env(Path(args.probe_env))
        return 0
    names = [s.name for s in plan(Path("."), args.python, None, None)]
    for wanted in (args.only or []) + (args.skip or []):
        if wanted not in names:
            parser.error(f"no step {wanted!r}; the steps are {', '.join(names)}")
    if args.total_budget <= SUMMARY_RESERVE_S or args.budget_scale <= 0:
        parser.error(f"--total-budget must exceed {SUMMARY_RESERVE_S:.0f} s and --budget-scale must be > 0")
    from_env = args.out is None and bool(os.environ.get("OUT"))
    out = Path(args.out or os.environ.get("OUT") or ROOT / "results" / "gpu-proof" / time.strftime(
        "%Y%m%dT%H%M%SZ", time.gmtime())).resolve()
    if (out / "proof").exists():
        parser.error(f"{out} already holds a proof/ folder: choose another --out")
    outcomes = run_proof(out, dry_run=args.dry_run, only=args.only, skip=args.skip, install=not args.no_install,
                         total_budget_s=args.total_budget, budget_scale=args.budget_scale, python=args.python)
    write_summary(out, outcomes, args.dry_run, args.python, SUMMARY_RESERVE_S)
    if args.pack if args.pack is not None else from_env:
        print(f"packed the logs into {pack(out)}")
    print((out / "summary.md").read_text())
    bad = [o.name for o in outcomes if o.state in ("failed", "budget")]
    if args.dry_run:
        return 1 if bad else 0
    print(f"GPU proof: {len(bad)} step(s) did not succeed{': ' + ', '.join(bad) if bad else ''}; see {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
