"""The study's checks before Ray starts: every distinct trial config it will launch, checked once on the driver.

Distinct configs are the base trial crossed with the capacity axis and the ablation arms; searched values
stay inside ranges the trial config validates. The dataset is checked once for all of them, and an adaptive
design's size range against its training pool. A real start
stops at the first problem; `--dry-run` lists them all.
"""

from __future__ import annotations

from trainables.config import TrialConfig
from trainables.config_io import ConfigError, set_by_path
from trainables.data import DatasetError
from trainables.preflight import trial_problems

from study.config import StudyConfig


def trial_variants(config: StudyConfig) -> dict[str, dict]:
    """Where each fixed variation of the base trial comes from ("" for the base itself) -> its overrides."""
    capacities = [("", {})] + [(f"capacities {key}={value}", {key: value})
                               for key, values in (config.capacities or {}).items() for value in values]
    arms = ({f"ablation.arms.{arm}": overrides for arm, overrides in config.ablation.arms.items()} if config.ablation else
            {"": {}, **{f"confirm.arms.{arm}": overrides for arm, overrides in config.confirm.arms.items()}})
    return {" with ".join(filter(None, (arm, capacity))): {**capacity_overrides, **overrides}
            for arm, overrides in arms.items() for capacity, capacity_overrides in capacities}


def study_problems(config: StudyConfig, on_this_machine: bool) -> list[Exception]:
    """Every ConfigError (naming the variant and the key) and DatasetError of the study, each once, in order."""
    found: dict[str, Exception] = {}
    shape = None
    for origin, overrides in trial_variants(config).items():
        tree = config.trial.model_dump()
        for path, value in overrides.items():
            set_by_path(tree, path, value)
        problems, shape = trial_problems(TrialConfig.model_validate(tree), shape, on_this_machine)
        for err in problems:  # one problem shared by every variant (missing weights, say) is listed once
            named = ConfigError(f"{origin + ': ' if origin else ''}trial.{err}") if isinstance(err, ConfigError) else err
            found.setdefault(str(err), named)
    data_found = not any(isinstance(err, DatasetError) for err in found.values())
    sizes = design_size_problem(config) if data_found else None
    return list(found.values()) + ([sizes] if sizes else [])


def design_size_problem(config: StudyConfig) -> Exception | None:
    """An adaptive design's size range against the training pool (with the data found: its count means something)."""
    if config.design is None:
        return None
    from study.phases.adaptive import size_range_problem  # imports Tune: only for a design

    return size_range_problem(config)


def check_study(config: StudyConfig, on_this_machine: bool) -> None:
    """Raise the study's first ConfigError or DatasetError."""
    problems = study_problems(config, on_this_machine)
    if problems:
        raise problems[0]
