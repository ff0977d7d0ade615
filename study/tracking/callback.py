"""The Tune callback that records every trial of a phase: in its ledger, and as a child run in MLflow.

All trial logging happens in the driver, in a Tune callback: code after `trainer.fit()` never runs for a
trial that Tune stops early, but callbacks always do. Calls that fail (a tracking outage), run creation
included, are queued in order, retried on the next event and at the end of each phase, and counted, never
silently dropped; every metric is also kept in the phase's ledger (tracking/ledger.py). The callback only
routes Tune's events: what a run holds is built in records.py, made by run_writer.py, replayed by replay.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Callback

from study.config import StudyConfig
from study.faults import FaultPoint, fault_point
from study.phases.suggestion import Suggestion
from study.tracking.calls import CreateRun, LogArtifact, LogBatch, Terminate
from study.tracking.ledger import Ledger, records_file
from study.tracking.lost import close_lost_trials
from study.tracking.models import TrialModels
from study.tracking.records import closing_batch, metric_batch, param_batches, run_status, run_tags, trial_params
from study.tracking.replay import replay_queue
from study.tracking.run_writer import ParentRun, RunWriter
from study.tracking.sample_grids import copy_grids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialRules:
    """What decides a trial's status and curve statistics, and what its params are resolved against."""

    total_kimg: float
    onset_threshold: float
    base_trial: dict

    @classmethod
    def of(cls, config: StudyConfig) -> TrialRules:
        return cls(config.trial.train.total_kimg, config.scaling.onset_threshold, config.trial.model_dump())


def _error_line(trial) -> str:
    """The last line of the error Tune saved for a trial that raised."""
    error = getattr(trial, "error_file", None)
    reason = Path(error).read_text().strip().splitlines()[-1] if error and Path(error).exists() else ""
    return reason or "trial raised an error"


class MlflowTrialCallback(Callback):
    """Creates, fills and closes one child run per Tune trial, from the ledger it keeps; reuses runs across `--resume`."""

    def __init__(self, parent: ParentRun, ledger_path: Path, phase: str, rules: TrialRules, samples_dir: Path):
        self.phase, self.rules, self.samples_dir = phase, rules, Path(samples_dir)
        self.models = TrialModels(self.samples_dir.parent / "models")  # each ended trial's model, logged to its run
        self.ledger = Ledger(ledger_path)
        self.writer = RunWriter(parent, phase, self.ledger)
        self._start_queue()

    # Tune restores pickled callbacks on `--resume`, not the driver's new ones: the resuming driver names its own
    # tracking target here, since a resumed study may reach the same store at a new address (a new Slurm job's port).
    resume_parent: ParentRun | None = None

    def __setstate__(self, state):
        """The ledger on disk is the truth, and what MLflow lacks of it is replayed (the pickled queue is stale)."""
        self.__dict__.update({"models": TrialModels(Path(state["samples_dir"]).parent / "models"), **state})
        if MlflowTrialCallback.resume_parent is not None:
            self.writer = RunWriter(MlflowTrialCallback.resume_parent, self.phase, self.ledger)
        self.ledger.reload()
        self._start_queue()

    def _start_queue(self) -> None:
        """A fresh queue of what MLflow lacks of the ledger; lost trials are looked for at the next first step."""
        self.queue, self.logged = replay_queue(self.writer, self.ledger)
        self.lost_checked = False

    def on_step_begin(self, iteration, trials, **info):
        """At a Tune run's first step its restored trials are all there: a record none of them holds is lost."""
        if not self.lost_checked:
            self.lost_checked = True
            close_lost_trials(self.ledger, self.queue, (trial.trial_id for trial in trials), self.phase)

    def _open(self, trial) -> None:
        """On first sight of a trial: its record, and its run created (or queued, during an outage) with its params."""
        if trial.trial_id in self.ledger.records:
            return
        suggestion = Suggestion.from_tune(trial.config)
        params = trial_params(suggestion, self.rules.base_trial)
        tags = run_tags(suggestion, trial.trial_id, self.phase, self.writer.parent.run_id)
        self.ledger.open(trial.trial_id, self.phase, suggestion, params, tags)
        for call in [CreateRun()] + [LogBatch(batch) for batch in param_batches(params)]:
            self.queue.call(trial.trial_id, call)
        fault_point(FaultPoint.TRIAL_OPENED)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._open(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._open(trial)
        if "error_kind" in result:
            self.ledger.add_failure(trial.trial_id, result)
            return
        step = self.ledger.add_point(trial.trial_id, result)
        if step is None:
            return
        fault_point(FaultPoint.RESULT_RECORDED)
        if step not in self.logged.get(trial.trial_id, ()):  # logged by a driver killed before it saved it
            self.queue.call(trial.trial_id, LogBatch(metric_batch(result, step)))
        for local, artifact_dir in copy_grids(trial, result, self.samples_dir, step):
            self.queue.call(trial.trial_id, LogArtifact(str(local), artifact_dir))
        self.models.seen(trial.trial_id, result)

    def _finish(self, trial, failed: bool, reason: str = "") -> None:
        self._open(trial)
        record = self.ledger.finish(trial.trial_id, failed, reason, self.rules.total_kimg, self.rules.onset_threshold)
        for call in [*self.models.calls(trial), LogBatch(closing_batch(record)), Terminate(run_status(record["status"]))]:
            self.queue.call(trial.trial_id, call)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, failed=True, reason=_error_line(trial))

    def on_experiment_end(self, trials, **info):
        self.queue.flush()
        if self.queue.pending:
            _warn_unmade(self.queue, self.writer.parent.uri, self.phase, self.ledger.path)


def _warn_unmade(queue, uri: str, phase: str, ledger_path: Path) -> None:
    runs = len({trial_id for trial_id, _ in queue.pending})
    log.warning("MLflow at %s is unreachable: %d tracking calls for %d trial run(s) of the %s phase are not made; "
                "their metrics are in %s", uri, len(queue.pending), runs, phase, ledger_path)


def phase_callback(parent: ParentRun, config: StudyConfig, output: Path, phase: str) -> MlflowTrialCallback:
    """The callback of one phase of a study, with its ledger, samples and models folders in the study's output."""
    return MlflowTrialCallback(parent, records_file(output, phase), phase, TrialRules.of(config), output / "samples")
