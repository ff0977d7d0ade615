"""The study config: what to search, in which regimes, on which resources, tracked where.

It embeds a full trial config (`trial:`) as the base every trial starts from; the search space's
overrides and the regime are applied on top of it, per trial.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from study.contract import OBJECTIVES, SCHEDULER_METRICS, Role
from trainables.config import StrictModel, TrialConfig
from trainables.config_io import ConfigError, apply_overrides, describe_validation_error, load_yaml, validate

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def optuna_url(output: Path) -> str:
    """The Optuna RDB storage of a study's output folder (one study per cell in it)."""
    return f"sqlite:///{Path(output) / 'optuna.db'}"

# What a search can optimise: every one is reported by the worker or derived from a trial's curve on the driver.
Objective = Literal[OBJECTIVES]


class SearchConfig(StrictModel):
    space: str = "scoreaug"  # a function in search_spaces.spaces
    trials_per_regime: int = Field(4, ge=1)  # the baseline included
    seed: int = 0
    metric: Objective = "fid"  # the single objective (ignored when `objectives` is set)
    objectives: list[Objective] | None = Field(None, min_length=2)  # multi-objective TPE; a Pareto front per regime
    max_memorization: float | None = Field(None, ge=0.0, le=1.0)  # constraint on memorization_max: above it is infeasible
    mode: Literal["min", "max"] = "min"  # direction of every objective, and of ASHA's metric

    @property
    def objective_names(self) -> list[str]:
        return list(self.objectives or [self.metric])


class SchedulerConfig(StrictModel):
    kind: Literal["asha", "none"] = "asha"
    metric: Literal[SCHEDULER_METRICS] = "test_loss"  # must be reported at every eval point
    grace_kimg: float = Field(5.0, gt=0)
    reduction_factor: float = Field(2.0, gt=1)


class ConfirmConfig(StrictModel):
    seeds: int = Field(2, ge=0)  # fresh training seeds per confirmed config; 0 skips confirmation
    seed_offset: int = Field(1000, ge=1)
    # The confirmed ScoreAug config of a regime: among its feasible searched trials (Pareto-optimal ones in a
    # multi-objective search), the one lowest (mode max: highest) in this objective; None: the first objective.
    pick_by: Objective | None = None
    # Fixed configs confirmed beside them in every cell with the same seeds (arm name -> {trial key: value}):
    # e.g. ScoreAug at one sensible setting, so a scaling study compares baseline, fixed and searched ScoreAug.
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ScalingConfig(StrictModel):
    """How the memorization scaling statistics are estimated (study/stats/scaling.py)."""

    onset_threshold: float = Field(0.1, gt=0.0, lt=1.0)  # memorization that marks a trial's onset of copying
    reference_arm: str = Role.BASELINE.value  # data multiplier = this arm's N50 / each other arm's N50
    bootstrap: int = Field(1000, ge=100)  # resamples over seeds for every interval
    bootstrap_seed: int = 0  # fixed, so a report reproduces to the digit


class DesignConfig(StrictModel):
    """An adaptive scaling design (study/phases/adaptive.py, study/stats/design.py): the study places its
    training-set sizes itself, round by round, where the next trials tell most about each arm's N50 and the
    data multiplier, and stops trials whose answer is decided. Arms: the baseline and `confirm.arms`, plus the
    searched best with `searched_arm` (searched first at the sizes of `regimes`; the config picked at the
    smallest of them, where copying is most at stake, is then placed like any other arm)."""

    kind: Literal["adaptive"] = "adaptive"
    # Sizes are image counts in [min_images, max_images]. None: one image per class on a labelled dataset (a
    # class-balanced subset needs that; below it a subset of n images holds one image of each of n classes), else 2;
    # and the whole training pool.
    min_images: int | None = Field(None, ge=2)
    max_images: int | None = Field(None, ge=3)
    slots: int | None = Field(None, ge=1)  # trials per round; None: as many as run at once
    target_log_width: float = Field(0.2, gt=0)  # stop once each multiplier's 95% interval is this wide on the log scale
    max_trials: int = Field(24, ge=2)  # and at the latest after this many trials
    max_kimg: float | None = Field(None, gt=0)  # or this many training kimg over all trials
    saturation: float = Field(0.9, gt=0.0, le=1.0)  # a trial copying this much is stopped: its answer is decided
    slope: Literal["arm", "shared"] = "arm"  # one logistic slope per arm, or parallel curves (a relative-potency assay)
    searched_arm: bool = False
    seed_offset: int = Field(0, ge=0)


class ResourcesConfig(StrictModel):
    num_workers: int = Field(1, ge=1)  # DDP workers per trial
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)  # None: as many trials as the cluster fits
    num_cpus: int | None = Field(None, ge=1)  # CPUs of a local Ray instance; None: all of this machine
    max_failures: int = Field(2, ge=0)  # worker-group restarts from the last checkpoint
    # A 1-worker trial trains inside its Tune trial process (Ray Train's local mode), which Tune reuses from trial
    # to trial: no worker processes to spawn and no torch to import per trial. false: always a worker group.
    reuse_trial_process: bool = True
    controller_failure_limit: int = Field(3, ge=1)
    autoscaling: bool = False  # true on a `ray up` cluster: GPU nodes may appear after launch


class AblationConfig(StrictModel):
    """Fixed arms instead of a search: every arm in every regime, once per training seed (no Optuna, no ASHA)."""

    arms: dict[str, dict[str, Any]] = Field(min_length=1)  # arm name -> {dotted trial config path: value}
    seeds: int = Field(3, ge=1)
    seed_offset: int = Field(0, ge=0)


class FailuresConfig(StrictModel):
    """When a study with failed trials counts as failed (exit status 1): all failed, or more than this fraction."""

    max_fraction: float = Field(0.5, ge=0.0, le=1.0)


class TrackingConfig(StrictModel):
    uri: str | None = None  # None: sqlite:///<output>/mlflow.db
    experiment: str | None = None  # None: the study name


class StudyConfig(StrictModel):
    name: str = "demo"
    output: str | None = None  # None: ./studies/<name>
    storage_path: str | None = None  # Tune storage: a shared path or s3:// / gs://; None: <output>/tune
    # Fractions of the training pool, or training-set sizes: {images: [18, 36, 72]}. Subsets are nested (and
    # class-balanced on labelled datasets), so regimes differ only in size.
    regimes: list[float] | dict[str, list[int]] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    # An optional second scaling axis: one dotted trial key and its values, e.g. {model.model_channels: [16, 32, 64]}.
    # Every regime is crossed with every value; each cell is searched (or ablated) on its own.
    capacities: dict[str, list[Any]] | None = None
    trial: TrialConfig = Field(default_factory=TrialConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    confirm: ConfirmConfig = Field(default_factory=ConfirmConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ablation: AblationConfig | None = None  # set: run these arms instead of search + confirmation
    design: DesignConfig | None = None  # set: an adaptive scaling design instead of confirmation at fixed sizes
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    failures: FailuresConfig = Field(default_factory=FailuresConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError("must be 1-64 letters, digits, '_', '.', '-'")
        return value

    @field_validator("storage_path")
    @classmethod
    def _storage_path(cls, value: str | None) -> str | None:
        if value is None or "://" not in value:
            return value
        scheme, _, rest = value.partition("://")
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) or not rest.strip("/"):
            raise ValueError("must be a path shared by every node (NFS) or a URI with a bucket, e.g. s3://bucket/prefix")
        return value

    @field_validator("regimes", mode="before")
    @classmethod
    def _regime_shape(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) != {"images"} or not isinstance(value["images"], list):
                raise ValueError("training-set sizes are given as {images: [18, 36, 72]}")
            if not value["images"]:
                raise ValueError("List should have at least 1 item")
        elif isinstance(value, list) and not value:
            raise ValueError("List should have at least 1 item")
        return value

    @field_validator("regimes")
    @classmethod
    def _regimes(cls, value: list[float] | dict[str, list[int]]) -> list[float] | dict[str, list[int]]:
        if isinstance(value, dict):
            sizes = value["images"]
            if any(size < 2 for size in sizes):
                raise ValueError(f"each regime size is at least 2 images; {min(sizes)} is not")
            if len(set(sizes)) != len(sizes):
                raise ValueError("regimes must be distinct")
            return {"images": sorted(sizes)}
        for fraction in value:
            if not 0 < fraction <= 1:
                raise ValueError(f"each regime is a fraction of the training set in (0, 1]; {fraction} is not")
        if len(set(value)) != len(value):
            raise ValueError("regimes must be distinct")
        return sorted(value)

    @field_validator("capacities")
    @classmethod
    def _capacities(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if value is None:
            return None
        if len(value) != 1:
            raise ValueError("one capacity axis: a single dotted trial key with its values, e.g. {model.model_channels: [16, 32]}")
        (key, values), = value.items()
        if not values or len(set(map(repr, values))) != len(values):
            raise ValueError(f"capacities.{key}: give distinct values")
        return value

    @model_validator(mode="after")
    def _check(self) -> "StudyConfig":
        from search_spaces.spaces import SPACES

        if self.search.space not in SPACES:
            raise ValueError(f"search.space {self.search.space!r} is unknown; choose one of {', '.join(SPACES)}")
        named = [("search.objectives" if self.search.objectives else "search.metric", o) for o in self.search.objective_names]
        for key, objective in named + [("confirm.pick_by", self.confirm.pick_by or "")]:
            if objective.startswith("fid") and not self.trial.eval.fid:
                raise ValueError(f"{key} {objective} needs trial.eval.fid: true")
        if self.confirm.pick_by and self.confirm.pick_by not in self.search.objective_names:
            raise ValueError(f"confirm.pick_by {self.confirm.pick_by} must be one of the search objectives "
                             f"({', '.join(self.search.objective_names)})")
        if self.ablation:
            self._check_arms("ablation.arms", self.ablation.arms)
        if self.design:
            self._check_design()
        if self.confirm.arms:
            self._check_arms("confirm.arms", self.confirm.arms, reserved=tuple(Role))
        if self.capacities:
            self._check_overrides("capacities", {f"{key}={v}": {key: v} for key, values in self.capacities.items() for v in values})
        if self.scheduler.kind == "asha" and self.scheduler.metric.startswith("fid") and self.trial.eval.fid_at != "every":
            raise ValueError("scheduler.metric fid needs trial.eval.fid_at: every (ASHA compares trials at every eval point)")
        return self

    def _check_design(self) -> None:
        if self.ablation:
            raise ValueError("design and ablation are two kinds of study; set one of them")
        if not self.trial.eval.fid:
            raise ValueError("design needs trial.eval.fid: true (memorization is measured with the sample metrics)")
        if not self.confirm.arms and not self.design.searched_arm:
            raise ValueError("design needs an arm beside the baseline: confirm.arms or design.searched_arm: true")
        low, high = self.design.min_images, self.design.max_images
        if low is not None and high is not None and low >= high:
            raise ValueError(f"design.min_images ({low}) must be below design.max_images ({high})")

    def _check_arms(self, where: str, arms: dict[str, dict[str, Any]], reserved: tuple[str, ...] = ()) -> None:
        for name in arms:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
                raise ValueError(f"{where}: arm name {name!r} must be 1-64 letters, digits, '_', '.', '-'")
            if name in reserved:
                raise ValueError(f"{where}: {name!r} names a role the study gives itself; choose another arm name")
        self._check_overrides(where, arms)

    def _check_overrides(self, where: str, named: dict[str, dict[str, Any]]) -> None:
        """Each named set of overrides must give a valid trial config, checked now rather than when its trials start."""
        from trainables.config_io import set_by_path

        for name, overrides in named.items():
            tree = self.trial.model_dump()
            try:
                for path, value in overrides.items():
                    set_by_path(tree, path, value)
                TrialConfig.model_validate(tree).resolved_model()
            except (ValidationError, ConfigError) as err:
                problem = describe_validation_error(err, TrialConfig) if isinstance(err, ValidationError) else str(err)
                raise ValueError(f"{where}.{name}: {problem}") from None

    @property
    def output_dir(self) -> Path:
        return Path(self.output or Path("studies") / self.name).resolve()

    @property
    def tune_storage(self) -> str:
        """Where Tune and Train keep results and checkpoints. A local path is made absolute here, on the driver:
        every node then writes to the same path (on a cluster, a shared mount); URIs are used as given."""
        if self.storage_path and "://" in self.storage_path:
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve()) if self.storage_path else str(self.output_dir / "tune")

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.output_dir / 'mlflow.db'}"

    @property
    def kind(self) -> str:
        """Which phases the study runs (contract.PHASE_ORDER)."""
        if self.ablation:
            return "ablation"
        if self.design:
            return "searched-design" if self.design.searched_arm else "design"
        return "search"

    @property
    def optuna_url(self) -> str:
        return optuna_url(self.output_dir)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name



def load_study_config(path: str | None = None, overrides: list[str] = ()) -> StudyConfig:
    data = load_yaml(str(path or DEFAULT_CONFIG))
    config = validate(StudyConfig, apply_overrides(data, list(overrides)))
    config.trial.resolved_model()
    return config


__all__ = ["StudyConfig", "load_study_config", "ConfigError"]
