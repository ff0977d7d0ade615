"""One phase as one Ray Tune run: the Tuner built in one place, quiet on the terminal, checked for completion."""

from __future__ import annotations

import os

from study.driver.signals import tune_handlers_removed_after
from study.driver.study_run import StudyRun
from study.driver.trainable import trains_in_trial_process, trial_resources
from study.phases.specs import PhaseSpec
from study.tracking.callback import MlflowTrialCallback, phase_callback
from study.tracking.ledger import load_records
from study.tracking.progress import ProgressCallback


class PhaseInterrupted(Exception):
    """Tune returned before every trial of the phase ended (a SIGINT: Tune saves its state and returns)."""


def run_phase(run: StudyRun, spec: PhaseSpec, trainable, concurrency: int) -> None:
    """Run (or, with --resume, restore) the phase's Tune experiment; raise PhaseInterrupted if it did not end."""
    config = run.config
    MlflowTrialCallback.resume_parent = run.tracking.parent
    tracker = phase_callback(run.tracking.parent, config, run.output, spec.phase)
    callbacks = [tracker, ProgressCallback.for_study(config, spec, tracker.ledger.path)]
    with tune_handlers_removed_after():
        _tuner(run, spec, trainable, callbacks, concurrency).fit()
    records = load_records(run.output, spec.phase)
    if not spec.ended(records):
        ended = sum("status" in r for r in records.values())
        raise PhaseInterrupted(f"{spec.phase}: {ended} of {spec.trials} trials ended")


def _tuner(run: StudyRun, spec: PhaseSpec, trainable, callbacks: list, concurrency: int):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    config = run.config
    # Tune's new console output prints a configuration box, a results path and a TensorBoard hint per run, even at
    # verbose=0; its legacy reporter at verbose=0 prints nothing. The study's own progress line says what matters.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    path = f"{config.tune_storage.rstrip('/')}/{spec.phase}"
    resources = config.resources.model_dump()
    in_process = trains_in_trial_process(resources)
    trainable = tune.with_resources(trainable, trial_resources(resources))
    if run.resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(spec.searcher, max_concurrent=concurrency),
                                    scheduler=spec.scheduler, num_samples=spec.trials, reuse_actors=True),
        run_config=tune.RunConfig(name=str(spec.phase), storage_path=config.tune_storage, callbacks=callbacks, verbose=0,
                                  # Ray Train retries a worker group; a trial in its own process is retried by Tune.
                                  failure_config=tune.FailureConfig(max_failures=config.resources.max_failures
                                                                    if in_process else 0)),
    )
