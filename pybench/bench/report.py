"""Reports of run folders: Markdown (tabulate) and a self-contained HTML page (matplotlib plots as base64 PNG).

Per model, each pruned cell against its dense baseline (level 0, same run, batch size, dtype, device, seed): latency
speedup (dense p50 / pruned p50), the theoretical speedup from MACs (dense MACs / pruned MACs), memory saved, MACs
and params removed, and the accuracy change in points; plots of realised vs theoretical speedup and of accuracy vs
MACs kept per criterion.
"""

from __future__ import annotations

import base64
import html as _html
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pybench.bench import results

__all__ = ["analyse", "markdown", "html", "write", "plots"]

_JOIN = ["run", "model", "batch_size", "dtype", "device", "backend", "seed"]


def analyse(df: Any) -> Any:
    """The ok pruned rows of ``df`` (from :func:`pybench.bench.results.load`) joined with their dense baselines.

    Adds: dense_latency_p50_ms, speedup (the record's paired speedup where the worker timed dense and pruned
    alternately, else dense p50 / pruned p50 of the two cells, with ``speedup_paired`` saying which),
    speedup_unpaired, theoretical_speedup, memory_saved, macs_removed, params_removed, dense_top1, top1_change
    (points, pruned - dense).
    """
    import pandas as pd

    ok = df[df["status"] == "ok"] if len(df) else df
    if not len(ok):
        return pd.DataFrame()
    dense = ok[ok["level"] == 0]
    pruned = ok[ok["level"] > 0]
    cols = [c for c in ("latency_p50_ms", "latency_noise", "peak_memory_bytes", "macs", "params", "top1")
            if c in dense.columns and f"dense_{c}" not in pruned.columns]  # the records carry dense MACs / params
    base = dense[_JOIN + cols].rename(columns={c: f"dense_{c}" for c in cols})
    j = pruned.merge(base, on=_JOIN, how="left")
    out = j.copy()
    if "latency_p50_ms" in j:  # the ratio of two cells' medians, timed apart: shown only where no pairing exists
        out["speedup_unpaired"] = j["dense_latency_p50_ms"] / j["latency_p50_ms"]
        paired = j["speedup"] if "speedup" in j else pd.Series(float("nan"), index=j.index)
        out["speedup_paired"] = paired.notna()
        out["speedup"] = paired.astype(float).fillna(out["speedup_unpaired"])
        if "speedup_error" in j:  # paired timing failed: no speedup, never a ratio of two cells in its place
            out.loc[j["speedup_error"].notna(), "speedup"] = float("nan")
    if "latency_noise" in j:  # an unpaired ratio is as uncertain as the noisier of its two latencies
        out["speedup_noise"] = j[["latency_noise", "dense_latency_noise"]].max(axis=1)
    if "speedup_ci_low" in j:  # a paired speedup is as uncertain as its interval: its relative half-width
        half = (j["speedup_ci_high"] - j["speedup_ci_low"]) / 2 / j["speedup"]
        out["speedup_noise"] = half.where(out["speedup_paired"], out.get("speedup_noise"))
    if "macs" in j:
        out["theoretical_speedup"] = j["dense_macs"] / j["macs"]
        out["macs_removed"] = 1 - j["macs"] / j["dense_macs"]
    if "params" in j:
        out["params_removed"] = 1 - j["params"] / j["dense_params"]
    if "peak_memory_bytes" in j:
        out["memory_saved"] = 1 - j["peak_memory_bytes"] / j["dense_peak_memory_bytes"]
    if "top1" in j:
        out["top1_change"] = (j["top1"] - j["dense_top1"]) * 100
    if "latency_budget" in j and "speedup" in out:  # target = "latency": the budget against what was measured
        out["latency_kept"] = 1 / out["speedup"]
        out["budget_miss"] = out["latency_kept"] / j["latency_budget"] - 1
    return out


_FORMATS: dict[str, Any] = {
    "x": lambda v: f"{v:.2f}x", "pct": lambda v: f"{v * 100:.1f}%", "ms": lambda v: f"{v:.3f}",
    "pts": lambda v: f"{v:+.1f}", "acc": lambda v: f"{v * 100:.1f}", "mb": lambda v: f"{v / 2**20:.2f}",
    "m": lambda v: f"{v / 1e6:.2f}", "int": lambda v: f"{int(v):,}", "g": lambda v: f"{v:g}",
    "ratio": lambda v: f"{v:.3f}", "signed": lambda v: f"{v * 100:+.1f}%"}


def _fmt(v: Any, kind: str) -> Any:
    """``v`` as ``kind``; "" when absent (None, or pandas' NaN for a missing value), "—" when infinite (a ratio
    over a 0 B dense peak, say)."""
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "—"
    return _FORMATS[kind](v)


def _tables(df: Any, tablefmt: str) -> list[tuple[str, str]]:
    """[(heading, table)] for the report."""
    from tabulate import tabulate

    out: list[tuple[str, str]] = []
    a = analyse(df)
    ok = df[df["status"] == "ok"]
    dense = ok[ok["level"] == 0]
    # the backend is a column only where a run measured more than eager PyTorch
    on = "backend" in ok.columns and bool((ok["backend"].fillna("eager") != "eager").any())
    be: list[str] = ["backend"] if on else []
    rounded = "round_to" in a.columns and bool((a["round_to"].fillna(1) != 1).any())
    rt: list[str] = ["round_to"] if rounded else []
    if len(dense):
        rows = []
        for _, r in dense.sort_values(["model", "device", "dtype", "batch_size", *be]).iterrows():
            rows.append([r["model"], r["batch_size"], r["dtype"], r["device"], *[r["backend"] for _ in be],
                         _fmt(r.get("latency_p50_ms"), "ms"),
                         _fmt(r.get("latency_noise"), "pct"), _fmt(r.get("throughput"), "g"),
                         _fmt(r.get("peak_memory_bytes"), "mb"), _fmt(r.get("macs"), "m"), _fmt(r.get("params"), "int"),
                         _fmt(r.get("top1"), "acc")])
        out.append(("Dense baselines", tabulate(rows, headers=["model", "batch", "dtype", "device", *be, "p50 ms",
                                                               "noise", "items/s", "peak MiB", "MMACs", "params",
                                                               "top-1 %"],
                                                tablefmt=tablefmt, disable_numparse=True)))
    if on and len(a):
        out.append(("Speedup per backend (paired, 95 % interval) against the MACs speedup",
                    _backend_table(a, tablefmt)))
    budgets = _budget_table(a, tablefmt)
    if budgets:
        out.append(("Latency budgets: predicted, measured when planned, and measured in the cell (paired)", budgets))
    for model in sorted(a["model"].unique()) if len(a) else []:
        m = a[a["model"] == model].sort_values(["criterion", "schedule", "level", *rt, "device", "dtype",
                                                 "batch_size", *be])
        rows = []
        for _, r in m.iterrows():
            rows.append([r["criterion"], r["schedule"], _fmt(r["level"], "g"), *[int(r["round_to"]) for _ in rt],
                         r["batch_size"], r["dtype"],
                         r["device"], *[r["backend"] for _ in be], _fmt(r.get("latency_p50_ms"), "ms"),
                         speedup_cell(r),
                         _fmt(r.get("speedup_noise"), "pct"),
                         _fmt(r.get("theoretical_speedup"), "x"), _fmt(r.get("memory_saved"), "pct"),
                         _fmt(r.get("macs_removed"), "pct"), _fmt(r.get("params_removed"), "pct"),
                         _fmt(r.get("top1"), "acc"), _fmt(r.get("top1_change"), "pts")])
        out.append((f"{model}: pruned vs dense",
                    tabulate(rows, headers=["criterion", "schedule", "level", *rt, "batch", "dtype", "device", *be,
                                            "p50 ms",
                                            "speedup", "noise", "MACs speedup", "memory saved", "MACs removed",
                                            "params removed", "top-1 %", "top-1 change (pts)"], tablefmt=tablefmt,
                             disable_numparse=True)))
    pins = _pins_table(ok, tablefmt)
    if pins:
        out.append(("Channels no plan can remove (pins other than the model's outputs)", pins))
    failed = df[df["status"] != "ok"]
    if len(failed):
        rows = []
        for _, r in failed.iterrows():
            err = (r.get("error") or "").strip().splitlines()
            lvl = "dense" if r["level"] == 0 else f"{r['criterion']}/{r['schedule']}@{r['level']:g}"
            rows.append([r["cell_id"], r["model"], lvl, r["batch_size"], r["dtype"], r["device"],
                         (err[0] if err else "")[:160]])
        table = tabulate(rows, headers=["cell", "model", "what", "batch", "dtype", "device", "error"],
                         tablefmt=tablefmt, disable_numparse=True)
        out.append((f"Failed cells ({len(failed)})", table))
    return out


def _backend_table(a: Any, tablefmt: str) -> str:
    """One row per pruned configuration, one column per backend: its paired speedup (and the MACs speedup once)."""
    from tabulate import tabulate

    a = a.assign(round_to=a["round_to"].fillna(1) if "round_to" in a.columns else 1)
    keys = ["model", "criterion", "schedule", "level", "round_to", "batch_size", "dtype", "device"]
    backends = sorted(a["backend"].fillna("eager").unique(), key=lambda b: (b != "eager", b))
    rows = []
    for key, g in a.groupby(keys, sort=True):
        by = {r["backend"]: r for _, r in g.iterrows()}
        first = next(iter(by.values()))
        rows.append([key[0], results.what(first), key[5], key[6], key[7],
                     _fmt(first.get("theoretical_speedup"), "x"),
                     *[speedup_cell(by[b]) if b in by else "" for b in backends]])
    return tabulate(rows, headers=["model", "what", "batch", "dtype", "device", "MACs speedup", *backends],
                    tablefmt=tablefmt, disable_numparse=True)


def _pins_table(ok: Any, tablefmt: str) -> str | None:
    """Per model: the channels its pins keep, and the biggest reason (records' achieved.pins)."""
    from tabulate import tabulate

    if "pins" not in ok.columns:
        return None
    rows = []
    for model, g in ok.groupby("model", sort=True):
        pins = next((p for p in g["pins"] if isinstance(p, dict)), None)
        if pins is None:
            continue
        top = pins["reasons"][0] if pins.get("reasons") else ["", 0]
        share = pins["pinned"] / pins["channels"] if pins.get("channels") else 0.0
        rows.append([model, f"{pins['pinned']:,}", f"{pins['channels']:,}", _fmt(share, "pct"),
                     f"{top[1]:,} by {top[0]}"[:200] if top[1] else ""])
    if not rows:
        return None
    return tabulate(rows, headers=["model", "pinned", "channels", "share", "biggest reason"], tablefmt=tablefmt,
                    disable_numparse=True)


def _runs_table(df: Any, tablefmt: str) -> str:
    from tabulate import tabulate

    rows = []
    for run, g in df.groupby("run", sort=False):
        first = g.iloc[0]
        rows.append([run, first.get("suite"), first.get("hostname"), first.get("cpu_model"), first.get("gpu") or "",
                     first.get("torch"), (first.get("git_commit") or "")[:10], int((g["status"] == "ok").sum()),
                     int((g["status"] != "ok").sum())])
    return tabulate(rows, headers=["run", "suite", "host", "CPU", "GPU", "torch", "commit", "ok", "failed"],
                    tablefmt=tablefmt, disable_numparse=True)


def _budget_table(a: Any, tablefmt: str) -> str:
    """One row per target = "latency" cell: budget, the table's prediction, the measured latency / dense."""
    from tabulate import tabulate

    if "latency_budget" not in a.columns:
        return ""
    b = a[a["latency_budget"].notna()]
    if not len(b):
        return ""
    rows = []
    for _, r in b.sort_values(["model", "criterion", "device", "backend", "dtype", "batch_size",
                               "latency_budget"]).iterrows():
        rows.append([r["model"], r["criterion"], r["batch_size"], r["dtype"], r["device"], r.get("backend", "eager"),
                     _fmt(r["latency_budget"], "g"), _fmt(r.get("predicted_latency"), "ratio"),
                     _fmt(r.get("planned_latency"), "ratio"), _fmt(r.get("latency_kept"), "ratio"),
                     _fmt(r.get("budget_miss"), "signed"), _fmt(r.get("params_removed"), "pct"),
                     _fmt(r.get("top1_change"), "pts")])
    return tabulate(rows, headers=["model", "criterion", "batch", "dtype", "device", "backend", "budget",
                                   "predicted", "measured at plan", "measured", "miss", "params removed",
                                   "top-1 change (pts)"], tablefmt=tablefmt, disable_numparse=True)


def speedup_cell(r: Any) -> str:
    """``2.31x [2.25, 2.38]`` for a paired speedup with its 95 % interval (``*``: the interval did not reach
    [metrics] target_ci in max_time_s); an unpaired ratio of two cells' medians is marked ``(unpaired)``."""
    import math

    if isinstance(r.get("speedup_error"), str):
        return "— (paired timing failed)"
    s = r.get("speedup")
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return ""
    if not r.get("speedup_paired", False):
        return f"{_fmt(s, 'x')} (unpaired)"
    lo, hi = r.get("speedup_ci_low"), r.get("speedup_ci_high")
    text = _fmt(s, "x") + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")
    met = r.get("speedup_target_met")
    return text + ("*" if met is not None and not (isinstance(met, float) and math.isnan(met)) and not met else "")


_LEGEND = ("speedup = dense / pruned latency, timed alternately in one process, with its 95 % interval (a "
           "bootstrap over paired blocks; * marks an interval that did not reach [metrics] target_ci within "
           "max_time_s; (unpaired) marks a ratio of two cells' p50s, from records without paired timing); MACs "
           "speedup = dense MACs / pruned MACs (the theoretical speedup); noise = (max - min) / median of the "
           "repeats' p50; for a paired speedup, its interval's half-width relative to it (for an unpaired one, the "
           "larger of its two latencies' noise); top-1 change in points.")


def _noise_warning(df: Any, limit: float = 0.1) -> str | None:
    """What a reader should distrust: paired speedups whose interval missed [metrics] target_ci, and noisy
    latencies (which, where speedups are paired, make absolute latencies unreliable but not the speedups)."""
    import pandas as pd

    said = []
    if "speedup_target_met" in df.columns:
        met = df.loc[(df["status"] == "ok") & df["speedup_target_met"].notna(), "speedup_target_met"]
        missed = int((~met.astype(bool)).sum())
        if missed:
            said.append(f"{missed} of {len(met)} paired speedups did not reach [metrics] target_ci within max_time_s "
                        "(marked *): read their intervals, or rerun them with a larger max_time_s on a quieter "
                        "machine.")
    if "speedup_error" in df.columns and df["speedup_error"].notna().any():
        failed = df[df["speedup_error"].notna()]
        said.append(f"Paired timing failed for {len(failed)} pruned cells, so they have no speedup (the first: "
                    f"{failed.iloc[0]['speedup_error']}).")
    noise = df["latency_noise"].dropna() if "latency_noise" in df.columns else pd.Series(dtype=float)
    if len(noise) and noise.median() > limit:
        paired = "speedup_ci_low" in df.columns and df["speedup_ci_low"].notna().any()
        said.append(f"Latency noise is high (median {noise.median():.0%} across cells, above {limit:.0%}): the "
                    "machine was busy or the runs were too short; "
                    + ("absolute latencies are unreliable, while the speedups, timed paired, are as reliable as "
                       "their intervals." if paired else
                       "treat the latencies and speedups as unreliable and rerun with more repeats / iterations "
                       "on a quiet machine."))
    return " ".join(said) or None


def markdown(df: Any, title: str = "pybench report") -> str:
    """The report of ``df`` (from :func:`pybench.bench.results.load`) as Markdown."""
    parts = [f"# {title}", "", _runs_table(df, "github"), "", _LEGEND]
    warning = _noise_warning(df)
    if warning:
        parts += ["", f"**{warning}**"]
    for heading, table in _tables(df, "github"):
        parts += ["", f"## {heading}", "", table]
    return "\n".join(parts) + "\n"


def plots(df: Any) -> dict[str, bytes]:
    """{caption: PNG bytes}: realised vs theoretical speedup, accuracy vs MACs kept per criterion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = analyse(df)
    out: dict[str, bytes] = {}
    if not len(a):
        return out

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    if {"speedup", "theoretical_speedup"} <= set(a.columns) and a["speedup"].notna().any():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        multi = "backend" in a.columns and a["backend"].fillna("eager").nunique() > 1
        markers = dict(zip(sorted(a["backend"].fillna("eager").unique()) if multi else [], "os^Dvx*P", strict=False))
        for key, g in a.groupby(["model", "batch_size", *(["backend"] if multi else [])]):
            label = f"{key[0]} bs={key[1]}" + (f" {key[2]}" if multi else "")
            dots = ax.scatter(g["theoretical_speedup"], g["speedup"], label=label, s=30,
                              marker=markers.get(key[2], "o") if multi else "o")
            if {"speedup_ci_low", "speedup_ci_high"} <= set(g.columns):  # the paired speedup's 95 % interval
                ci = g[g["speedup_paired"] & g["speedup_ci_low"].notna()]
                if len(ci):
                    ax.errorbar(ci["theoretical_speedup"], ci["speedup"],
                                yerr=[ci["speedup"] - ci["speedup_ci_low"], ci["speedup_ci_high"] - ci["speedup"]],
                                fmt="none", ecolor=dots.get_facecolor()[0], elinewidth=1, capsize=3)
        hi = float(max(a["theoretical_speedup"].max(), a["speedup"].max(), 1.0)) * 1.1
        ax.plot([0, hi], [0, hi], "k--", lw=1, label="realised = theoretical")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set(xlabel="theoretical speedup (dense MACs / pruned MACs)",
               ylabel="realised latency speedup (paired, 95 % interval)",
               title="Realised vs theoretical speedup", xlim=(0, hi), ylim=(0, hi))
        ax.legend(fontsize=7)
        out["Realised latency speedup against the theoretical (MACs) speedup"] = png(fig)
    if "top1" in a.columns and a["top1"].notna().any():
        models = sorted(a["model"].unique())
        fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.6), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            m = a[a["model"] == model].drop_duplicates(["criterion", "schedule", "level"])
            dense_top1 = m["dense_top1"].dropna()
            for (crit, sched), g in m.groupby(["criterion", "schedule"]):
                g = g.sort_values("macs_removed")
                ax.plot([1.0, *(1 - g["macs_removed"])], [dense_top1.iloc[0] * 100 if len(dense_top1) else None,
                                                          *(g["top1"] * 100)], "o-", label=f"{crit}/{sched}")
            ax.set(title=model, xlabel="MACs kept (fraction of dense)", ylabel="top-1 %")
            ax.invert_xaxis()
            ax.legend(fontsize=7)
        out["Accuracy against MACs kept, per criterion (the leftmost point is the dense model)"] = png(fig)
    return out


def html(df: Any, title: str = "pybench report") -> str:
    """A self-contained HTML page: the tables and the plots (inline base64 PNG), no external files."""
    esc = _html.escape
    body = [f"<h1>{esc(title)}</h1>", _runs_table(df, "html"), f"<p>{esc(_LEGEND)}</p>"]
    warning = _noise_warning(df)
    if warning:
        body.append(f"<p><strong>{esc(warning)}</strong></p>")
    for caption, data in plots(df).items():
        b64 = base64.b64encode(data).decode()
        body.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
                    f"<figcaption>{esc(caption)}</figcaption></figure>")
    for heading, table in _tables(df, "html"):
        body += [f"<h2>{esc(heading)}</h2>", table]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
             "figure{display:inline-block;margin:1em}figcaption{font-size:13px;color:#444}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def write(runs: Iterable[str | os.PathLike] | str | os.PathLike, out_dir: str | os.PathLike | None = None,
          title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for the run folders ``runs`` into ``out_dir`` (default: the first
    run folder); returns both paths."""
    folders = results.run_folders(runs)
    df = results.load(folders)
    if not len(df):
        raise ValueError(f"report: no records in {', '.join(map(str, folders))}")
    title = title or f"pybench report: {', '.join(sorted(df['suite'].dropna().unique()))}"
    out = Path(out_dir) if out_dir else folders[0]
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    md.write_text(markdown(df, title))
    page.write_text(html(df, title))
    return md, page
