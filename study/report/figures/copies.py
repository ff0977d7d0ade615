"""Samples beside their nearest training images, each pair labelled with its distance ratio and whether the
study's criterion calls it a copy: memorization seen sample by sample, not only counted.

Each panel is one picture (the pairs tiled into one array, a label band above each row), so a figure of a few
hundred pairs draws in well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from study.report.figures.base import pyplot, save

COPY_COLOR, NOVEL_COLOR = "C3", "0.25"
WIDTH_INCHES = 10.0


@dataclass
class CopyPanel:
    """One block of pairs: uint8 samples and their nearest training images [N, C, H, W], ratio and verdict per pair."""

    title: str
    samples: object
    partners: object
    ratios: list[float]
    copied: list[bool]


def _tiled(panel: CopyPanel, columns: int):
    """(RGB canvas, label band height, cell size): pairs left to right, a white band for labels above each row."""
    import numpy as np

    samples, partners = (t.permute(0, 2, 3, 1).cpu().numpy() for t in (panel.samples, panel.partners))
    n, h, w, c = samples.shape
    band, gap = max(4, w // 4 + 2), max(1, w // 8)
    cell_w, cell_h = 2 * w + 3 * gap, h + band + gap
    rows = math.ceil(n / columns)
    canvas = np.full((rows * cell_h + gap, columns * cell_w, 3), 255, dtype=np.uint8)
    for i in range(n):
        top, left = (i // columns) * cell_h + band, (i % columns) * cell_w + gap
        for k, image in enumerate((samples[i], partners[i])):
            x = left + k * (w + gap)
            canvas[top : top + h, x : x + w] = image if c == 3 else image.repeat(3, axis=-1)
    return canvas, band, (cell_w, cell_h)


def _draw(ax, panel: CopyPanel, columns: int) -> None:
    canvas, band, (cell_w, cell_h) = _tiled(panel, columns)
    ax.imshow(canvas, interpolation="nearest")
    for i, (ratio, copied) in enumerate(zip(panel.ratios, panel.copied)):
        x, y = (i % columns + 0.5) * cell_w, (i // columns) * cell_h + band / 2
        ax.text(x, y, f"{'copy' if copied else 'novel'} {ratio:.2f}", ha="center", va="center", fontsize=7,
                color=COPY_COLOR if copied else NOVEL_COLOR)
    ax.set_title(panel.title, fontsize=9)
    ax.set_axis_off()


def copies_figure(panels: list[CopyPanel], path: Path, ratio: float, columns: int = 8) -> Path:
    """Each panel's pairs in rows of `columns` (left: sample, right: nearest training image by pixel L2), one panel
    under the other; a pair is labelled with nearest/second-nearest distance and called a copy below `ratio`."""
    shapes = [_tiled(p, columns)[0].shape for p in panels]
    heights = [WIDTH_INCHES * s[0] / s[1] + 0.35 for s in shapes]
    fig, axes = pyplot().subplots(len(panels), 1, figsize=(WIDTH_INCHES, sum(heights) + 0.4), squeeze=False,
                                  gridspec_kw={"height_ratios": heights}, layout="constrained")
    for ax, panel in zip(axes[:, 0], panels):
        _draw(ax, panel, columns)
    fig.supxlabel(f"each pair: generated sample | nearest training image; copy: nearest < {ratio:.3g} x second-nearest "
                  "(pixel L2)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path)
