"""Latency-budget plans against uniform pruning at the same measured latency, after the same fine-tune.

Per seed: cifar_resnet20 trained on scikit-learn's digits at 32x32 (the CIFAR-scale stand-in that ships); its
latency table measured here (batch 1, one thread; once, the timing does not depend on the weights); for each
budget, ``pb.prune_to_latency`` (L1 scores, plans corrected by paired measurements), then uniform L1 ratio plans
(round_to 1 and 8) whose ratio is bisected until their paired latency matches the budget plan's measured one (the
budget plan scores by ``--criterion``, Taylor by default as in HALP, on 8 training batches, and removes at most
``--max-ratio`` of any group: without that cap the greedy thins the first stage, where batch-1 latency sits, to a
channel or two). All
three are fine-tuned alike and evaluated on the 360 test images. Writes a Markdown table and JSON lines.

    python benchmarks/latency_accuracy.py --seeds 0 1 2 --budgets 0.7 0.5 --out results/reference/...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import pybench as pb
from pybench import data, train

X = torch.randn(1, 3, 32, 32)
TRAIN = {"epochs": 10, "optimizer": "adam", "lr": 0.01, "scheduler": "cosine"}
TUNE = {"epochs": 6, "optimizer": "adam", "lr": 0.005, "scheduler": "cosine"}


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def measured(dense: torch.nn.Module, pruned: torch.nn.Module) -> float:
    r = pb.measure.paired_latency(dense, pruned, X, target_ci=0.02, max_time_s=4, threads=1)
    return 1.0 / r.speedup


def fit(model: torch.nn.Module, loaders, recipe: dict, seed: int) -> float:
    torch.manual_seed(seed)
    train.train(model, loaders.train, progress=False, seed=seed, **recipe)
    train.recalibrate_bn(model, loaders.train, 10)
    return float(train.evaluate(model.eval(), loaders.test)["top1"])


def uniform_at(dense: torch.nn.Module, target: float, round_to: int,
               steps: int = 6) -> tuple[float, torch.nn.Module, float]:
    """(ratio, model, measured latency) of the uniform L1 plan whose paired latency is nearest ``target``."""
    graph = pb.trace(dense, X)
    scores = pb.score(dense, graph, "l1")
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        r = (lo + hi) / 2
        m = pb.apply(dense, pb.plan(graph, scores, ratio=r, round_to=round_to))
        lat = measured(dense, m)
        if best is None or abs(lat - target) < abs(best[2] - target):
            best = (r, m, lat)
        lo, hi = (r, hi) if lat > target else (lo, r)
    return best


def run(seeds: list[int], budgets: list[float], out: Path, criterion: str, normalize_by: str,
        max_ratio: float) -> list[dict]:
    torch.set_num_threads(1)
    rows, table = [], None
    for seed in seeds:
        loaders = data.loaders("digits", batch_size=64, seed=seed, eval_batch_size=360, size=32)
        torch.manual_seed(seed)
        dense = pb.zoo.create("cifar_resnet20", num_classes=10)
        dense_acc = fit(dense, loaders, TRAIN, seed)
        dense.eval()
        if table is None:
            t0 = time.perf_counter()
            table = pb.latency_table(dense, X, threads=1, max_time_s=0.5)
            table.save(out / "lut-cifar_resnet20-digits.json")
            print(f"table: {time.perf_counter() - t0:.0f} s", flush=True)
        for b in budgets:
            calib = [batch for _, batch in zip(range(8), loaders.train, strict=False)]
            pruned, _, lfit = pb.prune_to_latency(dense, X, b, table, criterion=criterion, data=calib,
                                                  normalize_by=normalize_by, max_ratio=max_ratio, rounds=4,
                                                  max_time_s=4)
            variants = {"budget": (pruned, measured(dense, pruned), None)}  # timed again, apart from its rounds
            for rt in (1, 8):
                r, m, lat = uniform_at(dense, lfit.measured, rt)
                variants[f"uniform r{rt}"] = (m, lat, r)
            for name, (m, lat, ratio) in variants.items():
                kept = params(m) / params(dense)
                acc = fit(m, loaders, TUNE, seed)
                rows.append({"seed": seed, "budget": b, "plan": name, "ratio": ratio, "measured_latency": lat,
                             "params_kept": kept, "top1": acc, "dense_top1": dense_acc,
                             "rounds": len(lfit.rounds) if name == "budget" else None})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| budget | plan | measured latency / dense | params kept | top-1 after fine-tune | "
             "budget plan - this (pts, paired t, one-sided) |", "|---|---|---|---|---|---|"]
    for b in sorted({r["budget"] for r in rows}, reverse=True):
        at = [r for r in rows if r["budget"] == b]
        base = {r["seed"]: r["top1"] for r in at if r["plan"] == "budget"}
        for plan in ("budget", "uniform r1", "uniform r8"):
            sel = [r for r in at if r["plan"] == plan]
            lat, kept, acc = (np.array([r[k] for r in sel]) for k in ("measured_latency", "params_kept", "top1"))
            diff = ""
            if plan != "budget":
                d = np.array([base[r["seed"]] - r["top1"] for r in sel]) * 100
                p = stats.ttest_rel([base[r["seed"]] for r in sel], acc, alternative="greater").pvalue
                diff = f"{d.mean():+.1f} +- {d.std(ddof=1):.1f}, p {p:.2f}"
            lines.append(f"| {b:g} | {plan} | {lat.mean():.3f} +- {lat.std(ddof=1):.3f} | "
                         f"{kept.mean():.3f} +- {kept.std(ddof=1):.3f} | {acc.mean() * 100:.1f} +- "
                         f"{acc.std(ddof=1) * 100:.1f} | {diff} |")
    dense = np.array(sorted({(r["seed"], r["dense_top1"]) for r in rows}))[:, 1]
    lines.append(f"\nDense top-1: {dense.mean() * 100:.1f} +- {dense.std(ddof=1) * 100:.1f} ({len(dense)} seeds).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5])
    ap.add_argument("--criterion", default="taylor", help="the budget plan's scores (uniform plans use l1)")
    ap.add_argument("--normalize-by", default="mean")
    ap.add_argument("--max-ratio", type=float, default=0.75, help="the budget plan's most removed of one group")
    ap.add_argument("--out", type=Path, default=Path("results/reference/cpu-epyc-2core/latency-budget"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = run(a.seeds, a.budgets, a.out, a.criterion, a.normalize_by, a.max_ratio)
    (a.out / "accuracy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (a.out / "accuracy.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
