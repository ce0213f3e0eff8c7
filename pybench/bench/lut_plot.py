"""Staircase plots of a latency table: each group's predicted model latency as its channel count varies."""

from __future__ import annotations

import os

from pybench.prune import LatencyTable

__all__ = ["plot_staircases"]


def plot_staircases(table: LatencyTable, path: str | os.PathLike, top: int = 12) -> list[int]:
    """Draw the ``top`` groups whose removal saves the most (predicted latency relative to dense against the
    group's kept channels, every count; the sampled counts of its layers marked) into ``path`` (PNG / SVG / PDF).
    Returns the groups drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = table.model["groups"]
    saving = sorted(range(len(sizes)), key=lambda g: table.predict_ratio({g: 1}))[:top]
    cols = min(4, len(saving)) or 1
    rows = -(-len(saving) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(saving):]:
        ax.axis("off")
    for ax, g in zip(axes.flat, saving, strict=False):
        counts, ratios = table.group_curve(g)
        ax.step(counts, ratios, where="post", lw=1.2)
        sampled = sorted({c for lay in table.layers for d in (lay.out, lay.inp) if d is not None and g in d.groups
                          and d.size == sizes[g] for c in d.counts})
        if sampled:
            ax.plot(sampled, [table.predict_ratio({g: c}) for c in sampled], "o", ms=3)
        ax.set_title(f"group {g} ({sizes[g]} ch)", fontsize=9)
        ax.set_xlabel("kept channels", fontsize=8)
        ax.set_ylabel("latency / dense", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    key = table.key
    fig.suptitle(f"{table.model.get('class', 'model')}: {key.get('hardware') or key['device']}, {key['backend']}, "
                 f"{key['dtype']}, batch {key['batch_size']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return saving
