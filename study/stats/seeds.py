"""Statistics over training seeds that every report table shares: means with their spread, in regime order."""

from __future__ import annotations

import numpy as np


def regimes_in_order(rows: list[dict]) -> list[str]:
    """The cells of the rows, capacity-major, smallest training set first."""
    first = {}
    for row in rows:
        first.setdefault(row["regime"], (row.get("capacity") or "", row["images_in_regime"]))
    return sorted(first, key=first.get)


def mean_and_spread(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values)."""
    array = np.array(values, dtype=float)
    return (float(array.mean()) if array.size else None, float(array.std(ddof=1)) if array.size > 1 else None)

