"""One study being run: what every step of the driver needs, built once instead of passed as a row of arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from study.config import StudyConfig
from study.driver.state import save_state
from study.tracking.mlflow_runs import StudyTracking


@dataclass
class StudyRun:
    """One study being run, built once and handed to every step instead of a row of arguments."""

    config: StudyConfig
    output: Path
    state: dict
    tracking: StudyTracking
    address: str | None
    resume: bool

    def save_state(self) -> None:
        save_state(self.output, self.state)
