"""What one trial runs, typed: the cell it trains in, its role, seed and overrides, and its resolved trial config.

Tune hands a trainable a plain dict (its `config`), so a suggestion crosses that one boundary as a dict
(`to_tune`) and comes back typed (`from_tune`); the searchers, the tracker, the ledger, the progress line and
the report all read the typed fields, so a misspelt key is an error rather than a silent None. The dict keeps
the key `regime` for the cell's name: the ledgers and `results.parquet` of earlier studies use it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from trainables.config import TrialConfig
from trainables.config_io import ConfigError, describe_validation_error, set_by_path

CELL_KEY = "regime"  # the persisted name of the `cell` field


@dataclass(frozen=True)
class Suggestion:
    cell: str  # "r0.1", "n18", or "n18-model_channels32" with a capacity axis
    regime_fraction: float
    regime_images: int | None = None  # set when the study gives regimes as image counts
    images: int | None = None  # the cell's training-set size (None only in ledgers of early studies)
    capacity: str = ""  # "model_channels=32", or "" without a capacity axis
    fixed: dict[str, Any] = field(default_factory=dict)  # the capacity's trial overrides
    role: str = ""  # baseline, search, best, or an arm's name
    overrides: dict[str, Any] = field(default_factory=dict)  # searched or fixed trial config values
    seed: int = 0
    optuna_study: str | None = None
    optuna_trial: int | None = None  # the searched trial (or, in confirmation, the one confirmed)
    round: int | None = None  # the adaptive design's round that placed it
    placed_by: str = ""  # and why: bracket, refine or confirm (study/stats/design.py)
    trial: dict | None = None  # the trial config, resolved and validated on the driver
    invalid: str | None = None  # why no trial config accepts it (the trial then fails at once)

    def to_tune(self) -> dict:
        """The dict Tune carries; `trial`/`invalid` only where set."""
        tree = asdict(self)
        tree[CELL_KEY] = tree.pop("cell")
        return {key: value for key, value in tree.items() if value is not None or key not in ("trial", "invalid")}

    @classmethod
    def from_tune(cls, config: Mapping) -> Suggestion:
        """The typed suggestion of a Tune config (or a ledger record's); an unknown key is an error."""
        values = dict(config)
        values["cell"] = values.pop(CELL_KEY)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise KeyError(f"a suggestion has no field {', '.join(unknown)}")
        return cls(**values)

    def resolved(self, base_trial: dict) -> Suggestion:
        """This suggestion with its trial config resolved and validated once, or the reason it is not valid: a
        searched value that no config accepts is the search space's bug, and its trial fails at once, unretried."""
        from pydantic import ValidationError

        try:
            return replace(self, trial=trial_config(base_trial, self), invalid=None)
        except ValidationError as err:
            return replace(self, trial=None, invalid=describe_validation_error(err, TrialConfig))
        except ConfigError as err:
            return replace(self, trial=None, invalid=str(err))

    def trial_config(self, base_trial: dict) -> dict:
        """The trial config it carries (resolved on the driver), or resolved now for one built without it."""
        if self.invalid is not None:
            raise ConfigError(self.invalid)
        return self.trial if self.trial is not None else trial_config(base_trial, self)


def trial_config(base: dict, suggestion: Suggestion) -> dict:
    """The base trial config with the cell (regime and capacity), the seed and the overrides applied, validated."""
    tree = copy.deepcopy(base)
    tree["regime_fraction"] = suggestion.regime_fraction
    tree["regime_images"] = suggestion.regime_images
    tree["seed"] = suggestion.seed
    for path, value in {**suggestion.fixed, **suggestion.overrides}.items():
        set_by_path(tree, path, value)
    return TrialConfig.model_validate(tree).model_dump()
