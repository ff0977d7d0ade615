"""Makes one phase's tracking calls against MLflow, and records in the ledger what each call established."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from study.tracking.calls import Call, CreateRun, Discard, LogArtifact, LogBatch, Terminate
from study.tracking.ledger import Ledger


@dataclass(frozen=True)
class ParentRun:
    """Where a phase's child runs go: the tracking store, the study's experiment and its parent run."""

    uri: str
    experiment_id: str
    run_id: str


class RunWriter:
    """Executes calls for the trials of one phase; holds no state MLflow or the ledger does not."""

    def __init__(self, parent: ParentRun, phase: str, ledger: Ledger):
        self.parent, self.phase, self.ledger = parent, phase, ledger
        self._client = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.parent.uri)
        return self._client

    def __getstate__(self):
        return {**self.__dict__, "_client": None}  # Tune pickles callbacks; a client does not travel

    def __call__(self, trial_id: str, call: Call) -> None:
        record = self.ledger.records.get(trial_id) or self.ledger.lost[trial_id]
        if isinstance(call, CreateRun):
            run = self._found_run(record) if call.find_first else None
            run = run or self.client.create_run(self.parent.experiment_id, run_name=record["run_name"], tags=record["tags"])
            self.ledger.mark(trial_id, run_id=run.info.run_id)
        elif isinstance(call, LogBatch):
            batch = call.batch
            self.client.log_batch(record["run_id"], list(batch.metrics), list(batch.params), list(batch.tags))
        elif isinstance(call, LogArtifact):
            self.client.log_artifact(record["run_id"], call.local_path, call.artifact_path)
        elif isinstance(call, Terminate):
            self.client.set_terminated(record["run_id"], call.status)
            self.ledger.mark(trial_id, closed=True)  # everything of this run is in MLflow: a resumed driver skips it
        elif isinstance(call, Discard):
            run = self.client.get_run(record["run_id"]) if record.get("run_id") else self._found_run(record)
            if run is not None and run.info.lifecycle_stage != "deleted":
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.client.delete_run(run.info.run_id)
            self.ledger.mark(trial_id, closed=True)

    def _found_run(self, record: dict):
        """The run a killed driver made and died before saving its id, found by its tags."""
        found = self.client.search_runs([self.parent.experiment_id], f"tags.trial_id = '{record['tags']['trial_id']}' and "
                                        f"tags.phase = '{self.phase}'")
        return next((r for r in found if r.data.tags.get("mlflow.parentRunId") == self.parent.run_id), None)
