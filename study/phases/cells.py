"""The cells of a study: each data-limited regime, crossed with each model capacity when the study has that axis.

A cell is the unit that is searched (one Optuna study) or ablated on its own, and the unit the scaling
statistics put on their axes: training images N, and capacity. Its suggestion fields travel with every
trial, so a worker, the tracker and the report all read the cell from the trial itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from study.config import StudyConfig
from study.phases.suggestion import Suggestion
from trainables.data import pool_size, regime_size


@dataclass(frozen=True)
class Cell:
    name: str  # "r0.1", "n18", or "n18-model_channels32" with a capacity axis
    regime_fraction: float
    regime_images: int | None  # set when the study gives regimes as image counts
    images: int  # the training-set size this cell trains on
    capacity: str = ""  # "model_channels=32", or "" without a capacity axis
    fixed: dict[str, Any] = field(default_factory=dict)  # the capacity's trial overrides
    base_trial: dict | None = field(default=None, compare=False, repr=False)  # the study's `trial:`, as a dict

    def suggestion(self, **fields) -> Suggestion:
        """One trial of this cell, with its trial config resolved and validated here, on the driver, once (or the
        reason it is not valid)."""
        suggestion = Suggestion(cell=self.name, regime_fraction=self.regime_fraction, regime_images=self.regime_images,
                                images=self.images, capacity=self.capacity, fixed=dict(self.fixed), **fields)
        return suggestion if self.base_trial is None else suggestion.resolved(self.base_trial)


def _regimes(config: StudyConfig, pool: int) -> list[tuple[str, float, int | None, int]]:
    """(name, fraction, images asked for, images) per regime, smallest first."""
    if isinstance(config.regimes, dict):
        return [(f"n{n}", 1.0, n, regime_size(pool, images=n)) for n in config.regimes["images"]]
    return [(f"r{f:g}", f, None, regime_size(pool, f)) for f in config.regimes]


def study_cells(config: StudyConfig) -> list[Cell]:
    """Every cell of the study, capacity-major, sizes ascending; raises DatasetError for a size the pool lacks."""
    pool = pool_size(config.trial.dataset, config.trial.data_path)
    base = config.trial.model_dump()
    return [_with_capacity(Cell(name, fraction, asked, images, base_trial=base), capacity)
            for capacity in capacity_values(config) for name, fraction, asked, images in _regimes(config, pool)]


def capacity_values(config: StudyConfig) -> list[tuple[str, object] | None]:
    """(dotted trial key, value) per point of the capacity axis, or [None] without one."""
    if not config.capacities:
        return [None]
    (key, values), = config.capacities.items()
    return [(key, value) for value in values]


def sized_cell(config: StudyConfig, images: int, capacity: tuple[str, object] | None) -> Cell:
    """The cell of `images` training images (an adaptive design's placement) at one capacity."""
    pool = pool_size(config.trial.dataset, config.trial.data_path)
    cell = Cell(f"n{images}", 1.0, images, regime_size(pool, images=images), base_trial=config.trial.model_dump())
    return _with_capacity(cell, capacity)


def capacity_label(capacity: tuple[str, object] | None) -> str:
    """How a cell names its capacity: "model_channels=32", or "" without a capacity axis."""
    return "" if capacity is None else f"{capacity[0].rsplit('.', 1)[-1]}={capacity[1]}"


def capacity_axis(label: str) -> str:
    """The axis a capacity label names ("model_channels=32" -> "model_channels")."""
    return label.rsplit("=", 1)[0]


def capacity_number(label: str) -> float | None:
    """The value a capacity label names, where it is a number ("model_channels=32" -> 32.0), else None."""
    try:
        return float(label.rsplit("=", 1)[-1])
    except ValueError:
        return None


def _with_capacity(cell: Cell, capacity: tuple[str, object] | None) -> Cell:
    if capacity is None:
        return cell
    key, value = capacity
    leaf = key.rsplit(".", 1)[-1]
    return replace(cell, name=f"{cell.name}-{leaf}{value}", capacity=capacity_label(capacity), fixed={key: value})
