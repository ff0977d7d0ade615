"""Figures that set arms side by side: best ScoreAug against the baseline across sizes, an ablation's arms, a
search's Pareto fronts, and samples beside their nearest training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from study.contract import Role
from study.report.figures.base import figure, no_data, pyplot, save, size_axis

SIZE_METRICS = (("fid", "FID"), ("loss_gap", "loss gap (test - train)"), ("fid_test", "FID vs held-out"))


def _size_figure(summary: list[dict], metric: str, label: str, folder: Path) -> Path:
    sizes = [e["images_in_regime"] for e in summary]
    fig, ax = figure(figsize=(5, 3.5))
    for role, name in ((Role.BASELINE, "baseline (EDM)"), (Role.BEST, "best ScoreAug")):
        points = [(x, e[f"{role}_{metric}_mean"], e.get(f"{role}_{metric}_std") or 0.0)
                  for x, e in zip(sizes, summary) if e.get(f"{role}_{metric}_mean") is not None]
        if points:
            xs, means, stds = zip(*points)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
    floors = [e["fid_floor"] for e in summary if e.get("fid_floor") is not None]
    if metric.startswith("fid") and floors:
        ax.axhline(float(np.mean(floors)), color="gray", linestyle=":", label="real-vs-real floor (same N)")
    size_axis(ax, sizes)
    ax.set_xlabel("training images N")
    ax.set_ylabel(label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.grid(alpha=0.3)
    return save(fig, folder / f"{metric}_vs_size.png")


def size_figures(summary: list[dict], folder: Path) -> list[Path]:
    """Per compared metric, the confirmed best ScoreAug config beside the baseline at every size (bars: seed std)."""
    return [_size_figure(summary, metric, label, folder) for metric, label in SIZE_METRICS]


def arms_figure(summary: list[dict], folder: Path) -> list[Path]:
    """An ablation's leakage and FID per arm (bars: seed std), one panel each, regimes side by side."""
    arms = list(dict.fromkeys(e["arm"] for e in summary))
    regimes = list(dict.fromkeys(e["regime"] for e in summary))
    fig, axes = figure(1, 2, figsize=(11, 0.5 * len(arms) + 2), sharey=True)
    height = 0.8 / len(regimes)
    for ax, metric in zip(axes, ("leakage", "fid")):
        for j, regime in enumerate(regimes):
            entries = {e["arm"]: e for e in summary if e["regime"] == regime}
            means = [entries[a][f"{metric}_mean"] or 0.0 for a in arms]
            errors = [entries[a][f"{metric}_std"] or 0.0 for a in arms]
            ax.barh(np.arange(len(arms)) + j * height, means, height, xerr=errors, label=regime, capsize=2)
        ax.set_xlabel(metric)
    floors = [e["fid_floor_mean"] for e in summary if e["fid_floor_mean"] is not None]
    if floors:
        axes[1].axvline(float(np.mean(floors)), color="k", linestyle=":", label="real-vs-real floor")
    axes[0].set_yticks(np.arange(len(arms)) + 0.4 - height / 2, arms)
    axes[1].legend(fontsize=7)
    return [save(fig, folder / "ablation.png")]


def pareto_figure(fronts: list[dict], folder: Path) -> list[Path]:
    """The search's trade-off per regime (both objectives minimized): which trials are worth keeping, and where the
    baseline sits among them. Grey: all trials (x: infeasible); coloured staircase: the Pareto front; ring: baseline."""
    if not fronts:
        return []
    from matplotlib.lines import Line2D

    columns = min(len(fronts), 3)
    rows = -(-len(fronts) // columns)
    fig, axes = figure(rows, columns, figsize=(4 * columns, 3.4 * rows + 0.5), squeeze=False)
    for ax, front in zip(axes.flat, fronts):
        trials = [t for t in front["trials"] if None not in t["values"]]
        for feasible, marker in ((True, "o"), (False, "x")):
            chosen = [t["values"] for t in trials if t["feasible"] is feasible]
            if chosen:
                ax.scatter(*zip(*chosen), marker=marker, color="0.6", s=18)
        best = sorted(t["values"] for t in trials if t["pareto"])
        if best:
            ax.step(*zip(*best), where="post", color="C3", linewidth=1)
            ax.scatter(*zip(*best), color="C3", s=30, zorder=3)
        baseline = [t["values"] for t in trials if t["role"] == Role.BASELINE]
        if baseline:
            ax.scatter(*zip(*baseline), facecolors="none", edgecolors="k", s=140, linewidths=1.5, zorder=4)
        no_data(ax)
        ax.set_title(f"{front['regime']}  (N = {front['images']})", fontsize=10)
        ax.set_xlabel(front["objectives"][0])
        ax.set_ylabel(front["objectives"][1])
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(fronts):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color="0.6", marker="o", linestyle="none", label="trial"),
               Line2D([], [], color="0.6", marker="x", linestyle="none", label="infeasible"),
               Line2D([], [], color="C3", marker="o", label="Pareto front"),
               Line2D([], [], color="k", marker="o", markerfacecolor="none", markersize=10, linestyle="none", label="baseline")]
    fig.legend(handles=handles, loc="outside upper center", ncol=4, fontsize=8, frameon=False)
    return [save(fig, folder / "pareto.png")]


def nearest_figure(pairs: dict[str, Path], images: int, folder: Path) -> list[Path]:
    """Generated samples beside their nearest training images, one column per arm: memorization seen, not measured."""
    if not pairs:
        return []
    grids = {arm: pyplot().imread(path) for arm, path in pairs.items()}
    aspect = max(g.shape[0] / g.shape[1] for g in grids.values())
    width = 4.0
    fig, axes = figure(1, len(grids), figsize=(width * len(grids), width * aspect + 0.9), squeeze=False)
    for ax, (arm, grid) in zip(axes[0], grids.items()):
        ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{arm}  (N = {images})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.supxlabel("left: generated sample, right: nearest training image (pixel L2)", fontsize=9)
    return [save(fig, folder / "nearest.png")]
