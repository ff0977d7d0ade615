"""Figures against training time (kimg): when memorization sets in, and whether FID or the loss gap saw it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.contract import Role
from study.report.figures.base import arm_colors, figure, log_ticks, no_data, save

ROWS = ((("memorization",), "memorization ratio"), (("fid_test",), "FID vs held-out"), (("train_loss", "test_loss"), "loss"))


@dataclass(frozen=True)
class _Look:
    """What every panel of the curves figure shares."""

    colors: dict[str, str]
    log_kimg: bool
    threshold: float


def _seed_band(histories: list[list[dict]], metric: str, log_kimg: bool):
    """kimg, mean, min, max over seeds, at the kimg points where every seed reports `metric`."""
    per_seed = [{h["kimg"]: h[metric] for h in history if h.get(metric) is not None and (h["kimg"] > 0 or not log_kimg)}
                for history in histories]
    kimg = sorted(set.intersection(*(set(points) for points in per_seed)))
    values = np.array([[points[k] for k in kimg] for points in per_seed], dtype=float).reshape(len(per_seed), len(kimg))
    return np.array(kimg), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def _panel(ax, trials: list[dict], metrics: tuple[str, ...], look: _Look) -> None:
    """One size's curves of one row: per arm the mean over seeds, the band min..max where there are two or more."""
    for arm, color in look.colors.items():
        histories = [c["history"] for c in trials if c["arm"] == arm]
        if not histories:
            continue
        for metric, style in zip(metrics, ("-", "--")):
            kimg, mean, low, high = _seed_band(histories, metric, look.log_kimg)
            if not len(kimg):
                continue
            ax.plot(kimg, mean, style, color=color, marker=".", markersize=4)
            if len(histories) >= 2:
                ax.fill_between(kimg, low, high, color=color, alpha=0.2, linewidth=0)
    no_data(ax)
    if metrics == ("memorization",):
        ax.axhline(look.threshold, color="k", linestyle=":", linewidth=1)
        ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)


def _grid(trials: list[dict], present: list, look: _Look):
    """Rows are the metrics present, columns the training-set sizes."""
    sizes = sorted({c["images"] for c in trials})
    fig, axes = figure(len(present), len(sizes), figsize=(3.2 * len(sizes), 2.4 * len(present) + 0.8),
                       sharex=True, sharey="row", squeeze=False)
    for col, images in enumerate(sizes):
        for row, (metrics, label) in enumerate(present):
            ax = axes[row, col]
            _panel(ax, [c for c in trials if c["images"] == images], metrics, look)
            if col == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(f"N = {images}")
            if row == len(present) - 1:
                ax.set_xlabel("kimg")
    return fig, axes


def _kimg_axis(ax, curves: list[dict]) -> None:
    """Log kimg ticked at the eval points, leaving out labels that would touch."""
    ticks = []
    for kimg in sorted({h["kimg"] for c in curves for h in c["history"] if h.get("kimg")}):
        if not ticks or kimg >= 1.4 * ticks[-1]:
            ticks.append(kimg)
    log_ticks(ax, ticks, [f"{k:.3g}" for k in ticks])


def _legend(fig, look: _Look, present: list, capacity: str | None) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color, label=arm) for arm, color in look.colors.items()]
    handles.append(Line2D([], [], color="k", linestyle=":", label=f"onset threshold ({look.threshold:g})"))
    if any(metrics == ("train_loss", "test_loss") for metrics, _ in present):
        handles += [Line2D([], [], color="gray", label="train loss"),
                    Line2D([], [], color="gray", linestyle="--", label="test loss")]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=8, frameon=False,
               title=None if capacity is None else f"capacity: {capacity}", title_fontsize=10)


def curves_figure(curves: list[dict], folder: Path, threshold: float = 0.1) -> list[Path]:
    """Training curves per training-set size, one figure per capacity; rows are memorization, held-out FID and
    train/test loss, columns the sizes. A line is the mean over seeds at the kimg points every seed has (no
    interpolation), the band min..max over seeds; kimg is on a log axis when it spans more than 8x (then kimg 0 is
    left out). The dotted line is the memorization onset threshold."""
    kimgs = [h["kimg"] for c in curves for h in c["history"] if h["kimg"] > 0]
    look = _Look(arm_colors(c["arm"] for c in curves), bool(kimgs) and max(kimgs) > 8 * min(kimgs), threshold)
    capacities = list(dict.fromkeys(c.get("capacity", "") for c in curves))
    paths = []
    for capacity in capacities:
        trials = [c for c in curves if c.get("capacity", "") == capacity]
        present = [(metrics, label) for metrics, label in ROWS
                   if any(h.get(m) is not None for c in trials for h in c["history"] for m in metrics)]
        if not present:
            continue
        fig, axes = _grid(trials, present, look)
        if look.log_kimg:  # the axes share x: one call sets them all
            _kimg_axis(axes[0, 0], curves)
        _legend(fig, look, present, capacity if len(capacities) > 1 else None)
        name = f"curves_{re.sub(r'[^A-Za-z0-9_.-]+', '-', capacity)}.png" if len(capacities) > 1 else "curves.png"
        paths.append(save(fig, folder / name))
    return paths


def loss_gap_curves_figure(curves: list[dict], folder: Path) -> list[Path]:
    """The loss gap against kimg of each `{label, role, history}`: solid for best ScoreAug, dashed otherwise."""
    fig, ax = figure(figsize=(6, 4))
    for curve in curves:
        history = [h for h in curve["history"] if "loss_gap" in h]
        if history:
            ax.plot([h["kimg"] for h in history], [h["loss_gap"] for h in history],
                    "-" if curve["role"] == Role.BEST else "--", label=curve["label"])
    no_data(ax)
    ax.set_xlabel("kimg")
    ax.set_ylabel("loss gap")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return [save(fig, folder / "loss_gap_curves.png")]
