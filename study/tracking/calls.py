"""Tracking calls as values, and the queue that keeps them in order through a tracking outage.

A call that fails because the server is away waits, in order, behind earlier failures and is retried on the
next event; anything that is not an outage is a bug and propagates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from study.tracking.records import Batch


@dataclass(frozen=True)
class CreateRun:
    """Create the trial's run; `find_first`: a killed driver may have made it already (found by its tags)."""

    find_first: bool = False


@dataclass(frozen=True)
class LogBatch:
    batch: Batch


@dataclass(frozen=True)
class LogArtifact:
    local_path: str
    artifact_path: str


@dataclass(frozen=True)
class Terminate:
    status: str  # the MLflow run status


@dataclass(frozen=True)
class Discard:
    """Close and delete a lost trial's run, if it was ever made (tracking/lost.py): the trial runs again under a
    new id and run, so the UI shows one run per trial. MLflow keeps a deleted run restorable."""


Call = CreateRun | LogBatch | LogArtifact | Terminate | Discard


def transient_errors() -> tuple[type[BaseException], ...]:
    """What an outage raises: MLflow's own errors (the server answered 5xx, or the client gave up), and the
    connection errors beneath."""
    import requests
    from mlflow.exceptions import MlflowException

    return MlflowException, requests.exceptions.RequestException, OSError


class CallQueue:
    """Calls in order, per trial; what fails during an outage waits, in order, for the next try."""

    def __init__(self, attempt: Callable[[str, Call], None]):
        self.attempt = attempt  # (trial id, call) -> None; raises on failure
        self.pending: list[tuple[str, Call]] = []
        self.failed_calls = 0

    def call(self, trial_id: str, call: Call) -> None:
        """Make the call now, or queue it behind earlier failures (so a run's calls keep their order)."""
        self.flush()
        if self.pending:
            self.pending.append((trial_id, call))
        elif not self._try(trial_id, call):
            self.failed_calls += 1
            self.pending.append((trial_id, call))

    def queue(self, trial_id: str, call: Call) -> None:
        self.pending.append((trial_id, call))

    def drop(self, trial_id: str) -> None:
        """Forget the calls waiting for one trial (a lost one, whose run is discarded instead)."""
        self.pending = [(queued_id, call) for queued_id, call in self.pending if queued_id != trial_id]

    def flush(self) -> None:
        while self.pending and self._try(*self.pending[0]):
            self.pending.pop(0)

    def _try(self, trial_id: str, call: Call) -> bool:
        try:
            self.attempt(trial_id, call)
            return True
        except transient_errors():
            return False
