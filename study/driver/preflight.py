"""The study's checks before Ray starts: every distinct trial config it will launch, checked once on the driver.

Distinct configs are the base trial crossed with the capacity axis and the ablation arms; searched values
stay inside ranges the trial config validates. The dataset is checked once for all of them.
"""

from __future__ import annotations

from trainables.config import TrialConfig
from trainables.config_io import ConfigError, set_by_path
from trainables.preflight import check_trial

from study.config import StudyConfig


def trial_variants(config: StudyConfig) -> dict[str, dict]:
    """Where each fixed variation of the base trial comes from ("" for the base itself) -> its overrides."""
    capacities = [("", {})] + [(f"capacities {key}={value}", {key: value})
                               for key, values in (config.capacities or {}).items() for value in values]
    arms = ({f"ablation.arms.{arm}": overrides for arm, overrides in config.ablation.arms.items()} if config.ablation else
            {"": {}, **{f"confirm.arms.{arm}": overrides for arm, overrides in config.confirm.arms.items()}})
    return {" with ".join(filter(None, (arm, capacity))): {**capacity_overrides, **overrides}
            for arm, overrides in arms.items() for capacity, capacity_overrides in capacities}


def check_study(config: StudyConfig, on_this_machine: bool) -> None:
    """Raise ConfigError or DatasetError naming the variant and the problem."""
    shape = None
    for origin, overrides in trial_variants(config).items():
        tree = config.trial.model_dump()
        for path, value in overrides.items():
            set_by_path(tree, path, value)
        try:
            shape = check_trial(TrialConfig.model_validate(tree), shape, on_this_machine)
        except ConfigError as err:
            raise ConfigError(f"{origin + ': ' if origin else ''}trial.{err}") from None
