"""The Ray entry points: one DDP rank of a trial's worker group, or a 1-worker trial in its Tune trial process."""

from __future__ import annotations

from trainables.config import TrialConfig
from trainables.failures import deterministic_kind, failure_report
from trainables.loop import run_trial
from trainables.session import RayTrainSession, TuneTrialSession


def train_worker(config: dict) -> None:
    """A rank of a Ray Train worker group: reports and checkpoints go through Ray Train."""
    _run(config, RayTrainSession())


def train_in_trial_process(config: dict) -> None:
    """Ray Train's local mode inside a Tune trial: reports and checkpoints go straight to Tune."""
    _run(config, TuneTrialSession())


def _run(config: dict, session: RayTrainSession) -> None:
    """Run the worker loop. A deterministic error (bad config or data, a NaN loss, a bug) is reported once and
    ends the trial cleanly, so it is not retried; anything else (a fault) propagates and is retried."""
    try:
        run_trial(TrialConfig.model_validate(config), session,
                  log=lambda line: print(line, flush=True) if session.rank == 0 else None)
    except Exception as err:
        kind = deterministic_kind(err)
        if kind is None:
            raise
        session.report(failure_report(err, kind), None)
