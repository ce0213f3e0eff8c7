"""Latency-budget plans against reality: measure a model's latency table here, plan to budgets, measure.

For each model: ``pb.latency_table`` (one thread, batch 1), then for each budget the latency plan (L1 scores)
is applied and timed paired against the dense model; uniform ratio plans (round_to 1 and 8) on a grid of ratios
are timed the same way, and the parameters uniform pruning keeps at the budget plan's measured latency are
interpolated from that grid. Writes a Markdown table and JSON lines.

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


def run(name: str, budgets: list[float], out: Path, point_time: float) -> list[dict]:
    torch.manual_seed(0)
    model = pb.zoo.create(name, num_classes=10).eval()
    x = torch.randn(1, 3, SIZES.get(name, 224), SIZES.get(name, 224))
    t0 = time.perf_counter()
    table = pb.latency_table(model, x, threads=1, max_time_s=point_time)
    build_s = time.perf_counter() - t0
    table.save(out / f"lut-{name}.json")
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
        row = {"model": name, "input": list(x.shape), "budget": b, "predicted": p.predicted_latency,
               "measured": lat, "error": lat / b - 1, "params_kept": params(pm) / dense_params,
               "table_build_s": build_s, "dense_ms": table.dense_ms}
        for rt, pts in grid.items():
            lats, ps = zip(*pts, strict=True)
            row[f"uniform_r{rt}_params_kept"] = float(np.interp(lat, lats, ps)) if min(lats) <= lat <= max(lats) \
                else None
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
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "latency-budget.jsonl", "a") as f:
        for name in a.models:
            for row in run(name, a.budgets, out, a.point_time):
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
    lines = ["| model | budget | predicted | measured (paired) | error vs budget | params kept | uniform r1 at same "
             "latency | uniform r8 at same latency | table build s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['budget']} | {r['predicted']:.3f} | {r['measured']:.3f} | "
                     f"{r['error']:+.1%} | {r['params_kept']:.3f} | {fmt(r['uniform_r1_params_kept'])} | "
                     f"{fmt(r['uniform_r8_params_kept'])} | {r['table_build_s']:.0f} |")
    (out / "latency-budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
