"""The figures of the scaling report, drawn as they would appear in a paper.

Each function takes plain dicts (None values are skipped), writes PNGs into `folder` and returns their paths.
Colour always means arm, in the order arms first appear; a second capacity changes linestyle and marker.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DPI = 120
LINESTYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _arm_colors(arms) -> dict[str, str]:
    """One colour per arm, the same in every figure: the baseline first, the others in name order."""
    ordered = sorted(set(arms), key=lambda arm: (arm != "baseline", arm))
    return {arm: f"C{i % 10}" for i, arm in enumerate(ordered)}


def _size_axis(ax, sizes) -> None:
    """Log axis for training-set sizes, ticked at the sizes actually trained."""
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _no_data(ax) -> None:
    """An empty panel says so, instead of looking like a plotting bug."""
    if not ax.has_data():
        ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="gray")


def _or(value, fallback):
    return fallback if value is None else value


def _censored(entry: dict) -> bool:
    """Most seeds never reached onset at this size, so there is no median to plot."""
    return entry.get("onset_kimg_median") is None and bool(entry.get("onset_censored"))


def _save(fig, path: Path) -> Path:
    fig.canvas.draw()  # constrained layout places labels by the previous draw's tick labels: settle them first
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _seed_band(histories: list[list[dict]], metric: str, log_kimg: bool):
    """kimg, mean, min, max over seeds, at the kimg points where every seed reports `metric`."""
    per_seed = [{h["kimg"]: h[metric] for h in history if h.get(metric) is not None and (h["kimg"] > 0 or not log_kimg)}
                for history in histories]
    kimg = sorted(set.intersection(*(set(points) for points in per_seed)))
    values = np.array([[points[k] for k in kimg] for points in per_seed], dtype=float).reshape(len(per_seed), len(kimg))
    return np.array(kimg), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def curves_figure(curves: list[dict], folder: Path, threshold: float = 0.1) -> list[Path]:
    """Training curves per training-set size: shows when memorization sets in and whether FID or the loss gap saw it.

    One figure per capacity; rows are memorization, held-out FID and train/test loss, columns the sizes.
    A line is the mean over seeds at the kimg points every seed has (no interpolation), the band min..max over
    seeds; kimg is on a log axis when it spans more than 8x (then kimg 0 is left out). The dotted line is the
    memorization onset threshold.
    """
    if not curves:
        return []
    plt = _pyplot()
    from matplotlib.lines import Line2D

    colors = _arm_colors(c["arm"] for c in curves)
    capacities = list(dict.fromkeys(c.get("capacity", "") for c in curves))
    kimgs = [h["kimg"] for c in curves for h in c["history"] if h["kimg"] > 0]
    log_kimg = bool(kimgs) and max(kimgs) > 8 * min(kimgs)
    rows = [(("memorization",), "memorization ratio"), (("fid_test",), "FID vs held-out"),
            (("train_loss", "test_loss"), "loss")]
    paths = []
    for capacity in capacities:
        trials = [c for c in curves if c.get("capacity", "") == capacity]
        present = [(metrics, label) for metrics, label in rows
                   if any(h.get(m) is not None for c in trials for h in c["history"] for m in metrics)]
        if not present:
            continue
        sizes = sorted({c["images"] for c in trials})
        fig, axes = plt.subplots(len(present), len(sizes), figsize=(3.2 * len(sizes), 2.4 * len(present) + 0.8),
                                 sharex=True, sharey="row", squeeze=False, layout="constrained")
        for col, images in enumerate(sizes):
            for row, (metrics, label) in enumerate(present):
                ax = axes[row, col]
                for arm, color in colors.items():
                    histories = [c["history"] for c in trials if c["arm"] == arm and c["images"] == images]
                    if not histories:
                        continue
                    for metric, style in zip(metrics, ("-", "--")):
                        kimg, mean, low, high = _seed_band(histories, metric, log_kimg)
                        if not len(kimg):
                            continue
                        ax.plot(kimg, mean, style, color=color, marker=".", markersize=4)
                        if len(histories) >= 2:
                            ax.fill_between(kimg, low, high, color=color, alpha=0.2, linewidth=0)
                _no_data(ax)
                if metrics == ("memorization",):
                    ax.axhline(threshold, color="k", linestyle=":", linewidth=1)
                    ax.set_ylim(-0.03, 1.03)
                ax.grid(alpha=0.3)
                if col == 0:
                    ax.set_ylabel(label)
                if row == 0:
                    ax.set_title(f"N = {images}")
                if row == len(present) - 1:
                    ax.set_xlabel("kimg")
        if log_kimg:  # the axes share x: one call sets them all; ticks at the eval points, plainly numbered
            import matplotlib.ticker

            ticks = []
            for kimg in sorted({h["kimg"] for c in curves for h in c["history"] if h.get("kimg")}):
                if not ticks or kimg >= 1.4 * ticks[-1]:  # labels that would touch on a log axis are left out
                    ticks.append(kimg)
            axes[0, 0].set_xscale("log")
            axes[0, 0].set_xticks(ticks, [f"{k:.3g}" for k in ticks])
            axes[0, 0].xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        handles = [Line2D([], [], color=color, label=arm) for arm, color in colors.items()]
        handles.append(Line2D([], [], color="k", linestyle=":", label=f"onset threshold ({threshold:g})"))
        if any(metrics == ("train_loss", "test_loss") for metrics, _ in present):
            handles += [Line2D([], [], color="gray", label="train loss"),
                        Line2D([], [], color="gray", linestyle="--", label="test loss")]
        fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=8, frameon=False,
                   title=f"capacity: {capacity}" if len(capacities) > 1 else None, title_fontsize=10)
        name = f"curves_{re.sub(r'[^A-Za-z0-9_.-]+', '-', capacity)}.png" if len(capacities) > 1 else "curves.png"
        paths.append(_save(fig, folder / name))
    return paths


def scaling_figure(summary: dict, folder: Path, threshold_levels=(0.5, 0.9), fid_floor: float | None = None,
                   onset_threshold: float = 0.1) -> list[Path]:
    """The report's main figure: memorization, its onset, the loss gap and FID against training-set size.

    (a) maximum memorization over snapshots (bars: seed interval) with the 50%/90% levels and each arm's N50 and EMM
    (bars: bootstrap interval); (b) median onset kimg with each arm's linear fit, open markers at the top where most
    seeds never reached onset; (c) loss gap and (d) best held-out FID, mean and seed std, and (open markers) the best
    among the eval points that copy less than `onset_threshold`, so quality is compared at matched memorization. Points of different
    arms at one size are shifted slightly sideways so their bars do not hide each other.
    """
    if not summary["per_size"]:  # no seeded re-run completed: nothing to draw
        return []
    plt = _pyplot()

    per_size, per_arm = summary["per_size"], summary["per_arm"]
    colors = _arm_colors(e["arm"] for e in per_size + per_arm)
    capacities = list(dict.fromkeys(e.get("capacity", "") for e in per_size + per_arm))
    series = list(dict.fromkeys((e["arm"], e.get("capacity", "")) for e in per_size + per_arm))
    sizes = sorted({e["images"] for e in per_size})

    def style(arm, capacity):
        k = capacities.index(capacity)
        label = f"{arm}, {capacity}" if len(capacities) > 1 else arm
        return dict(color=colors[arm], linestyle=LINESTYLES[k % len(LINESTYLES)], marker=MARKERS[k % len(MARKERS)], label=label)

    def points(arm, capacity, key):
        entries = sorted((e for e in per_size if (e["arm"], e.get("capacity", "")) == (arm, capacity)), key=lambda e: e["images"])
        return [e for e in entries if e.get(key) is not None]

    def shift(i):
        return 10 ** (0.02 * (i - (len(series) - 1) / 2))

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True, layout="constrained")
    (mem, onset), (gap, fid) = axes
    for i, (arm, capacity) in enumerate(series):
        line = style(arm, capacity)
        found = points(arm, capacity, "memorization_max_mean")
        if found:
            means = np.array([e["memorization_max_mean"] for e in found])
            low = np.array([_or(e.get("memorization_max_low"), m) for e, m in zip(found, means)])
            high = np.array([_or(e.get("memorization_max_high"), m) for e, m in zip(found, means)])
            mem.errorbar([e["images"] * shift(i) for e in found], means, yerr=[means - low, high - means], capsize=3, **line)
        for ax, metric in ((gap, "loss_gap"), (fid, "best_fid_test")):
            found = points(arm, capacity, f"{metric}_mean")
            if found:
                ax.errorbar([e["images"] * shift(i) for e in found], [e[f"{metric}_mean"] for e in found],
                            yerr=[_or(e.get(f"{metric}_std"), 0.0) for e in found], capsize=3, **line)
        uncopied = points(arm, capacity, "uncopied_fid_test_mean")  # quality at matched memorization: no copies rewarded
        if uncopied:
            fid.plot([e["images"] * shift(i) for e in uncopied], [e["uncopied_fid_test_mean"] for e in uncopied], color=line["color"],
                     linestyle=":", linewidth=1, marker=line["marker"], markerfacecolor="white", markeredgecolor=line["color"])
        reached = points(arm, capacity, "onset_kimg_median")
        if reached:
            onset.plot([e["images"] * shift(i) for e in reached], [e["onset_kimg_median"] for e in reached],
                       **{**line, "linestyle": "none", "label": None})
        censored = [e["images"] for e in per_size if (e["arm"], e.get("capacity", "")) == (arm, capacity)
                    and _censored(e)]
        if censored:
            onset.plot([n * shift(i) for n in censored], [0.97] * len(censored), linestyle="none", marker=line["marker"],
                       markerfacecolor="white", markeredgecolor=line["color"], transform=onset.get_xaxis_transform())

        fit = next((e for e in per_arm if (e["arm"], e.get("capacity", "")) == (arm, capacity)), {})
        if fit.get("onset_slope") is not None and fit.get("onset_intercept") is not None:
            grid = np.geomspace(sizes[0], sizes[-1], 64)
            onset.plot(grid, fit["onset_intercept"] + fit["onset_slope"] * grid, color=line["color"], linestyle=line["linestyle"],
                       linewidth=1, label=f"fit {line['label']}: {fit['onset_slope']:.3g} kimg/image")
        for key, level in (("n50", 0.5), ("emm", 0.9)):  # by definition, whatever levels are drawn
            if fit.get(key) is None:
                continue
            x = fit[key]
            low, high = _or(fit.get(f"{key}_low"), x), _or(fit.get(f"{key}_high"), x)
            mem.vlines(x, -0.03, level, color=line["color"], linestyle=line["linestyle"], linewidth=0.8, alpha=0.6)
            mem.errorbar([x], [level], xerr=[[x - low], [high - x]], marker="|", markersize=10, capsize=3, color=line["color"])
            above = i % 2 == 0
            mem.annotate(f"{key.upper()} {line['label']}", (x, level), xytext=(0, 6 if above else -6), textcoords="offset points",
                         ha="center", va="bottom" if above else "top", fontsize=7, color=line["color"],
                         bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=0.5))
    for ax in axes.flat:
        _no_data(ax)

    for level in threshold_levels:
        mem.axhline(level, color="k", linestyle=":", linewidth=1)
        mem.text(1.0, level, f" {level:.0%}", transform=mem.get_yaxis_transform(), va="center", fontsize=8)
    mem.set_ylim(-0.03, 1.05)
    if any(_censored(e) for e in per_size):
        onset.set_ymargin(0.2)
        onset.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="gray", label="onset not reached")
    onset.set_ylim(bottom=0)
    if onset.get_legend_handles_labels()[0]:
        onset.legend(fontsize=7)
    gap.axhline(0.0, color="k", linestyle=":", linewidth=1)
    keys = []
    if fid_floor is not None:
        keys.append(fid.axhline(fid_floor, color="gray", linestyle=":", label="real-vs-real floor"))
    if any(e.get("uncopied_fid_test_mean") is not None for e in per_size):
        keys += fid.plot([], [], color="gray", linestyle=":", marker="o", markerfacecolor="white",
                         label=f"open: best while memorization < {onset_threshold:g}")
    if keys:
        fid.legend(handles=keys, fontsize=7)

    titles = (("(a) memorization (max over snapshots)", "memorization ratio"),
              ("(b) memorization onset", "onset kimg (median over seeds)"),
              ("(c) generalization gap", "loss gap (test - train)"),
              ("(d) sample quality", "best FID vs held-out"))
    for ax, (title, ylabel) in zip(axes.flat, titles):
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _size_axis(mem, sizes)
    for ax in axes[1]:
        ax.set_xlabel("training images N")
    handles, labels = mem.get_legend_handles_labels()
    if not handles:
        handles, labels = gap.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(len(handles), 3), fontsize=9, frameon=False)
    return [_save(fig, folder / "scaling.png")]


def pareto_figure(fronts: list[dict], folder: Path) -> list[Path]:
    """The search's trade-off per regime (both objectives minimized): which trials are worth keeping, and where the
    baseline sits among them. Grey: all trials (x: infeasible); coloured staircase: the Pareto front; ring: baseline."""
    if not fronts:
        return []
    plt = _pyplot()
    from matplotlib.lines import Line2D

    columns = min(len(fronts), 3)
    rows = -(-len(fronts) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows + 0.5), squeeze=False, layout="constrained")
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
        baseline = [t["values"] for t in trials if t["role"] == "baseline"]
        if baseline:
            ax.scatter(*zip(*baseline), facecolors="none", edgecolors="k", s=140, linewidths=1.5, zorder=4)
        _no_data(ax)
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
    return [_save(fig, folder / "pareto.png")]


def nearest_figure(pairs: dict[str, Path], images: int, folder: Path) -> list[Path]:
    """Generated samples beside their nearest training images, one column per arm: memorization seen, not measured."""
    if not pairs:
        return []
    plt = _pyplot()

    grids = {arm: plt.imread(path) for arm, path in pairs.items()}
    aspect = max(g.shape[0] / g.shape[1] for g in grids.values())
    width = 4.0
    fig, axes = plt.subplots(1, len(grids), figsize=(width * len(grids), width * aspect + 0.9), squeeze=False, layout="constrained")
    for ax, (arm, grid) in zip(axes[0], grids.items()):
        ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{arm}  (N = {images})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.supxlabel("left: generated sample, right: nearest training image (pixel L2)", fontsize=9)
    return [_save(fig, folder / "nearest.png")]
