"""The study config: what to search, in which regimes, on which resources, tracked where.

It embeds a full trial config (`trial:`) as the base every trial starts from; the search space's
overrides and the regime are applied on top of it, per trial.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from trainables.config import (ConfigError, StrictModel, TrialConfig, apply_overrides, describe_validation_error, load_yaml,
                               validate)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
METRICS = ("fid", "fid_test", "test_loss", "loss_gap", "train_loss")


class SearchConfig(StrictModel):
    space: str = "scoreaug"  # a function in search_spaces.spaces
    trials_per_regime: int = Field(4, ge=1)  # the baseline included
    seed: int = 0
    metric: Literal["fid", "fid_test", "test_loss", "loss_gap"] = "fid"
    mode: Literal["min", "max"] = "min"


class SchedulerConfig(StrictModel):
    kind: Literal["asha", "none"] = "asha"
    metric: Literal["fid", "fid_test", "test_loss", "loss_gap"] = "test_loss"  # must be reported at every eval point
    grace_kimg: float = Field(5.0, gt=0)
    reduction_factor: float = Field(2.0, gt=1)


class ConfirmConfig(StrictModel):
    seeds: int = Field(2, ge=0)  # fresh training seeds per confirmed config; 0 skips confirmation
    seed_offset: int = Field(1000, ge=1)


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


class TrackingConfig(StrictModel):
    uri: str | None = None  # None: sqlite:///<output>/mlflow.db
    experiment: str | None = None  # None: the study name


class StudyConfig(StrictModel):
    name: str = "demo"
    output: str | None = None  # None: ./studies/<name>
    storage_path: str | None = None  # Tune storage: a shared path or s3:// / gs://; None: <output>/tune
    regimes: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0], min_length=1)
    trial: TrialConfig = Field(default_factory=TrialConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    confirm: ConfirmConfig = Field(default_factory=ConfirmConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ablation: AblationConfig | None = None  # set: run these arms instead of search + confirmation

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

    @field_validator("regimes")
    @classmethod
    def _regimes(cls, value: list[float]) -> list[float]:
        for fraction in value:
            if not 0 < fraction <= 1:
                raise ValueError(f"each regime is a fraction of the training set in (0, 1]; {fraction} is not")
        if len(set(value)) != len(value):
            raise ValueError("regimes must be distinct")
        return sorted(value)

    @model_validator(mode="after")
    def _check(self) -> "StudyConfig":
        from search_spaces.spaces import SPACES

        if self.search.space not in SPACES:
            raise ValueError(f"search.space {self.search.space!r} is unknown; choose one of {', '.join(SPACES)}")
        if self.search.metric.startswith("fid") and not self.trial.eval.fid:
            raise ValueError(f"search.metric {self.search.metric} needs trial.eval.fid: true")
        if self.ablation:
            self._check_arms()
        if self.scheduler.kind == "asha" and self.scheduler.metric.startswith("fid") and self.trial.eval.fid_at != "every":
            raise ValueError("scheduler.metric fid needs trial.eval.fid_at: every (ASHA compares trials at every eval point)")
        return self

    def _check_arms(self) -> None:
        """Each arm must give a valid trial config, checked now rather than when its trials start."""
        from trainables.config import set_by_path

        for name, overrides in self.ablation.arms.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
                raise ValueError(f"ablation.arms: arm name {name!r} must be 1-64 letters, digits, '_', '.', '-'")
            tree = self.trial.model_dump()
            try:
                for path, value in overrides.items():
                    set_by_path(tree, path, value)
                TrialConfig.model_validate(tree)
            except (ValidationError, ConfigError) as err:
                problem = describe_validation_error(err, TrialConfig) if isinstance(err, ValidationError) else str(err)
                raise ValueError(f"ablation.arms.{name}: {problem}") from None

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
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def regime_name(self, fraction: float) -> str:
        return f"r{fraction:g}"


def load_study_config(path: str | None = None, overrides: list[str] = ()) -> StudyConfig:
    data = load_yaml(str(path or DEFAULT_CONFIG))
    config = validate(StudyConfig, apply_overrides(data, list(overrides)))
    config.trial.resolved_model()
    return config


__all__ = ["StudyConfig", "load_study_config", "ConfigError", "METRICS"]
