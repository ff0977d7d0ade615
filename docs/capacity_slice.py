"""The capacity slice beside the scaling study: does ScoreAug's effect on memorization grow with network width?

capacity.yaml trains scaling.yaml's baseline and fixed-ScoreAug arms at narrower widths on three of its sizes with
its confirmation seeds; the scaling study's own arms at those sizes are the reference width (the same trial
configs and seeds, so the same trials). This sets them side by side: the scaling statistics per width (N50, EMM,
onset fit, data multiplier) and, per width and size, how much memorization ScoreAug removes, with a bootstrap
interval of the difference of means. It writes `capacity_scaling.png` (the scaling figure, one line style per width).

    python docs/capacity_slice.py studies/scaling studies/capacity --out docs/img
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.config import load_study_config  # noqa: E402
from study.report.figures import scaling_figure  # noqa: E402
from study.report.scaling import scaling_markdown  # noqa: E402
from study.stats.scaling import bootstrap_pair, scaling_summary  # noqa: E402
from study.report.scaling import arm_rows  # noqa: E402


def _rows(study: Path) -> list[dict]:
    return arm_rows(pq.read_table(study / "results.parquet").to_pylist())


def _width(capacity: str) -> int:
    return int(capacity.rsplit("=", 1)[-1])


def slice_rows(scaling: Path, capacity: Path) -> list[dict]:
    """The capacity study's arm trials, and the scaling study's at the same sizes and arms labelled with its width."""
    narrow = _rows(capacity)
    key = next(iter(load_study_config(str(capacity / "study_config.yaml")).capacities))
    reference = load_study_config(str(scaling / "study_config.yaml")).trial.resolved_model()[key.rsplit(".", 1)[-1]]
    label = f"{key.rsplit('.', 1)[-1]}={reference}"
    sizes, arms = {r["images"] for r in narrow}, {r["arm"] for r in narrow}
    wide = [{**r, "capacity": label} for r in _rows(scaling) if r["images"] in sizes and r["arm"] in arms]
    return sorted(narrow + wide, key=lambda r: (_width(r["capacity"]), r["images"], r["arm"], r["seed"]))


def reduction_markdown(rows: list[dict], arm: str, reference: str = "baseline", n_boot: int = 1000) -> str:
    """Per width and size: the reference arm's memorization minus the arm's, with a bootstrap interval over seeds."""
    lines = [f"| width | images | {reference} | {arm} | memorization removed [95% interval] |", "| --- | --- | --- | --- | --- |"]
    for capacity in sorted({r["capacity"] for r in rows}, key=_width):
        for images in sorted({r["images"] for r in rows}):
            groups = [{images: [r["memorization_max"] for r in rows if (r["capacity"], r["images"], r["arm"]) == (capacity, images, name)]}
                      for name in (reference, arm)]
            if not all(g[images] for g in groups):
                continue
            estimate = bootstrap_pair(*groups, lambda a, b: float(np.mean(a[images]) - np.mean(b[images])), n_boot, 0)
            lines.append(f"| {_width(capacity)} | {images} | {np.mean(groups[0][images]):.3f} | {np.mean(groups[1][images]):.3f} "
                         f"| {estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}] |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scaling", type=Path, help="the finished scaling study's folder")
    parser.add_argument("capacity", type=Path, help="the finished capacity study's folder")
    parser.add_argument("--out", type=Path, default=None, help="where capacity_scaling.png goes (default: not drawn)")
    parser.add_argument("--arm", default="scoreaug_fixed", help="the arm compared with the baseline")
    args = parser.parse_args(argv)
    rows = slice_rows(args.scaling, args.capacity)
    summary = scaling_summary(rows)
    print(scaling_markdown(summary))  # per width: N50, EMM, onset fit, multiplier, then the per-size table
    print(reduction_markdown(rows, args.arm))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            (drawn,) = scaling_figure(summary, Path(folder))
            shutil.copy(drawn, args.out / "capacity_scaling.png")
        print(f"wrote {args.out / 'capacity_scaling.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
