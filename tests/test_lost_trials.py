"""A trial the ledger opened but Tune never saved (the driver was killed in between) is closed as lost when the
resumed Tune run starts: its record leaves the phase's records, so nothing waits on it, and its MLflow run, if one
was made, is closed and deleted, so the UI shows one run per trial. Real ledger, real MLflow store, real Tune
`Trial` objects (stubs: no trainable runs)."""

from mlflow.entities import ViewType
from ray.tune.experiment import Trial

from study.phases.suggestion import Suggestion
from study.tracking.callback import MlflowTrialCallback, TrialRules
from study.tracking.ledger import Ledger, load_records
from study.tracking.lost import LOST_REASON, lost_trials
from study.tracking.mlflow_runs import connect, start_parent_run
from study.tracking.run_writer import ParentRun
from tests.conftest import TINY_TRIAL
from trainables.config import load_trial_config

TOTAL_KIMG = 0.256


def _trial(trial_id: str, images: int) -> Trial:
    suggestion = Suggestion(cell=f"n{images}", regime_fraction=1.0, images=images, role="baseline", seed=0)
    return Trial("scoreaug_trial", config=suggestion.to_tune(), trial_id=trial_id, stub=True)


def _callback(parent: ParentRun, ledger_path) -> MlflowTrialCallback:
    base = load_trial_config(None, TINY_TRIAL).model_dump()
    return MlflowTrialCallback(parent, ledger_path, "design", TrialRules(TOTAL_KIMG, 0.1, base), ledger_path.parent / "samples")


def test_a_trial_tune_never_saved_is_closed_as_lost_and_its_run_discarded(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment = connect(uri, "lost", tmp_path / "mlartifacts")
    parent = ParentRun(uri, experiment, start_parent_run(client, experiment, "lost", {}, None))
    ledger_path = tmp_path / "trials_design.jsonl"
    saved, orphan = _trial("saved_00000", 10), _trial("orphan_00001", 20)

    first = _callback(parent, ledger_path)  # the driver that is killed: Tune saved `saved`, not `orphan`
    first.on_step_begin(0, [])
    for trial in (saved, orphan):
        first.on_trial_start(0, [saved, orphan], trial)
        first.on_trial_result(0, [saved, orphan], trial, {"kimg": 0.128, "memorization": 0.5})
    tags = {"trial_id": "torn_00002", "phase": "design"}  # opened, then killed before its run was made
    Ledger(ledger_path).open("torn_00002", "design", Suggestion.from_tune(_trial("x", 30).config), {}, tags)
    orphan_run = first.ledger.records[orphan.trial_id]["run_id"]

    resumed = _callback(parent, ledger_path)  # --resume: Tune restored `saved` only
    resumed.on_step_begin(0, [saved])
    resumed.on_step_begin(1, [saved])  # only the first step of a run looks: later trials are Tune's own

    assert set(load_records(tmp_path, "design")) == {saved.trial_id}  # the phase no longer waits on the orphans
    lost = Ledger(ledger_path).lost
    assert set(lost) == {orphan.trial_id, "torn_00002"} and {r["lost"] for r in lost.values()} == {LOST_REASON}
    assert all(r["closed"] for r in lost.values()) and lost[orphan.trial_id]["history"]  # nothing computed is dropped
    run = client.get_run(orphan_run)
    assert run.info.status == "KILLED" and run.info.lifecycle_stage == "deleted"
    visible = client.search_runs([experiment], "tags.phase = 'design'")
    assert [r.data.tags["trial_id"] for r in visible] == [saved.trial_id]
    assert len(client.search_runs([experiment], "tags.phase = 'design'", run_view_type=ViewType.ALL)) == 2

    again = _callback(parent, ledger_path)  # a second resume finds nothing more to close
    again.on_step_begin(0, [saved])
    assert set(again.ledger.records) == {saved.trial_id} and set(again.ledger.lost) == set(lost)


def test_records_tune_does_not_hold_are_lost_except_a_search_phases_ended_ones():
    """An ended trial Tune never saved is placed again by a design's or a fixed list's searcher (restored from Tune's
    state), so its record gives way to the re-run; Optuna was told a search trial's end and never asks it again."""
    records = {"a": {"status": "completed"}, "b": {}, "c": {}}
    assert lost_trials(records, ["c"], "design") == ["a", "b"] and lost_trials(records, ["c"], "confirm") == ["a", "b"]
    assert lost_trials(records, ["c"], "search") == ["b"]
    assert lost_trials(records, ["a", "b", "c"], "design") == []
