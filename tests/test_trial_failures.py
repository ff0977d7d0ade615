"""A trial that cannot run fails once, without retries, and a study whose trials fail says so in its exit status.

Fast: the one status table the searcher, the tracker and the progress line share, and the error classes.
Slow: a real study (the session's Ray) whose searched trial hits a deterministic error inside its worker.
"""

import json
from collections import Counter

import optuna
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray.tune.experiment import Trial

from study.tracking.ledger import Ledger, load_records, records_file
from study.tracking.progress import ProgressCallback
from study.phases.searcher import trial_outcome
from study.phases.suggestion import Suggestion
from study.contract import MLFLOW_STATUS, FailureSummary, summarize_failures, trial_status
from tests.conftest import GRID_CONFIG, TINY_TRIAL
from trainables.checkpoint import CheckpointError
from trainables.config_io import ConfigError
from trainables.data import DatasetError
from trainables.failures import deterministic_kind, failure_report
from trainables.loop import TrainingDiverged

TOTAL = 0.256

# last result, errored in Tune -> status, Optuna state, MLflow run status, progress count
STATUS_TABLE = [
    ({"kimg": 0.256, "test_loss": 0.5}, False, "completed", TrialState.COMPLETE, "FINISHED"),
    ({"kimg": 0.128, "test_loss": 0.5}, False, "early_stopped", TrialState.PRUNED, "FINISHED"),
    ({"kimg": 0.0, "error_kind": "diverged", "diverged": 1.0, "error": "nan"}, False, "diverged", TrialState.FAIL, "FAILED"),
    ({"kimg": 0.0, "error_kind": "config", "error": "bad"}, False, "failed", TrialState.FAIL, "FAILED"),
    ({"kimg": 0.256, "error_kind": "data", "error": "gone"}, False, "failed", TrialState.FAIL, "FAILED"),
    ({"kimg": 0.128, "test_loss": 0.5}, True, "failed", TrialState.FAIL, "FAILED"),
    (None, True, "failed", TrialState.FAIL, "FAILED"),
]


@pytest.mark.parametrize("last, errored, status, state, run_status", STATUS_TABLE)
def test_one_status_table_for_searcher_tracker_and_progress(tmp_path, last, errored, status, state, run_status):
    assert trial_status(last, errored, TOTAL) == status
    assert trial_outcome(last, errored, TOTAL, ["test_loss"])[0] == state  # the searcher
    assert MLFLOW_STATUS[status] == run_status
    ledger = Ledger(tmp_path / "trials_search.json")  # the tracker's ledger, fed as the callback feeds it
    ledger.open("t_00000", "search", Suggestion(cell="r1", regime_fraction=1.0), {}, {})
    if last:
        (ledger.add_failure if "error_kind" in last else ledger.add_point)("t_00000", last)
    assert ledger.finish("t_00000", errored, "", TOTAL, 0.1)["status"] == status
    progress = ProgressCallback("search", 1, "test_loss", TOTAL)
    trial = Trial("scoreaug_trial", config=Suggestion(cell="r1", regime_fraction=1.0).to_tune(), trial_id="t_00000", stub=True)
    trial.run_metadata.last_result = dict(last or {})
    progress.on_trial_start(0, [], trial)
    (progress.on_trial_error if errored else progress.on_trial_complete)(0, [], trial)
    assert progress.finished["t_00000"]["status"] == status


@pytest.mark.parametrize("error, kind", [
    (TrainingDiverged("training loss is nan at kimg 1.000", 1.0), "diverged"), (ConfigError("model: no U-Net"), "config"),
    (DatasetError("cannot read x.png"), "data"), (CheckpointError("truncated"), "checkpoint"),
    (ValueError("img_resolution 8 is not divisible"), "error"), (KeyError("net"), "error"),
    (RuntimeError("NCCL communicator was aborted"), None), (OSError("connection reset"), None), (MemoryError(), None),
])
def test_deterministic_errors_are_reported_once_and_faults_propagate(error, kind):
    assert deterministic_kind(error) == kind
    if kind:
        report = failure_report(error, kind)
        assert report["error_kind"] == kind and report["kimg"] == (1.0 if kind == "diverged" else 0.0)
        assert trial_status(report, False, TOTAL) == ("diverged" if kind == "diverged" else "failed")


def test_failure_summary_groups_reasons_and_decides_the_exit():
    records = [{"status": "completed"}] * 3 + [{"status": "failed", "reason": "config error: model: no U-Net"}] * 2 + [
        {"status": "diverged", "reason": "training loss is nan"}, {"history": []}]  # the last never ended
    summary = summarize_failures(records)
    assert summary.ended == 6 and summary.failed == 3
    assert summary.line() == ("3 of 6 trials failed: 2 x failed: config error: model: no U-Net; "
                              "1 x diverged: training loss is nan")
    assert not summary.too_many(0.5) and summary.too_many(0.4)
    assert FailureSummary(2, Counter({"failed: x": 2})).too_many(1.0)  # every trial failed: always a failed study
    assert summarize_failures([{"status": "completed"}]).line() == "all 1 trials ran"


def _channelless_space(trial) -> dict:
    """The `scoreaug` space plus an empty channel_mult: a valid value, but no U-Net, found only when the worker
    builds the network (the driver's preflight checks the base config; a search space is the user's code)."""
    from search_spaces.spaces import scoreaug

    return {**scoreaug(trial), "model.channel_mult": []}


@pytest.mark.slow
def test_a_deterministic_trial_error_is_not_retried_and_the_study_exits_non_zero(ray_session, tmp_path, monkeypatch, capsys):
    from search_spaces import spaces
    from study.run import main

    monkeypatch.setitem(spaces.SPACES, "channelless", _channelless_space)
    output = tmp_path / "study"
    sets = [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=channelless", "regimes=[1.0]", "search.trials_per_regime=2", "search.space=channelless",
        "search.metric=test_loss", "search.max_memorization=null", "scheduler.kind=none", "confirm.seeds=1",
        "resources.max_failures=3", "resources.max_concurrent=2", "failures.max_fraction=0.25"]
    code = main(["--config", GRID_CONFIG, "--output", str(output), *sum((["--set", s] for s in sets), [])])
    captured = capsys.readouterr()
    last_line = captured.err.strip().splitlines()[-1]
    assert code == 1, captured.err[-2000:]
    assert last_line.startswith("error: 1 of 2 trials failed: 1 x failed: ValueError: img_resolution 8 is not divisible"), last_line

    # Failed at once: the trial reported its error and ended; Tune saw no exception, so it restarted nothing.
    trial_dirs = list((output / "tune" / "search").glob("scoreaug_trial_*"))
    assert len(trial_dirs) == 2 and not list((output / "tune" / "search").rglob("error.*"))
    records = load_records(output, "search")
    failed = next(r for r in records.values() if r["status"] == "failed")
    assert failed["history"] == [] and "ValueError: img_resolution 8" in failed["reason"]
    run = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}").get_run(failed["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    trials = optuna.load_study(study_name="channelless-r1", storage=f"sqlite:///{output / 'optuna.db'}").trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL"]

    # A partial study still writes its results and report; the baseline is not confirmed without a ScoreAug trial.
    rows = pq.read_table(output / "results.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["completed", "failed"]
    assert (output / "report" / "summary.md").exists()
    assert "no ScoreAug trial completed its full budget" in captured.out
    assert json.loads((output / "study_state.json").read_text())["phase"] == "done"
    assert not records_file(output, "confirm").exists()


def test_a_resumed_progress_line_counts_the_trials_that_ended_before_the_resume(tmp_path, capsys):
    """Tune restores the progress callback as it was built, with no trial seen: it counts the phase's trials from
    the ledger when the resumed run starts, so the line says 3/4 after the third trial, not 1/4."""
    ledger = Ledger(tmp_path / "trials_design.jsonl")
    for number, images in enumerate((10, 40)):
        suggestion = Suggestion(cell=f"n{images}", regime_fraction=1.0, images=images, role="baseline")
        ledger.open(f"t{number}", "design", suggestion, {}, {})
        ledger.add_point(f"t{number}", {"kimg": TOTAL, "memorization": 0.5 + number / 4})
        ledger.finish(f"t{number}", False, "", TOTAL, 0.1)
    progress = ProgressCallback("design", 4, "memorization", TOTAL, ledger_path=ledger.path)
    progress.setup()
    trial = Trial("scoreaug_trial", config=Suggestion(cell="n10", regime_fraction=1.0, images=10, role="baseline").to_tune(),
                  trial_id="t2", stub=True)
    trial.run_metadata.last_result = {"kimg": TOTAL, "memorization": 1.0}
    progress.on_trial_start(0, [], trial)
    progress.on_trial_result(0, [], trial, {"kimg": TOTAL, "memorization": 1.0})
    progress.on_trial_complete(0, [], trial)
    line = capsys.readouterr().out.strip()
    assert line.startswith("[design 3/4 |") and "n10: 2 done" in line and "baseline copies 0.75" in line, line
