"""summary.md and summary.json of a GPU proof folder (benchmarks/gpu_proof.py writes the folder, then runs this).

    python benchmarks/gpu_proof_summary.py OUT [--dry-run]

Reads OUT/proof/: steps.json (every step's outcome), env.json, cuda-tests.xml (pytest's JUnit XML), the
sanitizer logs, ops-bench.json and the suite's run folder, and writes OUT/summary.md with: the machine, the steps
(state, seconds, budget), the CUDA test counts, the sanitizer error counts, the bandwidth table, the realised
speedup table (latency speedup against MACs speedup per model, level, dtype and batch) and every failure.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tabulate import tabulate

SANITIZERS = ("memcheck", "racecheck", "initcheck")
_SUMMARY = re.compile(r"=+ ERROR SUMMARY: (\d+) errors?")
_HEADER = re.compile(r"^=+ (?! )(.*)$")  # a report's first line; its detail lines are indented
_NOT_ERRORS = ("COMPUTE-SANITIZER", "ERROR SUMMARY", "RACECHECK SUMMARY", "LEAK SUMMARY", "Target application")


def _md(rows: list[list[Any]], head: list[str]) -> str:
    return tabulate(rows, head, tablefmt="github", disable_numparse=True) if rows else "(none)"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sanitizer_counts(log: Path) -> dict[str, Any]:
    """{errors: the tool's ERROR SUMMARY count (None if it never printed one), in_pybench: reports whose kernel
    is one of pybench's, first: the first report's lines}."""
    if not log.is_file():
        return {"errors": None, "in_pybench": None, "first": []}
    lines = log.read_text(errors="replace").splitlines()
    errors = None
    ours, first, pending = 0, [], False
    for k, line in enumerate(lines):
        m = _SUMMARY.search(line)
        if m:
            errors = int(m.group(1))
            continue
        h = _HEADER.match(line)
        if h and not h.group(1).startswith(_NOT_ERRORS):
            if not first:
                first = lines[k:k + 6]
            pending = True
            if "pybench" in line:
                ours, pending = ours + 1, False
        elif pending and re.match(r"^=+\s+at ", line):
            ours += "pybench" in line
            pending = False
    return {"errors": errors, "in_pybench": ours if errors is not None else None, "first": first}


def junit_counts(path: Path) -> dict[str, Any]:
    """Test counts and the failing tests from pytest's JUnit XML (None where the file is missing or cut short)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {"tests": None}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    total["failed"] = []
    for case in root.iter("testcase"):
        for bad in (*case.findall("failure"), *case.findall("error")):
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            total["failed"].append(f"{case.get('classname')}::{case.get('name')}: {(msg[0] if msg else '')[:200]}")
    return total


def _f(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return format(v, fmt)


def ops_table(bench: dict[str, Any] | None) -> tuple[str, list[str]]:
    """(the bandwidth table, the cases that missed a target)."""
    if not bench:
        return "(no ops-bench results)", []
    rows, missed = [], []
    for r in bench["rows"]:
        share = r.get("copy_share")
        met = r.get("bandwidth_met")
        rows.append([r["op"], r["layer"], r["dtype"], f"{r['mbytes']:.0f}", f"{r['fused_ms']:.3f}",
                     f"{r['fused_gbs']:.0f}", _f(share and share * 100, ".0f"),
                     "" if met is None else ("yes" if met else "NO"), f"{r['ratio']:.1f}x",
                     "yes" if r["ratio_met"] else "NO"])
        if met is False or not r["ratio_met"]:
            missed.append(f"ops-bench {r['op']} {r['layer']} {r['dtype']}: {r['fused_gbs']:.0f} GB/s "
                          f"({_f(share and share * 100, '.0f')} % of copy), {r['ratio']:.1f}x eager "
                          f"(target {r['target_ratio']:g}x)")
    bw = bench.get("bandwidth", {})
    head = ["op", "case", "dtype", "MB", "fused ms", "GB/s", "% of copy", ">= 85 % (>= 256 MB)", "vs eager",
            "eager target"]
    note = (f"Copy {bw.get('copy_gbs', 0):.0f} GB/s (read + write), sum {bw.get('sum_gbs', 0):.0f} GB/s, over "
            f"{bw.get('mbytes', 0):.0f} MB, measured in the same run.")
    return _md(rows, head) + "\n\n" + note, missed


def _clocks_under_load(run: Path) -> dict[str, Any]:
    """cell id -> the SM clock read right after its timed loops (records' details.gpu_telemetry)."""
    out = {}
    for line in (run / "records.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out[rec.get("cell_id")] = ((rec.get("details") or {}).get("gpu_telemetry") or {}).get("sm_clock_mhz")
    return out


def speedup_table(run: Path) -> tuple[str, list[str], list[dict[str, Any]]]:
    """(the realised speedup table, failed cells, its rows as dicts) of the suite's run folder."""
    if not (run / "records.jsonl").is_file():
        return "(no suite records)", [], []
    from pybench.bench import report, results

    df = results.load(run)
    failed = [f"cell {r['cell_id']} {r['model']} level {r['level']:g} bs {r['batch_size']} {r['dtype']}: "
              f"{(str(r.get('error') or '').strip().splitlines() or [''])[0][:200]}"
              for _, r in df[df["status"] != "ok"].iterrows()]
    a = report.analyse(df)
    if not len(a):
        return "(no pruned cell with a dense baseline measured)", failed, []
    ok = df[df["status"] == "ok"]
    key = ["model", "batch_size", "dtype", "device"]
    dense_energy = {tuple(r[k] for k in key): r.get("energy_j_per_item") for _, r in ok[ok["level"] == 0].iterrows()}
    clocks = _clocks_under_load(run)
    rows, dicts = [], []
    for _, r in a.sort_values(["model", "level", "dtype", "batch_size"]).iterrows():
        e_dense, e_pruned = dense_energy.get(tuple(r[k] for k in key)), r.get("energy_j_per_item")
        realised, macs = r.get("speedup"), r.get("theoretical_speedup")
        d = {"model": r["model"], "level": r["level"], "dtype": r["dtype"], "batch_size": int(r["batch_size"]),
             "dense_ms": r.get("dense_latency_p50_ms"), "pruned_ms": r.get("latency_p50_ms"), "speedup": realised,
             "speedup_ci": [r.get("speedup_ci_low"), r.get("speedup_ci_high")] if r.get("speedup_paired") else None,
             "macs_speedup": macs, "realised_over_macs": realised / macs if realised and macs else None,
             "noise": r.get("speedup_noise"), "dense_peak_mib": (r.get("dense_peak_memory_bytes") or 0) / 2**20,
             "pruned_peak_mib": (r.get("peak_memory_bytes") or 0) / 2**20, "dense_mj_per_item":
             e_dense * 1e3 if e_dense else None, "pruned_mj_per_item": e_pruned * 1e3 if e_pruned else None,
             "sm_clock_mhz": clocks.get(r["cell_id"])}
        dicts.append(d)
        rows.append([d["model"], f"{d['level']:g}", d["dtype"], d["batch_size"], _f(d["dense_ms"], ".3f"),
                     _f(d["pruned_ms"], ".3f"), report.speedup_cell(r), _f(macs, ".2f") + "x",
                     _f(d["realised_over_macs"], ".2f"), _f(d["noise"] and d["noise"] * 100, ".0f"),
                     f"{d['dense_peak_mib']:.0f} -> {d['pruned_peak_mib']:.0f}",
                     f"{_f(d['dense_mj_per_item'], '.2f')} -> {_f(d['pruned_mj_per_item'], '.2f')}",
                     "" if d["sm_clock_mhz"] is None else d["sm_clock_mhz"]])
    head = ["model", "level", "dtype", "batch", "dense ms", "pruned ms", "speedup", "MACs speedup",
            "realised / MACs", "noise %", "peak MiB", "energy mJ/item", "SM MHz (pruned, after timing)"]
    return _md(rows, head), failed, dicts


def build(out: Path, dry_run: bool = False) -> tuple[str, dict[str, Any]]:
    """The summary's Markdown and its JSON twin."""
    proof = out / "proof"
    steps = _read_json(proof / "steps.json") or []
    env = _read_json(proof / "env.json") or {}
    gpu = (env.get("gpus") or [{}])[0]
    failures: list[str] = []
    md = [f"# pybench GPU proof{' (dry run: no GPU, CPU steps only)' if dry_run else ''}", ""]
    machine = [["GPU", gpu.get("name") or env.get("gpu_reason", "none")], ["driver", gpu.get("driver_version")],
               ["compute capability", gpu.get("compute_cap")], ["memory MiB", gpu.get("memory.total")],
               ["SM clock MHz (now / max)", f"{gpu.get('clocks.sm', '')} / {gpu.get('clocks.max.sm', '')}"],
               ["memory clock MHz (now / max)", f"{gpu.get('clocks.mem', '')} / {gpu.get('clocks.max.mem', '')}"],
               ["power limit W", gpu.get("power.limit")], ["temperature C", gpu.get("temperature.gpu")],
               ["torch (version, CUDA, GPU seen)", env.get("torch")], ["nvcc", " ".join(env.get("nvcc") or [])],
               ["compute-sanitizer", " ".join(env.get("compute-sanitizer") or []) or "not found"],
               ["python", env.get("python")], ["CPUs", env.get("cpus")], ["host", env.get("host")],
               ["pybench commit", (env.get("git_commit") or "unknown (no git checkout)")
                + (" (uncommitted changes)" if env.get("git_dirty") else "")]]
    md += ["## Machine", "", _md([[k, "" if v is None else v] for k, v in machine], ["", ""]), ""]

    rows = []
    for s in steps:
        rows.append([s["name"], s["state"], f"{s['seconds']:.1f}", f"{s['budget_s']:.0f}", s["note"]])
        if s["state"] in ("failed", "budget"):
            failures.append(f"step {s['name']} {s['state']}: {s['note']} (log proof/{s['log']})"
                            + "".join(f"\n    {t}" for t in s.get("tail", [])[-6:]))
    used = sum(s["seconds"] for s in steps)
    md += ["## Steps", "", _md(rows, ["step", "state", "seconds", "budget s", "note"]), "",
           f"{used:.0f} s in all.", ""]

    tests = junit_counts(proof / "cuda-tests.xml")
    md += ["## CUDA tests (pytest -m cuda)", ""]
    if tests["tests"] is None:
        md += ["(no JUnit XML: the step did not run to its end)" if not dry_run else
               "(dry run: collected only; see proof/cuda_tests.log)", ""]
    else:
        md += [f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
               f"{tests['skipped']} skipped, of {tests['tests']}.", ""]
        failures += [f"test {t}" for t in tests["failed"]]

    san_rows, san = [], {}
    for tool in SANITIZERS:
        c = sanitizer_counts(proof / f"{tool}.log")
        san[tool] = c
        state = next((s["state"] for s in steps if s["name"] == tool), "not planned")
        san_rows.append([tool, state, "" if c["errors"] is None else c["errors"],
                         "" if c["in_pybench"] is None else c["in_pybench"]])
        if c["errors"]:
            failures.append(f"{tool}: {c['errors']} error(s), {c['in_pybench']} in pybench kernels; first:"
                            + "".join(f"\n    {t}" for t in c["first"]))
    md += ["## compute-sanitizer over benchmarks/gpu_sanitize_ops.py", "",
           _md(san_rows, ["tool", "step", "errors", "in pybench kernels"]), ""]

    bench = _read_json(proof / "ops-bench.json")
    table, missed = ops_table(bench)
    failures += missed
    md += ["## Fused ops: bandwidth and ratio to eager (pybench ops-bench)", "", table, ""]

    try:
        table, failed_cells, speedups = speedup_table(proof / "suite")
    except Exception as e:  # pandas / pybench unimportable: say so, keep the rest of the summary
        table, failed_cells, speedups = f"(could not read the suite's records: {type(e).__name__}: {e})", [], []
    failures += failed_cells
    md += ["## Realised speedup: pruned vs dense on the GPU (suites/gpu-proof.toml)", "",
           "Speedup is dense / pruned latency timed alternately in one process, with its 95 % interval (* : the "
           "interval did not reach [metrics] target_ci; (unpaired): dense p50 / pruned p50 of two cells); MACs "
           "speedup is dense MACs / pruned MACs; realised / MACs under 1 means the GPU turns less of the removed "
           "work into time.", "", table, ""]
    md += [f"## Failures ({len(failures)})", ""] + ([f"- {f}" for f in failures] or ["None."]) + [""]
    data = {"dry_run": dry_run, "environment": env, "steps": steps, "cuda_tests": tests, "sanitizers": san,
            "ops_bench": bench, "speedups": speedups, "failures": failures}
    return "\n".join(md), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the proof's output folder (holds proof/)")
    parser.add_argument("--dry-run", action="store_true", help="the proof ran without a GPU")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not (out / "proof").is_dir():
        print(f"gpu_proof_summary: {out} has no proof/ folder (run benchmarks/gpu_proof.sh first)", file=sys.stderr)
        return 2
    md, data = build(out, args.dry_run)
    (out / "summary.md").write_text(md)
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
