"""The study config: what to search, in which regimes, on which resources, tracked where.

It embeds a full trial config (`trial:`) as the base every trial starts from; the search space's
overrides and the regime are applied on top of it, per trial.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainables.config import ConfigError, StrictModel, TrialConfig, apply_overrides, load_yaml, validate

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
    controller_failure_limit: int = Field(3, ge=1)
    autoscaling: bool = False  # true on a `ray up` cluster: GPU nodes may appear after launch


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

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError("must be 1-64 letters, digits, '_', '.', '-'")
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
        if self.scheduler.kind == "asha" and self.scheduler.metric.startswith("fid") and self.trial.eval.fid_at != "every":
            raise ValueError("scheduler.metric fid needs trial.eval.fid_at: every (ASHA compares trials at every eval point)")
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output or Path("studies") / self.name).resolve()

    @property
    def tune_storage(self) -> str:
        return self.storage_path or str(self.output_dir / "tune")

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
