"""The adaptive design's figures: where it placed its trials and what the fitted curves say, and N50 against
training time (the memorization phase diagram) with the data multiplier beneath it."""

from __future__ import annotations

from pathlib import Path

from study.phases.cells import capacity_axis, capacity_number
from study.report.figures.base import arm_colors, figure, log_ticks, no_data, save


def _placements_panel(ax, summary: dict, colors: dict) -> None:
    """Memorization against N per arm: the fitted curve and its 95% band, each trial numbered in placement order
    (open triangles: stopped as decided, so the true value lies at or above the point)."""
    final = summary["final"] or {"curves": {}}
    for arm, curve in final["curves"].items():
        ax.plot(curve["images"], curve["mid"], color=colors[arm], label=arm)
        if curve["low"] is not None:
            ax.fill_between(curve["images"], curve["low"], curve["high"], color=colors[arm], alpha=0.15, linewidth=0)
    for order, placed in enumerate(summary["placements"], start=1):
        marker = "^" if placed["censored"] else "o"
        ax.scatter(placed["images"], placed["memorization_max"], marker=marker, color=colors[placed["arm"]],
                   facecolors="none" if placed["censored"] else colors[placed["arm"]], zorder=3, s=22)
        ax.annotate(str(order), (placed["images"], placed["memorization_max"]), textcoords="offset points",
                    xytext=(3, 3), fontsize=6, color=colors[placed["arm"]])
    for level in (0.5, 0.9):
        ax.axhline(level, color="gray", linestyle=":", linewidth=0.8)
    sizes = [p["images"] for p in summary["placements"]]
    ticks = [n for n in (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
             if min(sizes) / 1.3 <= n <= max(sizes) * 1.3] or sorted(set(sizes))
    log_ticks(ax, ticks, [str(n) for n in ticks])
    ax.set_xlabel("training images N")
    ax.set_ylabel("memorization (max over eval points)")
    ax.legend(fontsize=7)
    no_data(ax)


def design_figure(summaries: dict[str, dict], folder: Path) -> list[Path]:
    colors = arm_colors([p["arm"] for s in summaries.values() for p in s["placements"]])
    fig, axes = figure(1, len(summaries), figsize=(5.5 * len(summaries), 4), squeeze=False)
    for ax, (capacity, summary) in zip(axes[0], summaries.items()):
        _placements_panel(ax, summary, colors)
        ax.set_title(f"adaptive design{' at ' + capacity if capacity else ''}", fontsize=9)
    return [save(fig, folder / "design.png")]


def _estimate_points(rows: list[dict], key: str, arm: str, name: str, x: str = "kimg") -> tuple[list, list, list]:
    """(x, value, [below, above] error) where the estimate has a two-sided interval."""
    xs, ys, errors = [], [], [[], []]
    for row in rows:
        entry = next((e for e in row.get(key, []) if e["arm"] == arm), None)
        if entry and entry[name] is not None and entry[f"{name}_low"] is not None and entry[f"{name}_high"] is not None:
            xs.append(row[x])
            ys.append(entry[name])
            errors[0].append(entry[name] - entry[f"{name}_low"])
            errors[1].append(entry[f"{name}_high"] - entry[name])
    return xs, ys, errors


def _log_count_axis(ax) -> None:
    """A log y axis for image counts, labelled as plain numbers (20, 30, 50), not as powers of ten."""
    import matplotlib.ticker

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())


def _estimate_panels(axes, rows: list[dict], colors: dict, x: str) -> None:
    """N50 per arm (log scale) above each multiplier, against `x` (kimg or capacity), two-sided intervals only."""
    arms = sorted({e["arm"] for row in rows for e in row.get("per_arm", [])})
    for arm in arms:
        xs, ys, errors = _estimate_points(rows, "per_arm", arm, "n50", x)
        axes[0].errorbar(xs, ys, yerr=errors, marker="o", capsize=3, color=colors[arm], label=f"N50 {arm}")
        xs, ys, errors = _estimate_points(rows, "multipliers", arm, "data_multiplier", x)
        if xs:
            axes[1].errorbar(xs, ys, yerr=errors, marker="s", capsize=3, color=colors[arm], label=arm)
    if axes[0].has_data():
        _log_count_axis(axes[0])
    axes[0].set_ylabel("N50 (training images)")
    axes[1].set_ylabel("data multiplier")
    axes[1].axhline(1.0, color="gray", linestyle=":", linewidth=0.8)


def _finish(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    no_data(ax)


def _kimg_panels(axes, summary: dict, colors: dict) -> None:
    rows = summary["by_kimg"]
    _estimate_panels(axes, rows, colors, "kimg")
    kimgs = [row["kimg"] for row in rows]
    for ax in axes:
        if kimgs:
            log_ticks(ax, kimgs, [f"{k:.3g}" for k in kimgs])
            ax.set_xlim(min(kimgs) / 1.25, max(kimgs) * 1.25)
        _finish(ax)
    axes[1].set_xlabel("kimg trained")


def n50_kimg_figure(summaries: dict[str, dict], folder: Path) -> list[Path]:
    colors = arm_colors([p["arm"] for s in summaries.values() for p in s["placements"]])
    fig, axes = figure(2, len(summaries), figsize=(5 * len(summaries), 6), squeeze=False)
    for column, (capacity, summary) in enumerate(summaries.items()):
        _kimg_panels(axes[:, column], summary, colors)
        axes[0, column].set_title(f"N50 against training time{' at ' + capacity if capacity else ''}", fontsize=9)
    return [save(fig, folder / "n50_kimg.png")]


def capacity_figure(summaries: dict[str, dict], folder: Path) -> list[Path]:
    """Each arm's N50 and each multiplier against the capacity value (a numeric axis such as model_channels):
    whether ScoreAug's benefit grows with the network. Only two-sided intervals are drawn; bounds are in the table.
    Nothing for a capacity axis that is not numeric."""
    rows = [{"capacity": capacity_number(label), **(s["final"] or {})} for label, s in summaries.items()]
    if any(row["capacity"] is None for row in rows):
        return []
    colors = arm_colors([p["arm"] for s in summaries.values() for p in s["placements"]])
    fig, axes = figure(1, 2, figsize=(10, 4))
    _estimate_panels(axes, rows, colors, "capacity")
    values = sorted(row["capacity"] for row in rows)
    for ax in axes:
        log_ticks(ax, values, [f"{v:g}" for v in values])
        ax.set_xlabel(capacity_axis(next(iter(summaries))))
        _finish(ax)
    return [save(fig, folder / "capacity.png")]
