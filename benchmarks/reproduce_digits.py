"""Reproduction on scikit-learn's digits (CPU): cifar_resnet20 trained to >= 95 % test accuracy, then one_shot
pruning to 50 % of its MACs with every criterion plus 2 fine-tune epochs, and Wang's gradual_global to a target.

    python benchmarks/reproduce_digits.py --out results/reproductions        # writes digits_criteria.md / .json

On a busy machine, split it: train once (``--dense FILE`` saves / reuses the dense weights), run parts in parallel
(``--only l1,l2 --parts DIR``, ``--only gradual --parts DIR``), then ``--merge DIR --out results/reproductions``.

The same functions run in tests/bench/test_reproductions.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

import pybench as pb
import pybench.prune.criteria.data_driven  # noqa: F401  (registers the data-driven criteria)
from pybench.prune import schedules

warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*reference.*")

CRITERIA = ("l1", "l2", "aaws", "fpgm", "bn_scale", "act_mean", "act_std", "apoz", "taylor", "lfe", "random")
TRAIN = {"epochs": 12, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "scheduler": "cosine"}
FINE_TUNE = {"lr": 0.01, "momentum": 0.9}
X1 = torch.zeros(1, 3, 32, 32)


def loaders(seed: int = 0) -> Any:
    return pb.data.loaders("digits", batch_size=64, seed=seed, eval_batch_size=256)


def train_dense(ld: Any, seed: int = 0, cache: str | None = None) -> torch.nn.Module:
    """cifar_resnet20 (10 classes) trained on the digits train split with :data:`TRAIN` (weights reused from /
    saved to ``cache`` when given)."""
    torch.manual_seed(seed)
    m = pb.zoo.create("cifar_resnet20", num_classes=10)
    if cache and os.path.exists(cache):
        m.load_state_dict(torch.load(cache, weights_only=True))
        return m.eval()
    pb.train.train(m, ld.train, seed=seed, progress=False, **TRAIN)
    if cache:
        torch.save(m.state_dict(), cache)
    return m.eval()


def calibration(ld: Any, n: int) -> DataLoader:
    """The first ``n`` training images (fixed, unshuffled) for the data-driven criteria."""
    ds = ld.train.dataset
    return DataLoader(Subset(ds, range(min(n, len(ds)))), batch_size=min(n, 64), shuffle=False)


def criterion_options(name: str, ld: Any) -> tuple[Any, dict[str, Any]]:
    """(data, options) per criterion: 128 calibration images; LFE (10 x N masks per group, P = 0.3) on 16."""
    if name == "lfe":
        return calibration(ld, 16), {"fraction": 0.3}
    if name in pybench.prune.criteria.data_driven.DATA_CRITERIA:
        return calibration(ld, 128), {}
    return None, {}


def one_shot_row(model: torch.nn.Module, ld: Any, criterion: str, macs_target: float = 0.5,
                 epochs: int = 2) -> dict[str, Any]:
    data, kw = criterion_options(criterion, ld)
    t0 = time.perf_counter()
    pruned, hist = schedules.one_shot(model, X1, macs_target=macs_target, criterion=criterion, data=data,
                                      criterion_kw=kw, train_loader=ld.train, val_loader=ld.val,
                                      fine_tune_epochs=epochs, fine_tune_kw={**FINE_TUNE, "seed": 0},
                                      search_steps=10, progress=False)
    test = pb.train.evaluate(pruned, ld.test)
    return {"criterion": criterion, "test_top1": test["top1"], "val_top1": hist[1]["accuracy"],
            "macs_kept": hist[1]["macs"] / hist[0]["macs"], "params_kept": hist[1]["params"] / hist[0]["params"],
            "channel_ratio": hist[1]["ratio"], "macs": hist[1]["macs"], "time_s": time.perf_counter() - t0}


def gradual_row(model: torch.nn.Module, ld: Any, drop: float = 0.02, rate: float = 0.05,
                max_steps: int = 2, epochs: int = 2) -> dict[str, Any]:
    dense_val = pb.train.evaluate(model, ld.val)["top1"]
    target = dense_val - drop
    t0 = time.perf_counter()
    pruned, hist = schedules.gradual_global(model, X1, ld.train, ld.val, target, rate=rate, criterion="aaws",
                                            fine_tune_epochs=epochs, fine_tune_kw={**FINE_TUNE, "seed": 0},
                                            max_steps=max_steps, progress=False)
    test = pb.train.evaluate(pruned, ld.test)
    return {"criterion": "aaws (gradual_global)", "rate": rate, "max_steps": max_steps, "fine_tune_epochs": epochs,
            "target_val_top1": target, "val_top1":
            pb.train.evaluate(pruned, ld.val)["top1"], "test_top1": test["top1"],
            "macs_kept": pb.measure.flops(pruned, X1).total_macs / hist[0]["macs"],
            "steps": len(hist) - 1, "accepted_steps": sum(1 for r in hist[1:] if r["accepted"]),
            "reached_target": pb.train.evaluate(pruned, ld.val)["top1"] >= target,
            "time_s": time.perf_counter() - t0,
            "history": [dict(r) for r in hist]}


def to_markdown(result: dict[str, Any]) -> str:
    from tabulate import tabulate

    d = result["dense"]
    rows = [[r["criterion"], f"{100 * r['test_top1']:.2f}", f"{100 * r['val_top1']:.2f}",
             f"{100 * r['macs_kept']:.1f}", f"{100 * r['params_kept']:.1f}", f"{r['channel_ratio']:.3f}",
             f"{r['time_s']:.0f}"] for r in result["one_shot"]]
    g = result.get("gradual_global")
    lines = [
        "# digits: cifar_resnet20, one_shot to 50 % of the MACs + 2 fine-tune epochs, per criterion",
        "",
        f"Produced by `python benchmarks/reproduce_digits.py` ({result['env']}). Dense model: test top-1 "
        f"{100 * d['test_top1']:.2f} %, val {100 * d['val_top1']:.2f} %, {d['macs']:,} MACs, {d['params']:,} "
        f"params (trained {TRAIN}). Fine-tuning: SGD {FINE_TUNE}, 2 epochs. Data-driven criteria: the first 128 "
        "training images (LFE: the first 16, 10 x N masks per group, P = 0.3). Local scope, channel ratio found by "
        "bisection so that MACs kept <= 50 %.",
        "",
        tabulate(rows, headers=["criterion", "test top-1 %", "val top-1 %", "MACs kept %", "params kept %",
                                "channel ratio", "time s"], tablefmt="github"),
        "",
        "`time s`: wall time of scoring + MAC search + fine-tuning on the machine named above (shared and busy when "
        "this table was made: compare rows, not machines)."
        + ("" if len(rows) == len(CRITERIA) else " Not in this table (the run did not finish them): "
           + ", ".join(c for c in CRITERIA if c not in {r["criterion"] for r in result["one_shot"]}) + "."),
        "",
        "gradual_global: not in this table (the run did not finish it)" if g is None else
        f"gradual_global (Wang; aaws, mean-normalised global ranking, rate {g['rate']}, {g['fine_tune_epochs']} "
        f"fine-tune epochs per step, at most {g['max_steps']} steps): target val top-1 "
        f"{100 * g['target_val_top1']:.2f} %, reached: {g['reached_target']}; "
        f"returned model val {100 * g['val_top1']:.2f} %, test {100 * g['test_top1']:.2f} %, MACs kept "
        f"{100 * g['macs_kept']:.1f} % after {g['accepted_steps']} accepted of {g['steps']} steps.",
        "",
    ]
    return "\n".join(lines)


def dense_record(model: torch.nn.Module, ld: Any, t0: float) -> dict[str, Any]:
    rep = pb.measure.flops(model, X1)
    return {"test_top1": pb.train.evaluate(model, ld.test)["top1"],
            "val_top1": pb.train.evaluate(model, ld.val)["top1"],
            "macs": rep.total_macs, "params": rep.params, "train_s": time.perf_counter() - t0}


def run(out_dir: str | None = None, criteria: tuple[str, ...] = CRITERIA, seed: int = 0,
        dense_cache: str | None = None) -> dict[str, Any]:
    torch.manual_seed(seed)
    ld = loaders(seed)
    t0 = time.perf_counter()
    model = train_dense(ld, seed, dense_cache)
    dense = dense_record(model, ld, t0)
    print(f"dense: {dense}", flush=True)
    env = _env(seed)
    result: dict[str, Any] = {"dense": dense, "one_shot": [], "gradual_global": None, "env": env}
    for c in criteria:
        result["one_shot"].append(one_shot_row(model, ld, c))
        r = result["one_shot"][-1]
        print(f"{c}: test {r['test_top1']:.4f} MACs kept {r['macs_kept']:.3f} ({r['time_s']:.0f} s)", flush=True)
        _write(out_dir, result)  # partial results survive an interrupted run
    result["gradual_global"] = gradual_row(model, ld)
    _write(out_dir, result)
    return result


def _env(seed: int) -> str:
    return (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, seed {seed}")


def run_part(parts: str, only: tuple[str, ...], seed: int, dense_cache: str) -> None:
    """Rows for ``only`` (criteria, or "gradual" / "dense"), each written to ``parts/<name>.json``."""
    os.makedirs(parts, exist_ok=True)
    ld = loaders(seed)
    t0 = time.perf_counter()
    model = train_dense(ld, seed, dense_cache)
    for name in only:
        if name == "dense":
            row: dict[str, Any] = dense_record(model, ld, t0)
        elif name == "gradual":
            row = gradual_row(model, ld)
        else:
            row = one_shot_row(model, ld, name)
        with open(os.path.join(parts, f"{name}.json"), "w") as f:
            json.dump(row, f, indent=1, default=float)
        print(name, {k: v for k, v in row.items() if k != "history"}, flush=True)


def merge(parts: str, out_dir: str, seed: int) -> dict[str, Any]:
    def load(name: str) -> Any:
        path = os.path.join(parts, f"{name}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    result = {"dense": load("dense"), "one_shot": [r for r in map(load, CRITERIA) if r is not None],
              "gradual_global": load("gradual"), "env": _env(seed)}
    _write(out_dir, result)
    return result


def _write(out_dir: str | None, result: dict[str, Any]) -> None:
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "digits_criteria.json"), "w") as f:
        json.dump(result, f, indent=1, default=float)
    with open(os.path.join(out_dir, "digits_criteria.md"), "w") as f:
        f.write(to_markdown(result))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/reproductions")
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dense", default=None, help="file to save / reuse the dense weights")
    ap.add_argument("--only", default=None, help="with --parts: criteria, 'dense' or 'gradual' to run")
    ap.add_argument("--parts", default=None, help="folder for per-part JSON files")
    ap.add_argument("--merge", default=None, help="merge the parts in this folder into --out")
    a = ap.parse_args()
    if a.merge:
        print(to_markdown(merge(a.merge, a.out, a.seed)))
    elif a.only:
        if not (a.parts and a.dense):
            ap.error("--only needs --parts and --dense")
        run_part(a.parts, tuple(a.only.split(",")), a.seed, a.dense)
    else:
        print(to_markdown(run(a.out, tuple(a.criteria.split(",")), a.seed, a.dense)))
