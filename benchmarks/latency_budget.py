"""Latency-budget plans against reality: measure a model's latency table here, plan to budgets, measure.

For each model: ``pb.latency_table`` (one thread, batch 1), then for each budget the latency plan (L1 scores)
is applied and timed paired against the dense model; uniform ratio plans (round_to 1 and 8) on a grid of ratios
are timed the same way, and the parameters uniform pruning keeps at the budget plan's measured latency are
interpolated from that grid. Each budget is also met by ``pb.prune_to_latency`` (plans corrected by paired
measurements), whose kept model is timed again apart. Writes a Markdown table and JSON lines.

    python benchmarks/latency_budget.py --models cifar_resnet56 resnet18 mobilenet_v2 --out results/reference/...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import pybench as pb

SIZES = {"cifar_resnet56": 32, "resnet18": 224, "mobilenet_v2": 224}


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def measured(dense, pruned, x) -> float:
    r = pb.measure.paired_latency(dense, pruned, x, target_ci=0.02, max_time_s=8, threads=1)
    return 1.0 / r.speedup


def at_latency(grid: dict, lat: float, rt: int) -> float | None:
    """Parameters kept by uniform round_to ``rt`` pruning at measured latency ``lat`` (interpolated on its grid)."""
    lats, ps = zip(*grid[rt], strict=True)
    return float(np.interp(lat, lats, ps)) if min(lats) <= lat <= max(lats) else None


def run(name: str, budgets: list[float], out: Path, point_time: float, reuse: bool) -> list[dict]:
    torch.manual_seed(0)
    model = pb.zoo.create(name, num_classes=10).eval()
    x = torch.randn(1, 3, SIZES.get(name, 224), SIZES.get(name, 224))
    saved = out / f"lut-{name}.json"
    if reuse and saved.exists():  # the table of an earlier run on this machine (its build time kept)
        table = pb.LatencyTable.load(saved)
        table.check(device="cpu", batch_size=1, threads=1)
        build_s = None
    else:
        t0 = time.perf_counter()
        table = pb.latency_table(model, x, threads=1, max_time_s=point_time)
        build_s = time.perf_counter() - t0
        table.save(saved)
        from pybench.bench.lut_plot import plot_staircases

        plot_staircases(table, out / f"lut-{name}.png")
    graph = pb.trace(model, x)
    scores = pb.score(model, graph, "l1")
    dense_params = params(model)
    grid = {}
    for rt in (1, 8):
        pts = []
        for r in np.arange(0.1, 0.85, 0.1):
            p = pb.plan(graph, scores, ratio=float(r), round_to=rt)
            pm = pb.apply(model, p)
            pts.append((measured(model, pm, x), params(pm) / dense_params))
        grid[rt] = sorted(pts)
    rows = []
    for b in budgets:
        p = pb.plan(graph, scores, latency_budget=b, lut=table)
        pm = pb.apply(model, p)
        lat = measured(model, pm, x)
        # corrected by paired measurements; the model it keeps is timed again, apart from the rounds that chose it
        pc, _, fit = pb.prune_to_latency(model, x, b, table, rounds=4, tolerance=0.05, max_time_s=8)
        lat_c = measured(model, pc, x)
        row = {"model": name, "input": list(x.shape), "budget": b, "predicted": p.predicted_latency,
               "measured": lat, "error": lat / b - 1, "params_kept": params(pm) / dense_params,
               "corrected_measured": lat_c, "corrected_error": lat_c / b - 1, "corrected_rounds": len(fit.rounds),
               "corrected_params_kept": params(pc) / dense_params,
               "table_build_s": build_s, "dense_ms": table.dense_ms}
        for rt in grid:
            row[f"uniform_r{rt}_params_kept"] = at_latency(grid, lat, rt)
            row[f"uniform_r{rt}_params_kept_corrected"] = at_latency(grid, lat_c, rt)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["cifar_resnet56", "resnet18", "mobilenet_v2"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    ap.add_argument("--point-time", type=float, default=0.5)
    ap.add_argument("--out", default="results/reference/cpu-epyc-2core/latency-budget")
    ap.add_argument("--reuse-tables", action="store_true", help="plan on the tables already in --out")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "latency-budget.jsonl", "a") as f:
        for name in a.models:
            for row in run(name, a.budgets, out, a.point_time, a.reuse_tables):
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
    lines = ["| model | budget | predicted | measured, table's plan | error | measured, corrected plan (rounds) | "
             "error | params kept (table / corrected) | uniform r1 / r8 params kept at the corrected plan's latency | "
             "table build s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        build = "reused" if r["table_build_s"] is None else f"{r['table_build_s']:.0f}"
        lines.append(f"| {r['model']} | {r['budget']} | {r['predicted']:.3f} | {r['measured']:.3f} | "
                     f"{r['error']:+.1%} | {r['corrected_measured']:.3f} ({r['corrected_rounds']}) | "
                     f"{r['corrected_error']:+.1%} | {r['params_kept']:.3f} / {r['corrected_params_kept']:.3f} | "
                     f"{fmt(r['uniform_r1_params_kept_corrected'])} / {fmt(r['uniform_r8_params_kept_corrected'])} | "
                     f"{build} |")
    (out / "latency-budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
