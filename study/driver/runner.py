"""Runs a study: connect tracking, start or join Ray, search every regime, confirm, report.

The phases are resumable: `study_state.json` in the output folder records the parent MLflow run
and the phase reached; Tune's own experiment state resumes unfinished trials from checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune.search import Searcher

from study.config import StudyConfig
from trainables.files import write_text_atomic
from study.phases.ablation import ablation_suggestions
from study.phases.confirm import FixedSearcher, confirmation_suggestions
from study.driver.plan import Node, describe, make_plan
from study.driver.preflight import check_study
from study.tracking.progress import ProgressCallback
from study.contract import PHASES, FailureSummary, summarize_failures
from study.phases.searcher import RegimeSearcher
from study.tracking.ledger import load_records, records_file
from study.tracking.callback import MlflowTrialCallback, connect, log_parent_metrics, start_parent_run
from study.driver.trainable import TRIAL_DRIVER_RESOURCE, make_trainable, trains_in_trial_process, trial_resources

STATE_FILE = "study_state.json"


class StudyError(RuntimeError):
    """A study-level problem worded for one line on stderr."""


def search_fingerprint(config: StudyConfig) -> str:
    """What a resumed study must share with the original: everything but the output and tracking locations."""
    relevant = config.model_dump(exclude={"output", "tracking", "storage_path", "failures"})
    relevant["resources"] = {k: v for k, v in relevant["resources"].items() if k in ("num_workers",)}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _load_state(output: Path, config: StudyConfig, resume: bool) -> dict:
    path = output / STATE_FILE
    if path.exists():
        state = json.loads(path.read_text())
        if not resume:
            raise StudyError(f"{output} already holds study {state.get('name')!r}; pass --resume to continue it, "
                             "or choose another --output or name")
        if state["fingerprint"] != search_fingerprint(config):
            raise StudyError(f"the config differs from the one {output} was started with (search space, regimes, budget "
                             "or trial settings changed); resume with the original config or start a new study")
        return state
    if resume:
        raise StudyError(f"nothing to resume in {output}: no {STATE_FILE}; run without --resume to start the study")
    return {"name": config.name, "fingerprint": search_fingerprint(config), "phase": "search"}


def _save_state(output: Path, state: dict) -> None:
    write_text_atomic(output / STATE_FILE, json.dumps(state, indent=1))


def _git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _start_ray(config: StudyConfig, address: str | None, concurrency_hint: int, log=print) -> bool:
    """Join or start Ray; returns whether this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():  # an embedding program (or a test session) owns Ray
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False)
        if TRIAL_DRIVER_RESOURCE not in ray.cluster_resources():
            raise StudyError(f"the cluster at {address or os.environ['RAY_ADDRESS']} has no {TRIAL_DRIVER_RESOURCE!r} "
                             "resource; start its head with --resources='{\"trial_driver\": 64}' (cluster.yaml does)")
        return True
    cpus = config.resources.num_cpus or os.cpu_count() or 1
    # Ray Train's controller polls its workers at this interval (default 2 s): every trial waits for a poll to start
    # its worker group and another to see it finish. Set before Ray starts, so its processes inherit it.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # The dashboard must run: Tune frees an early-stopped trial's worker placement group through its state API.
    # address="local": a Ray already running on this machine (`ray start`, `ray up` on localhost) is never joined
    # by accident; --address auto or RAY_ADDRESS joins it on purpose.
    log(f"starting a local Ray with {cpus} CPUs (a Ray cluster already running here is not joined; --address auto joins it)")
    ray.init(address="local", num_cpus=cpus, resources={TRIAL_DRIVER_RESOURCE: max(1, concurrency_hint)}, include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=True, logging_level="ERROR")
    return True


def cluster_nodes() -> list[Node]:
    import ray

    return [Node(cpus=n["Resources"].get("CPU", 0.0), gpus=n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n["Alive"]]


def local_nodes(config: StudyConfig) -> list[Node]:
    import torch

    return [Node(cpus=float(config.resources.num_cpus or os.cpu_count() or 1), gpus=float(torch.cuda.device_count()))]


def _tuner(config, trainable, searcher, scheduler, callbacks, name, num_samples, concurrency, resume):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    path = f"{config.tune_storage.rstrip('/')}/{name}"
    resources = config.resources.model_dump()
    in_process = trains_in_trial_process(resources)
    trainable = tune.with_resources(trainable, trial_resources(resources))
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                    scheduler=scheduler, num_samples=num_samples, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=config.tune_storage, callbacks=callbacks, verbose=0,
                                  # Ray Train retries a worker group; a trial in its own process is retried by Tune.
                                  failure_config=tune.FailureConfig(max_failures=config.resources.max_failures
                                                                    if in_process else 0)),
    )


class PhaseInterrupted(Exception):
    """Tune returned before every trial of the phase ended (a SIGINT: Tune saves its state and returns)."""


def _check_phase_ended(output: Path, phase: str, expected: int) -> None:
    """Every trial that really ended has a status in the ledger; fewer than expected means the phase was
    interrupted and must not be taken as done."""
    ended = sum("status" in r for r in load_records(output, phase).values())
    if ended < expected:
        raise PhaseInterrupted(f"{phase}: {ended} of {expected} trials ended")


@dataclass
class Phase:
    """What Tune needs to run one phase, and the phase that follows it."""

    name: str
    searcher: Searcher
    trials: int
    next: str
    scheduler: object = None
    notes: list[str] = field(default_factory=list)
    after: Callable[[], object] | None = None  # once every trial ended


def ablation_phase(config: StudyConfig, cells, storage_url: str) -> Phase:
    suggestions = ablation_suggestions(config, cells)
    return Phase("ablation", FixedSearcher(suggestions), len(suggestions), "report")


def search_phase(config: StudyConfig, cells, storage_url: str) -> Phase:
    searcher = RegimeSearcher(cells, config.search, storage_url, config.name, config.trial.resolved_model()["dropout"],
                              config.trial.train.total_kimg)
    return Phase("search", searcher, len(cells) * config.search.trials_per_regime, "confirm", early_stopping(config),
                 after=searcher.close_orphans)


def confirm_phase(config: StudyConfig, cells, storage_url: str) -> Phase:
    suggestions, notes = confirmation_suggestions(cells, storage_url, config.name, config.confirm, config.search,
                                                  config.trial.resolved_model()["dropout"])
    return Phase("confirm", FixedSearcher(suggestions), len(suggestions), "report", notes=notes)


PHASE_BUILDERS = {"ablation": ablation_phase, "search": search_phase, "confirm": confirm_phase}


def early_stopping(config: StudyConfig):
    """ASHA on the scheduler's metric at eval points (kimg), in the search's direction, each cell on its own
    ladder (study/schedulers.py); None without early stopping."""
    from study.phases.schedulers import PerCellASHA

    if config.scheduler.kind != "asha":
        return None
    total_kimg = config.trial.train.total_kimg
    return PerCellASHA(time_attr="kimg", metric=config.scheduler.metric, mode=config.search.mode, max_t=total_kimg,
                         grace_period=min(config.scheduler.grace_kimg, total_kimg),
                         reduction_factor=config.scheduler.reduction_factor)


def run_study(config: StudyConfig, address: str | None = None, resume: bool = False, log=print) -> Path:
    """Run (or resume) the whole study; returns the output folder."""
    remote = bool(address or os.environ.get("RAY_ADDRESS") or config.resources.autoscaling)
    check_study(config, on_this_machine=not remote)
    output = _writable_output(config)
    state = _load_state(output, config, resume)
    client, experiment_id = connect(config.tracking_uri, config.experiment_name, output / "mlartifacts")
    parent = start_parent_run(client, experiment_id, config.name,
                              {"git_commit": _git_commit(), "dataset": config.trial.dataset}, state.get("parent_run_id"))
    state["parent_run_id"] = parent
    _save_state(output, state)
    try:
        _run_phases(config, output, state, client, experiment_id, address, remote, resume, log)
    except BaseException:
        if not state.get("launched"):  # nothing ran: not a study to resume, so the same command simply starts again
            (output / STATE_FILE).unlink(missing_ok=True)
            _quietly(lambda: client.set_terminated(parent, "FAILED"))
        raise

    from study.report.results import write_report

    artifacts, headline = write_report(config, output, log)
    try:
        for path in artifacts:
            client.log_artifact(parent, str(path), "report" if path.parent.name == "report" else None)
        log_parent_metrics(client, parent, headline)
        client.set_terminated(parent, "FINISHED")
    except Exception as err:  # the results are on disk; only their copy in MLflow is missing
        raise StudyError(f"results and report are written to {output}, but MLflow at {config.tracking_uri} failed "
                         f"({str(err).splitlines()[0][:200]}); run again with --resume to attach them") from None
    state["phase"] = "done"
    _save_state(output, state)
    return output


def _writable_output(config: StudyConfig) -> Path:
    output = config.output_dir
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise StudyError(f"cannot write to output folder {output}: {err.strerror}; choose another with --output") from None
    return output


def _quietly(call) -> None:
    try:
        call()
    except Exception:  # best effort: the caller is already failing with a clearer error
        pass


def _run_phases(config, output, state, client, experiment_id, address, remote, resume, log) -> None:
    """Start or join Ray, then run the phases from the one the state records, each saved as done when it ends."""
    import ray

    plan = make_plan(config, None if remote else local_nodes(config))
    (output / "study_config.yaml").write_text(_yaml(config))
    client.log_artifact(state["parent_run_id"], str(output / "study_config.yaml"))
    log(describe(config, plan))
    started_ray = _start_ray(config, address, plan.concurrency, log)
    try:
        if not config.resources.autoscaling:
            plan = make_plan(config, cluster_nodes())
        base_trial = config.trial.model_dump()
        trainable = make_trainable(base_trial, config.resources.model_dump(), config.tune_storage)
        total_kimg = config.trial.train.total_kimg

        def tracker(phase: str) -> MlflowTrialCallback:
            return MlflowTrialCallback(config.tracking_uri, experiment_id, state["parent_run_id"], records_file(output, phase),
                                       phase, total_kimg, base_trial, config.scaling.onset_threshold, output / "samples")

        if config.ablation and state["phase"] == "search":
            state["phase"] = "ablation"
        while state["phase"] in PHASE_BUILDERS:
            phase = PHASE_BUILDERS[state["phase"]](config, plan.cells, f"sqlite:///{output / 'optuna.db'}")
            for note in phase.notes:
                log(note)
            if phase.trials:
                state["launched"] = True
                _save_state(output, state)
                progress = ProgressCallback(phase.name, phase.trials, config.search.objective_names[0], total_kimg, config.search.mode)
                _tuner(config, trainable, phase.searcher, phase.scheduler, [tracker(phase.name), progress], phase.name,
                       phase.trials, plan.concurrency, resume).fit()
                _check_phase_ended(output, phase.name, phase.trials)
            if phase.after:
                phase.after()
            state["phase"] = phase.next
            _save_state(output, state)

        for phase in PHASES:  # runs that an outage kept from being created, from the ledger
            if records_file(output, phase).exists():
                tracker(phase).on_experiment_end([])
    finally:
        if started_ray:
            ray.shutdown()


def study_failures(output: Path) -> FailureSummary:
    """Every ended trial of every phase, and the failed ones grouped by reason."""
    return summarize_failures([r for phase in PHASES for r in load_records(output, phase).values()])


def _yaml(config: StudyConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(), sort_keys=False)
