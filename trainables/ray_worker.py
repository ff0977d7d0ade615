"""The Ray entry points: one DDP rank of a trial's worker group, or a 1-worker trial in its Tune trial process."""

from __future__ import annotations

from trainables.config import TrialConfig
from trainables.loop import TrainingDiverged, run_trial
from trainables.session import RayTrainSession, TuneTrialSession


def train_worker(config: dict) -> None:
    """A rank of a Ray Train worker group: reports and checkpoints go through Ray Train."""
    _run(config, RayTrainSession())


def train_in_trial_process(config: dict) -> None:
    """Ray Train's local mode inside a Tune trial: reports and checkpoints go straight to Tune."""
    _run(config, TuneTrialSession())


def _run(config: dict, session: RayTrainSession) -> None:
    """Run the worker loop; a diverged run reports `diverged` once and ends cleanly (no retry of a NaN)."""
    trial = TrialConfig.model_validate(config)
    try:
        run_trial(trial, session, log=lambda line: print(line, flush=True) if session.rank == 0 else None)
    except TrainingDiverged as err:
        session.report({"kimg": getattr(err, "kimg", 0.0), "diverged": 1.0, "error": str(err)}, None)
