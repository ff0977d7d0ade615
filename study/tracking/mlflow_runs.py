"""The study's place in MLflow: its experiment, its parent run, and what the driver attaches to that run.

One experiment per study, one parent run per study (config as artifact, git commit and dataset as tags),
one child run per trial (made by the trial callback, tracking/callback.py), the report on the parent at the end.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from study.config import StudyConfig
from study.tracking.run_writer import ParentRun


class TrackingError(RuntimeError):
    """The tracking server cannot be reached at study start."""


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """One TCP connection to an http(s) tracking server: MLflow's own client retries a refused connection with
    backoff for minutes before it gives up, so a dead server is found here, in seconds."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise TrackingError(f"MLflow tracking at {uri} is unreachable ({reason}); start the server or point "
                            "tracking.uri at a running one") from None


# MLflow's HTTP client retries a failed call 7 times with exponential backoff and waits up to 120 s per
# attempt: minutes in which the driver, and with it Tune's event loop, would stand still during an outage.
# The callback queues what fails and retries it on the next event, so one short attempt is enough.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def connect(uri: str, experiment: str, artifact_root: Path) -> tuple[MlflowClient, str]:
    """Client and experiment id; an unreachable server fails here, before any trial starts."""
    _check_reachable(uri)
    if uri.startswith("http"):
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)  # a user's own setting wins
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        location = artifact_root.as_uri() if "://" not in str(artifact_root) else str(artifact_root)
        if uri.startswith("http"):
            location = None  # the server decides (its --artifacts-destination)
        return client, client.create_experiment(experiment, artifact_location=location)
    except Exception as err:
        raise TrackingError(f"MLflow tracking at {uri} is unreachable or refused the experiment: {str(err).splitlines()[0][:200]}") from None


def start_parent_run(client: MlflowClient, experiment_id: str, study_name: str, tags: dict, run_id: str | None) -> str:
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=study_name, tags={"study": study_name, **tags})
    return run.info.run_id


def log_parent_metrics(client: MlflowClient, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """The study's headline statistics (N50, EMM, data multiplier, ...) on its parent run, in one batch per 500."""
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(value), now, step) for name, value in sorted(values.items())]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class StudyTracking:
    """The study's experiment and parent run, and what the driver logs to them."""

    uri: str
    client: MlflowClient
    experiment_id: str
    parent_run_id: str

    def log_config(self, config: StudyConfig, output: Path) -> None:
        import yaml

        path = output / "study_config.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
        self.client.log_artifact(self.parent_run_id, str(path))

    @property
    def parent(self) -> ParentRun:
        return ParentRun(self.uri, self.experiment_id, self.parent_run_id)

    def attach_report(self, artifacts: list[Path], headline: dict[str, float],
                      by_round: list[tuple[int, dict[str, float]]] = ()) -> None:
        """The report's files, its headline statistics and (an adaptive design) their values after each round,
        stepped by round so the MLflow UI charts the estimate converging; then the study's run is closed."""
        for path in artifacts:
            self.client.log_artifact(self.parent_run_id, str(path), "report" if path.parent.name == "report" else None)
        log_parent_metrics(self.client, self.parent_run_id, headline)
        for step, values in by_round:
            log_parent_metrics(self.client, self.parent_run_id, values, step)
        self.client.set_terminated(self.parent_run_id, "FINISHED")

    def abandon(self) -> None:
        """Close the parent run of a study that never launched a trial (best effort: the caller is failing already)."""
        try:
            self.client.set_terminated(self.parent_run_id, "FAILED")
        except Exception:
            pass


def open_study_tracking(config: StudyConfig, output: Path, parent_run_id: str | None) -> StudyTracking:
    """Connect to the tracking store and start (or, resuming, reopen) the study's parent run."""
    client, experiment_id = connect(config.tracking_uri, config.experiment_name, output / "mlartifacts")
    parent = start_parent_run(client, experiment_id, config.name,
                              {"git_commit": git_commit(), "dataset": config.trial.dataset}, parent_run_id)
    return StudyTracking(config.tracking_uri, client, experiment_id, parent)
