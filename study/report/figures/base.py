"""What every report figure shares: one pyplot setup, one log axis for training-set sizes, one save, one colour per arm.

matplotlib is imported on first use, so a study that never writes its report never loads it.
"""

from __future__ import annotations

from pathlib import Path

from study.contract import Role

DPI = 120
LINESTYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v")


def pyplot():
    """pyplot on the Agg backend: figures are written to files on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(rows: int = 1, columns: int = 1, **options):
    """A figure with a grid of axes, laid out by constrained layout (labels and an `outside` legend never clip)."""
    return pyplot().subplots(rows, columns, layout="constrained", **options)


def save(fig, path: Path) -> Path:
    """Write the figure as a PNG and free it: a report draws dozens, pyplot would keep them all."""
    fig.canvas.draw()  # constrained layout places labels by the previous draw's tick labels: settle them first
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def log_ticks(ax, ticks, labels) -> None:
    """A log x axis labelled plainly at the given ticks, without log-scale minor ticks between them."""
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.set_xticks(ticks, labels)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def size_axis(ax, sizes) -> None:
    """Log axis for training-set sizes, ticked at the sizes actually trained."""
    log_ticks(ax, sizes, [str(n) for n in sizes])


def arm_colors(arms) -> dict[str, str]:
    """One colour per arm, the same in every figure: the baseline first, the others in name order."""
    ordered = sorted(set(arms), key=lambda arm: (arm != Role.BASELINE, arm))
    return {arm: f"C{i % 10}" for i, arm in enumerate(ordered)}


def no_data(ax) -> None:
    """An empty panel says so, instead of looking like a plotting bug."""
    if not ax.has_data():
        ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="gray")


def or_else(value, fallback):
    return fallback if value is None else value
