"""Samples beside their nearest training images, each pair labelled with its distance ratio and whether the
study's criterion calls it a copy: memorization seen sample by sample, not only counted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from study.report.figures.base import pyplot, save

COPY_COLOR, NOVEL_COLOR = "C3", "0.25"


@dataclass
class CopyPanel:
    """One block of pairs: uint8 samples and their nearest training images [N, C, H, W], ratio and verdict per pair."""

    title: str
    samples: object
    partners: object
    ratios: list[float]
    copied: list[bool]


def _pair(sample, partner):
    """One sample and its nearest training image side by side, as an [H, 2W + 1, C] array with a gap between."""
    import numpy as np

    left, right = (t.permute(1, 2, 0).cpu().numpy() for t in (sample, partner))
    gap = np.full((left.shape[0], 1, left.shape[2]), 255, dtype=left.dtype)
    return np.concatenate([left, gap, right], axis=1)


def _draw(axes, panel: CopyPanel) -> None:
    for ax, sample, partner, ratio, copied in zip(axes, panel.samples, panel.partners, panel.ratios, panel.copied):
        picture = _pair(sample, partner)
        ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"{'copy' if copied else 'novel'} {ratio:.2f}", fontsize=7, color=COPY_COLOR if copied else NOVEL_COLOR, pad=2)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)


def copies_figure(panels: list[CopyPanel], path: Path, ratio: float, columns: int = 8) -> Path:
    """Each panel's pairs in rows of `columns` (left: sample, right: nearest training image by pixel L2), one panel
    under the other; a pair is titled with nearest/second-nearest distance and called a copy below `ratio`."""
    rows = [math.ceil(len(p.ratios) / columns) for p in panels]
    fig = pyplot().figure(layout="constrained", figsize=(1.1 * columns, 0.75 * sum(rows) + 0.45 * len(panels) + 0.5))
    subfigs = fig.subfigures(len(panels), 1, height_ratios=[r + 0.6 for r in rows], squeeze=False)[:, 0]
    for subfig, panel, count in zip(subfigs, panels, rows):
        axes = subfig.subplots(count, columns, squeeze=False).flatten()
        _draw(axes, panel)
        subfig.suptitle(panel.title, fontsize=9)
    fig.supxlabel(f"each pair: generated sample | nearest training image; copy: nearest < {ratio:.3g} x second-nearest (pixel L2)",
                  fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path)
