"""The report's main figure: memorization, its onset, the loss gap and FID against training-set size, one panel each.

(a) maximum memorization over snapshots (bars: seed interval) with the 50%/90% levels and each arm's N50 and EMM
(bars: bootstrap interval); (b) median onset kimg with each arm's linear fit, open markers at the top where most
seeds never reached onset; (c) loss gap and (d) best held-out FID, mean and seed std, and (open markers) the best
among the eval points that copy less than the onset threshold, so quality is compared at matched memorization.
Points of different arms at one size are shifted slightly sideways so their bars do not hide each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.report.figures.base import LINESTYLES, MARKERS, arm_colors, figure, no_data, or_else, save, size_axis

Series = tuple[str, str]  # (arm, capacity): one line in every panel


@dataclass(frozen=True)
class _Scaling:
    """The summary as the panels draw it: its series in order, each with a style and a sideways shift."""

    per_size: list[dict]
    per_arm: list[dict]
    series: list[Series]
    styles: dict[Series, dict]
    levels: tuple[float, ...]
    fid_floor: float | None
    onset_threshold: float

    @property
    def sizes(self) -> list[int]:
        return sorted({e["images"] for e in self.per_size})

    def entries(self, series: Series, key: str | None = None) -> list[dict]:
        """The series' per-size entries by size (those with a value for `key` where given)."""
        mine = sorted((e for e in self.per_size if _series(e) == series), key=lambda e: e["images"])
        return [e for e in mine if key is None or e.get(key) is not None]

    def x(self, series: Series, sizes) -> list[float]:
        """The sizes, shifted by a few percent per series on the log axis."""
        i = self.series.index(series)
        return [n * 10 ** (0.02 * (i - (len(self.series) - 1) / 2)) for n in sizes]

    def fit(self, series: Series) -> dict:
        return next((e for e in self.per_arm if _series(e) == series), {})


def _series(entry: dict) -> Series:
    return entry["arm"], entry.get("capacity", "")


def _scaling(summary: dict, levels, fid_floor: float | None, onset_threshold: float) -> _Scaling:
    entries = summary["per_size"] + summary["per_arm"]
    colors = arm_colors(e["arm"] for e in entries)
    capacities = list(dict.fromkeys(e.get("capacity", "") for e in entries))
    series = list(dict.fromkeys(_series(e) for e in entries))

    def style(arm, capacity):  # colour is the arm; a second capacity changes linestyle and marker
        k = capacities.index(capacity)
        return dict(color=colors[arm], linestyle=LINESTYLES[k % len(LINESTYLES)], marker=MARKERS[k % len(MARKERS)],
                    label=f"{arm}, {capacity}" if len(capacities) > 1 else arm)

    return _Scaling(summary["per_size"], summary["per_arm"], series, {s: style(*s) for s in series}, tuple(levels),
                    fid_floor, onset_threshold)


def _censored(entry: dict) -> bool:
    """Most seeds never reached onset at this size, so there is no median to plot."""
    return entry.get("onset_kimg_median") is None and bool(entry.get("onset_censored"))


def _open(line: dict) -> dict:
    """An open marker in the series' colour."""
    return dict(marker=line["marker"], markerfacecolor="white", markeredgecolor=line["color"])


def _mean_and_std(ax, view: _Scaling, series: Series, metric: str) -> None:
    found = view.entries(series, f"{metric}_mean")
    if found:
        ax.errorbar(view.x(series, [e["images"] for e in found]), [e[f"{metric}_mean"] for e in found],
                    yerr=[or_else(e.get(f"{metric}_std"), 0.0) for e in found], capsize=3, **view.styles[series])


def _crossings(ax, fit: dict, line: dict, above: bool) -> None:
    """The arm's N50 and EMM at their levels (by definition, whatever levels are drawn), with bootstrap bars."""
    for key, level in (("n50", 0.5), ("emm", 0.9)):
        if fit.get(key) is None:
            continue
        x = fit[key]
        low, high = or_else(fit.get(f"{key}_low"), x), or_else(fit.get(f"{key}_high"), x)
        ax.vlines(x, -0.03, level, color=line["color"], linestyle=line["linestyle"], linewidth=0.8, alpha=0.6)
        ax.errorbar([x], [level], xerr=[[x - low], [high - x]], marker="|", markersize=10, capsize=3, color=line["color"])
        ax.annotate(f"{key.upper()} {line['label']}", (x, level), xytext=(0, 6 if above else -6), textcoords="offset points",
                    ha="center", va="bottom" if above else "top", fontsize=7, color=line["color"],
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=0.5))


def _memorization_panel(ax, view: _Scaling) -> None:
    for i, series in enumerate(view.series):
        line, found = view.styles[series], view.entries(series, "memorization_max_mean")
        if found:
            means = np.array([e["memorization_max_mean"] for e in found])
            low = np.array([or_else(e.get("memorization_max_low"), m) for e, m in zip(found, means)])
            high = np.array([or_else(e.get("memorization_max_high"), m) for e, m in zip(found, means)])
            ax.errorbar(view.x(series, [e["images"] for e in found]), means, yerr=[means - low, high - means], capsize=3, **line)
        _crossings(ax, view.fit(series), line, above=i % 2 == 0)
    no_data(ax)
    for level in view.levels:
        ax.axhline(level, color="k", linestyle=":", linewidth=1)
        ax.text(1.0, level, f" {level:.0%}", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.set_ylim(-0.03, 1.05)


def _onset_fit(ax, fit: dict, line: dict, sizes: list[int]) -> None:
    if fit.get("onset_slope") is not None and fit.get("onset_intercept") is not None:
        grid = np.geomspace(sizes[0], sizes[-1], 64)
        ax.plot(grid, fit["onset_intercept"] + fit["onset_slope"] * grid, color=line["color"], linestyle=line["linestyle"],
                linewidth=1, label=f"fit {line['label']}: {fit['onset_slope']:.3g} kimg/image")


def _onset_panel(ax, view: _Scaling) -> None:
    for series in view.series:
        line, reached = view.styles[series], view.entries(series, "onset_kimg_median")
        if reached:
            ax.plot(view.x(series, [e["images"] for e in reached]), [e["onset_kimg_median"] for e in reached],
                    **{**line, "linestyle": "none", "label": None})
        censored = [e["images"] for e in view.entries(series) if _censored(e)]
        if censored:  # drawn at the panel's top: a height would claim an onset that was never seen
            ax.plot(view.x(series, censored), [0.97] * len(censored), linestyle="none", **_open(line),
                    transform=ax.get_xaxis_transform())
        _onset_fit(ax, view.fit(series), line, view.sizes)
    no_data(ax)
    if any(_censored(e) for e in view.per_size):
        ax.set_ymargin(0.2)
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="gray", label="onset not reached")
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _gap_panel(ax, view: _Scaling) -> None:
    for series in view.series:
        _mean_and_std(ax, view, series, "loss_gap")
    no_data(ax)
    ax.axhline(0.0, color="k", linestyle=":", linewidth=1)


def _fid_panel(ax, view: _Scaling) -> None:
    for series in view.series:
        _mean_and_std(ax, view, series, "best_fid_test")
        uncopied = view.entries(series, "uncopied_fid_test_mean")  # quality at matched memorization: no copies rewarded
        if uncopied:
            ax.plot(view.x(series, [e["images"] for e in uncopied]), [e["uncopied_fid_test_mean"] for e in uncopied],
                    color=view.styles[series]["color"], linestyle=":", linewidth=1, **_open(view.styles[series]))
    no_data(ax)
    keys = []
    if view.fid_floor is not None:
        keys.append(ax.axhline(view.fid_floor, color="gray", linestyle=":", label="real-vs-real floor"))
    if any(e.get("uncopied_fid_test_mean") is not None for e in view.per_size):
        keys += ax.plot([], [], color="gray", linestyle=":", marker="o", markerfacecolor="white",
                        label=f"open: best while memorization < {view.onset_threshold:g}")
    if keys:
        ax.legend(handles=keys, fontsize=7)


PANELS = ((_memorization_panel, "(a) memorization (max over snapshots)", "memorization ratio"),
          (_onset_panel, "(b) memorization onset", "onset kimg (median over seeds)"),
          (_gap_panel, "(c) generalization gap", "loss gap (test - train)"),
          (_fid_panel, "(d) sample quality", "best FID vs held-out"))


def scaling_figure(summary: dict, folder: Path, threshold_levels=(0.5, 0.9), fid_floor: float | None = None,
                   onset_threshold: float = 0.1) -> list[Path]:
    """scaling.png, the four panels of the module's docstring; nothing where no seeded re-run completed."""
    if not summary["per_size"]:
        return []
    view = _scaling(summary, threshold_levels, fid_floor, onset_threshold)
    fig, axes = figure(2, 2, figsize=(11, 8), sharex=True)
    for ax, (draw, title, ylabel) in zip(axes.flat, PANELS):
        draw(ax, view)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    size_axis(axes[0, 0], view.sizes)  # the axes share x: one call sets them all
    for ax in axes[1]:
        ax.set_xlabel("training images N")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(len(handles), 3), fontsize=9, frameon=False)
    return [save(fig, folder / "scaling.png")]
