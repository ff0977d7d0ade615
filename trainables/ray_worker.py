"""The Ray Train worker entry point: one DDP rank of a trial."""

from __future__ import annotations

from trainables.config import TrialConfig
from trainables.loop import TrainingDiverged, run_trial
from trainables.session import RayTrainSession


def train_worker(config: dict) -> None:
    """Run the worker loop; a diverged run reports `diverged` once and ends cleanly (no retry of a NaN)."""
    session = RayTrainSession()
    trial = TrialConfig.model_validate(config)
    try:
        run_trial(trial, session, log=lambda line: print(line, flush=True) if session.rank == 0 else None)
    except TrainingDiverged as err:
        session.report({"kimg": getattr(err, "kimg", 0.0), "diverged": 1.0, "error": str(err)}, None)
