"""Runs a study: take the output folder, connect tracking, start or join Ray, run each phase in order, report.

The phases are resumable: `study_state.json` (driver/state.py) records the parent MLflow run and the phase
reached; Tune's own experiment state resumes unfinished trials from their checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from study.config import StudyConfig
from study.contract import TRIAL_PHASES, FailureSummary, Phase, study_phases, summarize_failures
from study.driver.plan import describe, make_plan
from study.driver.preflight import check_study
from study.driver.ray_cluster import cluster_nodes, planning_nodes, runs_remotely, start_ray
from study.driver.signals import forward_sigterm, sigterm_as_sigint
from study.driver.state import StudyError, forget_state, held_output, load_state
from study.driver.trainable import make_trainable
from study.driver.study_run import StudyRun
from study.driver.tuning import PhaseInterrupted, run_phase
from study.phases.specs import PHASE_BUILDERS
from study.tracking.callback import phase_callback
from study.tracking.ledger import load_records, records_file
from study.tracking.mlflow_runs import open_study_tracking
from study.tracking.models import register_models

__all__ = ["PhaseInterrupted", "StudyError", "run_study", "study_failures"]


def run_study(config: StudyConfig, address: str | None = None, resume: bool = False, log=print) -> Path:
    """Run (or resume) the whole study; returns the output folder."""
    check_study(config, on_this_machine=not runs_remotely(config, address))
    with sigterm_as_sigint(), held_output(config, log) as output:
        state = load_state(output, config, resume)
        tracking = open_study_tracking(config, output, state.get("parent_run_id"))
        run = StudyRun(config, output, state, tracking, address, resume)
        state["parent_run_id"] = tracking.parent_run_id
        run.save_state()
        try:
            _run_phases(run, log)
        except BaseException:
            if not state.get("launched"):  # nothing ran: not a study to resume
                forget_state(output)
                tracking.abandon()
            raise
        _report(run, log)
    return output


def _run_phases(run: StudyRun, log) -> None:
    """Start or join Ray, then run the trial phases from the one the state records, each saved as done when it ends."""
    import ray

    config = run.config
    plan = make_plan(config, planning_nodes(config, run.address))
    run.tracking.log_config(config, run.output)
    log(describe(config, plan))
    started_ray = start_ray(config, run.address, plan.concurrency, log)
    forward_sigterm()  # ray.init replaced the handler with its own
    try:
        if not config.resources.autoscaling:
            plan = make_plan(config, cluster_nodes())
        trainable = make_trainable(config.trial.model_dump(), config.resources.model_dump(), config.tune_storage)
        order = study_phases(config.kind)
        while run.state["phase"] in PHASE_BUILDERS:
            spec = PHASE_BUILDERS[run.state["phase"]](config, plan.cells, config.optuna_url, plan.concurrency)
            for note in spec.notes:
                log(note)
            if spec.trials:
                run.state["launched"] = True
                run.save_state()
                run_phase(run, spec, trainable, plan.concurrency)
            if spec.after:
                spec.after()
            run.state["phase"] = order[order.index(spec.phase) + 1]
            run.save_state()
        for phase in TRIAL_PHASES:  # runs that an outage kept from being created, from the ledger
            if records_file(run.output, phase).exists():
                phase_callback(run.tracking.parent, config, run.output, phase).on_experiment_end([])
    finally:
        if started_ray:
            ray.shutdown()
            forward_sigterm()  # and ray.shutdown() left SIGTERM to its default, which kills without a word


def _report(run: StudyRun, log) -> None:
    """Results and report from the ledgers, attached to the parent run; the study is then done."""
    from study.report.results import write_report

    report = write_report(run.config, run.output)
    try:
        run.tracking.attach_report(report.artifacts, report.parent_metrics, report.round_metrics)
        registered = register_models(run.tracking.client, report.models)
    except Exception as err:  # the results are on disk; only their copy in MLflow is missing
        raise StudyError(f"results and report are written to {run.output}, but MLflow at {run.config.tracking_uri} "
                         f"failed ({str(err).splitlines()[0][:200]}); run again with --resume to attach them") from None
    run.state["phase"] = Phase.DONE
    run.save_state()
    if registered:
        log(f"models in MLflow: {', '.join(registered)} (python -m study.after generate --model <one> ...)")
    for line in report.headline:
        log(line)


def study_failures(output: Path) -> FailureSummary:
    """Every ended trial of every phase, and the failed ones grouped by reason."""
    return summarize_failures([r for phase in TRIAL_PHASES for r in load_records(output, phase).values()])
