"""Two runs side by side: ``compare(A, B)`` (e.g. two machines: B/A ratios of the same cells) and
``check(RUN, BASELINE, threshold)`` (the nightly gate: cells that got worse by more than the threshold).

Cells are matched by ``cell_id``, which hashes what a cell measures (not the machine, not the repeats), so the same
suite run on two machines lines up. ``check`` ignores a cell's metric when the noise of either run (the relative
spread of its repeats, ``latency_noise`` / ``memory_noise``) exceeds the threshold — a difference smaller than the
measurement's own spread is no evidence — and lists those cells so nothing is dropped silently. A pruned cell's
paired ``speedup`` is judged by its interval: a regression only when run / baseline, at the most favourable end of
the two 95 % intervals, is below 1 - threshold.
"""

from __future__ import annotations

import base64
import html as _html
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

from pybench.bench import results

__all__ = ["compare", "check", "Comparison", "CheckResult", "CHECK_METRICS"]

# metric -> (direction: +1 if higher is worse, -1 if lower is worse; noise column or None; change measured as)
CHECK_METRICS: dict[str, tuple[int, str | None, str]] = {
    "latency_p50_ms": (+1, "latency_noise", "relative"),
    "peak_memory_bytes": (+1, "memory_noise", "relative"),
    "top1": (-1, None, "absolute"),
    "macs": (+1, None, "relative"),
    # a pruned cell's paired speedup: judged by its 95 % interval, not by a noise column
    "speedup": (-1, None, "interval"),
}
_RATIO_METRICS = ["latency_p50_ms", "latency_p90_ms", "throughput", "peak_memory_bytes", "energy_j_per_item", "top1"]
_LABEL = ["model", "criterion", "schedule", "level", "batch_size", "dtype", "device"]


def _ok(df: Any) -> Any:
    return df[df["status"] == "ok"].drop_duplicates("cell_id", keep="last").set_index("cell_id")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _what(r: Any) -> str:
    what = results.what(r)
    backend = r.get("backend") or "eager"
    return what if backend == "eager" else f"{what} on {backend}"


@dataclass
class Comparison:
    """Matched cells of two runs with B/A ratios; ``only_a`` / ``only_b``: cell ids found in one run only."""

    labels: tuple[str, str]
    rows: list[dict[str, Any]]
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    hosts: tuple[str, str] = ("", "")

    def markdown(self) -> str:
        from tabulate import tabulate

        a, b = self.labels
        head = [f"# {b} vs {a}", "", f"{a}: {self.hosts[0]}", f"{b}: {self.hosts[1]}", "",
                f"ratios are {b} / {a}: below 1 is faster (latency) or smaller (memory) on {b}; throughput above 1 "
                f"is more on {b}.", ""]
        body = tabulate(self.rows, headers="keys", tablefmt="github", floatfmt=".3f") if self.rows else \
            "(no cells in common)"
        tail = []
        if self.only_a or self.only_b:
            tail = ["", f"{len(self.only_a)} cell(s) only in {a}, {len(self.only_b)} only in {b} (not compared)."]
        return "\n".join(head) + body + "\n" + "\n".join(tail) + "\n"

    def plot_png(self) -> bytes | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = [(f"{r['model']} {r['what']} bs={r['batch_size']}", r.get("latency_p50_ms ratio"))
               for r in self.rows if r.get("latency_p50_ms ratio") is not None]
        if not pts:
            return None
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(pts) + 1.2))
        ax.barh([p[0] for p in pts], [p[1] for p in pts])
        ax.axvline(1.0, color="k", lw=1)
        ax.set(xlabel=f"p50 latency ratio {self.labels[1]} / {self.labels[0]}", title="Latency ratio per cell")
        ax.invert_yaxis()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    def html(self) -> str:
        from tabulate import tabulate

        png = self.plot_png()
        img = f'<img alt="latency ratio" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else ""
        a, b = (_html.escape(x) for x in self.labels)
        table = tabulate(self.rows, headers="keys", tablefmt="html", floatfmt=".3f") if self.rows else ""
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{b} vs {a}</title></head><body>"
                f"<h1>{b} vs {a}</h1><p>{a}: {_html.escape(self.hosts[0])}<br>{b}: {_html.escape(self.hosts[1])}</p>"
                f"{img}{table}</body></html>\n")


def _host(df: Any) -> str:
    if not len(df):
        return ""
    r = df.iloc[0]
    return f"{r.get('hostname')}, {r.get('cpu_model')}, {r.get('gpu') or 'no GPU'}, torch {r.get('torch')}"


def compare(a: str | os.PathLike | Any, b: str | os.PathLike | Any, labels: tuple[str, str] = ("A", "B"),
            metrics: list[str] | None = None) -> Comparison:
    """B/A ratios of ``metrics`` over the ok cells present in both runs (run folders or DataFrames)."""
    da = a if hasattr(a, "columns") else results.load(a)
    db = b if hasattr(b, "columns") else results.load(b)
    oa, ob = _ok(da), _ok(db)
    common = [c for c in oa.index if c in ob.index]
    if not common:
        raise NothingComparedError(f"compare: the two runs have no ok cell in common ({len(oa)} and {len(ob)} ok "
                                   "cells): they measured different suites or different cells; compare runs of the "
                                   "same suite")
    rows = []
    for cid in common:
        ra, rb = oa.loc[cid], ob.loc[cid]
        row: dict[str, Any] = {"cell": cid[:8], "model": ra["model"], "what": _what(ra), "batch_size": ra["batch_size"],
                               "dtype": ra["dtype"], "device": ra["device"]}
        for m in metrics or _RATIO_METRICS:
            va, vb = _num(ra.get(m)), _num(rb.get(m))
            if va is None or vb is None:
                continue
            if m == (metrics or _RATIO_METRICS)[0]:  # the first metric's values, the others' ratios only
                row[f"{m} {labels[0]}"] = va
                row[f"{m} {labels[1]}"] = vb
            row[f"{m} ratio"] = vb / va if va else None
        rows.append(row)
    return Comparison(labels, rows, sorted(set(oa.index) - set(ob.index)), sorted(set(ob.index) - set(oa.index)),
                      (_host(da), _host(db)))


@dataclass
class CheckResult:
    """``regressions``: rows worse than the threshold; ``noisy``: cell/metric pairs skipped for noise;
    ``failed_cells``: cells ok in the baseline but failed in the run (regressions too); ``missing``: baseline
    cells absent from the run."""

    threshold: float
    compared: int
    machines: tuple[str, str] = ("", "")  # (run, baseline): hostname, CPU, GPU, torch
    regressions: list[dict[str, Any]] = field(default_factory=list)
    noisy: list[dict[str, Any]] = field(default_factory=list)
    failed_cells: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.failed_cells)

    def markdown(self) -> str:
        from tabulate import tabulate

        t = f"{self.threshold:.1%}"
        out = [f"# pybench check: threshold {t}, {self.compared} cell(s) compared", "",
               f"run: {self.machines[0]}  ", f"baseline: {self.machines[1]}", ""]
        if self.regressions:
            out += [f"## {len(self.regressions)} regression(s)", "",
                    tabulate(self.regressions, headers="keys", tablefmt="github", floatfmt=".4g"), ""]
        if self.failed_cells:
            out += [f"## {len(self.failed_cells)} cell(s) ok in the baseline but failed now", "",
                    tabulate(self.failed_cells, headers="keys", tablefmt="github"), ""]
        if not self.failed:
            out += ["No regressions.", ""]
        if self.noisy:
            out += [f"## {len(self.noisy)} measurement(s) not judged: noise above the threshold ({t}), or no "
                    "interval", "",
                    "The spread of their repeats is larger than the change the check looks for (or a speedup has "
                    "no paired interval on one side: the noise column says why), so they cannot pass or fail it; "
                    "rerun them with more repeats / iterations or on a quieter machine.", "",
                    tabulate(self.noisy, headers="keys", tablefmt="github", floatfmt=".4g"), ""]
        if self.missing:
            out += [f"{len(self.missing)} baseline cell(s) not in this run (not checked): "
                    f"{', '.join(m[:8] for m in self.missing[:20])}{' ...' if len(self.missing) > 20 else ''}", ""]
        return "\n".join(out)


def _machine(df: Any) -> tuple[Any, ...]:
    """What makes two runs' timings comparable: the host, its CPU model and its GPUs."""
    if not len(df):
        return ()
    r = df.iloc[0]
    return tuple(v if isinstance(v, str) else None for v in (r.get(k) for k in ("hostname", "cpu_model", "gpu")))


class NothingComparedError(ValueError):
    """A check or comparison that matched no cell: it cannot pass (another suite's baseline, every id changed)."""


class ForeignBaselineError(ValueError):
    """A baseline measured on another machine than the run (host, CPU model or GPU differ)."""


def _judge_interval(res: CheckResult, label: dict[str, Any], m: str, rb: Any, rr: Any, vb: float | None,
                    vr: float | None, threshold: float) -> None:
    """A speedup regressed when the interval of run / baseline (the ratio of their 95 % intervals, taken at
    its widest) lies wholly below 1 - threshold; a cell with a speedup on one side only, or without an interval,
    cannot be judged and is listed with the reason."""
    if vb is None and vr is None:
        return  # a dense cell, or runs from before paired timing
    lows = [_num(r.get(f"{m}_ci_low")) for r in (rb, rr)]
    highs = [_num(r.get(f"{m}_ci_high")) for r in (rb, rr)]
    if vb is None or vr is None or None in lows or None in highs or not lows[0]:
        why = ("the baseline has no paired speedup" if vb is None else "the run has no paired speedup"
               if vr is None else "no 95 % interval on both sides")
        res.noisy.append({**label, "metric": m, "baseline": vb, "run": vr, "change": None, "noise": why})
        return
    ratio_high = highs[1] / lows[0]  # the most favourable ratio the two intervals allow
    if ratio_high < 1 - threshold:
        res.regressions.append({**label, "metric": m, "baseline": vb, "run": vr,
                                "change": f"{vr / vb - 1:+.1%} (interval of run/baseline below {ratio_high:.3f})"})


def check(run: str | os.PathLike | Any, baseline: str | os.PathLike | Any, threshold: float = 0.05,
          metrics: list[str] | None = None, allow_foreign_baseline: bool = False) -> CheckResult:
    """Regressions of ``run`` against ``baseline``: a metric worse by more than ``threshold`` (relative; for top1
    absolute, in accuracy fraction) on a cell whose noise in both runs is within ``threshold``.

    Raises :class:`ForeignBaselineError` when the baseline comes from another machine (unless
    ``allow_foreign_baseline``) and :class:`NothingComparedError` when no baseline cell is in the run: a gate that
    compared nothing must not pass.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"check: threshold must be a fraction in (0, 1) (e.g. 0.05 for 5%), got {threshold!r}")
    metrics = metrics or list(CHECK_METRICS)
    bad = [m for m in metrics if m not in CHECK_METRICS]
    if bad:
        raise ValueError(f"check: unknown metric(s) {', '.join(bad)}; allowed: {', '.join(CHECK_METRICS)}")
    dr = run if hasattr(run, "columns") else results.load(run)
    db = baseline if hasattr(baseline, "columns") else results.load(baseline)
    machines = (_host(dr), _host(db))
    ours, theirs = _machine(dr), _machine(db)
    if ours and theirs and ours != theirs and not allow_foreign_baseline:
        raise ForeignBaselineError(f"check: the baseline was measured on another machine (run: {machines[0]}; "
                                   f"baseline: {machines[1]}); timings do not compare across machines. Use a "
                                   "baseline from this machine, or pass --allow-foreign-baseline")
    base = _ok(db)
    cur_all = dr.drop_duplicates("cell_id", keep="last").set_index("cell_id")
    res = CheckResult(threshold=threshold, compared=0, machines=machines)
    for cid, rb in base.iterrows():
        if cid not in cur_all.index:
            res.missing.append(cid)
            continue
        rr = cur_all.loc[cid]
        label = {"cell": cid[:8], "model": rb["model"], "what": _what(rb), "batch_size": rb["batch_size"],
                 "dtype": rb["dtype"], "device": rb["device"]}
        if rr["status"] != "ok":
            err = (rr.get("error") or "").strip().splitlines()
            res.failed_cells.append({**label, "error": (err[0] if err else "")[:160]})
            continue
        res.compared += 1
        for m in metrics:
            direction, noise_col, kind = CHECK_METRICS[m]
            vb, vr = _num(rb.get(m)), _num(rr.get(m))
            if kind == "interval":
                _judge_interval(res, label, m, rb, rr, vb, vr, threshold)
                continue
            if vb is None or vr is None:
                continue
            change = (vr - vb) if kind == "absolute" else ((vr - vb) / vb if vb else 0.0)
            worse = direction * change
            if noise_col:
                noise = max(_num(rb.get(noise_col)) or 0.0, _num(rr.get(noise_col)) or 0.0)
                if noise > threshold:
                    res.noisy.append({**label, "metric": m, "baseline": vb, "run": vr, "change": change,
                                      "noise": noise})
                    continue
            if worse > threshold:
                shown = f"{change:+.1%}" if kind == "relative" else f"{change * 100:+.1f} pts"
                res.regressions.append({**label, "metric": m, "baseline": vb, "run": vr, "change": shown})
    if res.compared == 0 and not res.failed_cells:
        raise NothingComparedError(f"check: no cell of the run matches an ok cell of the baseline ({len(base)} ok "
                                   f"baseline cell(s), {len(cur_all)} run cell(s)): nothing was compared, so "
                                   "nothing passed. Is the baseline another suite's, or did a suite edit change "
                                   "every cell id? Make a new baseline from this suite")
    return res
