"""A reproduction's result: per method, one row per seed; rendered as mean +- std, success rates and a paired test
against the baseline method, beside the paper's figures."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate


@dataclass
class Reproduction:
    """``methods``: method name -> one dict per seed (``seed`` plus numbers and booleans); ``paper``: method ->
    the paper's figure for it (text, as the paper states it); ``compare_on``: the per-seed number the paired test
    against ``baseline`` uses (higher is better)."""

    name: str
    title: str
    protocol: list[str]
    methods: dict[str, list[dict[str, Any]]]
    paper: dict[str, str]
    paper_column: str
    compare_on: str
    baseline: str
    references: tuple[str, ...] = ()  # rows shown beside the others but not tested against the baseline (dense)
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)

    def seeds(self) -> int:
        return max((len(v) for v in self.methods.values()), default=0)

    def versus_baseline(self, method: str) -> tuple[float, float] | None:
        """(mean paired difference, one-sided Wilcoxon signed-rank p) of ``compare_on`` against the baseline over
        the seeds both ran; None for the baseline itself or without one."""
        base = {r["seed"]: r[self.compare_on] for r in self.methods.get(self.baseline, [])}
        pairs = [(r[self.compare_on], base[r["seed"]]) for r in self.methods[method] if r["seed"] in base]
        if method == self.baseline or method in self.references or not pairs:
            return None
        diffs = [a - b for a, b in pairs]
        return statistics.fmean(diffs), _wilcoxon_greater(diffs)

    def summary(self) -> list[dict[str, Any]]:
        """One dict per method: its rates, means, stds and the paired test (what the Markdown table shows)."""
        rows = []
        for method, runs in self.methods.items():
            row: dict[str, Any] = {"method": method, "seeds": len(runs)}
            for key in [k for k in runs[0] if k != "seed"]:
                values = [r[key] for r in runs]
                if all(isinstance(v, bool) for v in values):
                    row[f"{key}_rate"] = sum(values) / len(values)
                elif all(isinstance(v, (int, float)) for v in values):
                    row[f"{key}_mean"] = statistics.fmean(values)
                    row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                    row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)
            vs = self.versus_baseline(method)
            if vs is not None:
                row["diff_vs_baseline"], row["p_vs_baseline"] = vs
                row["beats_baseline"] = vs[0] > 0 and vs[1] < 0.05
            rows.append(row)
        return rows

    def markdown(self) -> str:
        head = [f"# {self.title}", "", *self.protocol, "",
                f"{self.seeds()} seeds, {self.seconds:.0f} s. Mean +- std over seeds; \"vs {self.baseline}\": the mean "
                f"paired difference of {self.compare_on} over seeds and the one-sided Wilcoxon signed-rank p (it "
                f"beats {self.baseline} when p < 0.05).", ""]
        table = []
        for row in self.summary():
            cells = {"method": row["method"], "seeds": row["seeds"]}
            for key in [k[:-5] for k in row if k.endswith("_rate")]:
                cells[key] = f"{row[f'{key}_rate']:.0%}"
            for key in [k[:-5] for k in row if k.endswith("_mean")]:
                cells[key] = f"{row[f'{key}_mean']:.3g} +- {row[f'{key}_std']:.2g}"
            if "p_vs_baseline" in row:
                verdict = "beats" if row["beats_baseline"] else "does not beat"
                cells[f"vs {self.baseline}"] = (f"{row['diff_vs_baseline']:+.3g} (p {row['p_vs_baseline']:.3f}; "
                                                f"{verdict})")
            else:
                cells[f"vs {self.baseline}"] = "(reference)" if row["method"] in self.references else "(baseline)"
            cells[self.paper_column] = self.paper.get(row["method"], "")
            table.append(cells)
        return "\n".join(head) + "\n" + tabulate(table, headers="keys", tablefmt="github") + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "protocol": self.protocol, "seconds": self.seconds,
                "environment": self.environment, "baseline": self.baseline, "references": list(self.references),
                "compare_on": self.compare_on,
                "paper": self.paper, "summary": self.summary(), "methods": self.methods}


def _wilcoxon_greater(diffs: list[float]) -> float:
    """One-sided p that the differences are centred above 0 (1.0 when all are 0: nothing to test)."""
    from scipy.stats import wilcoxon

    if all(d == 0 for d in diffs):
        return 1.0
    p = float(wilcoxon(diffs, alternative="greater", zero_method="zsplit").pvalue)
    return 1.0 if math.isnan(p) else p
