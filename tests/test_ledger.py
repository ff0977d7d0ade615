"""The ledger is an append-only log: its records survive a reload unchanged, a torn last line costs nothing, a
study folder from before the log still loads and continues, and an event costs the same bytes at any study size."""

import json
import pickle

import pytest

from study.phases.suggestion import Suggestion
from study.tracking import ledger as ledger_module
from study.tracking.ledger import Ledger, load_records, records_file

TOTAL = 0.512
CLOSED_KEYS = {"run_id", "run_name", "tags", "last_step", "phase", "suggestion", "params", "history", "started",
               "last_result", "first_step_at", "status", "reason", "ended", "curve", "closed"}


def _point(kimg: float, **extra) -> dict:
    return {"kimg": kimg, "train_loss": 1.0 - kimg, "test_loss": 1.1 - kimg, "loss_gap": 0.1, "img_per_sec": 100.0,
            **extra}


def _trial(ledger: Ledger, trial_id: str, points: int = 5, fail: bool = False) -> None:
    """One trial's events as the tracking callback records them."""
    suggestion = Suggestion(cell="r1", regime_fraction=1.0, role="search", overrides={"score_augment.p": 0.3},
                            optuna_trial=2)
    params = {"score_augment.p": 0.3, "model.channel_mult": [1, 2]}
    ledger.open(trial_id, "search", suggestion, params, {"trial_id": trial_id})
    ledger.mark(trial_id, run_id=f"run-{trial_id}")
    for i in range(1, points + 1):
        ledger.add_point(trial_id, _point(0.128 * i / 1.25, first_step_at=12.5, unreported=1))
    if fail:
        ledger.add_failure(trial_id, {"kimg": 0.0, "error_kind": "config", "error": "bad", "other": 1})
    ledger.finish(trial_id, False, "", TOTAL, 0.1)
    ledger.mark(trial_id, closed=True)


def test_records_survive_a_reload_unchanged(tmp_path):
    ledger = Ledger(tmp_path / "trials_search.json")  # the name callers pass: the ledger appends to the .jsonl
    _trial(ledger, "a_00000")
    _trial(ledger, "b_00001", points=0, fail=True)
    ledger.open("c_00002", "search", Suggestion(cell="r1", regime_fraction=1.0), {}, {})  # still running
    assert ledger.add_point("a_00000", _point(0.1)) is None  # a resumed trial re-reporting an old point
    with pytest.raises(KeyError):
        ledger.mark("nobody", closed=True)

    assert ledger.path == tmp_path / "trials_search.jsonl" and records_file(tmp_path, "search") == ledger.path
    assert set(ledger.records["a_00000"]) == CLOSED_KEYS
    assert ledger.records["b_00001"]["failure"] == {"kimg": 0.0, "error_kind": "config", "error": "bad"}
    assert ledger.records["b_00001"]["reason"] == "config error: bad"
    assert ledger.records == json.loads(json.dumps(ledger.records))  # plain JSON, as the report reads it
    assert Ledger(ledger.path).records == ledger.records
    assert load_records(tmp_path, "search") == ledger.records
    assert pickle.loads(pickle.dumps(ledger)).records == ledger.records  # Tune pickles the callback that holds it
    assert all(len(line) < 2000 for line in ledger.path.read_text().splitlines()[1:])  # small lines after the open


def test_a_torn_last_line_is_ignored_and_the_next_event_starts_a_new_line(tmp_path):
    ledger = Ledger(tmp_path / "trials_search.jsonl")
    _trial(ledger, "a_00000", points=2)
    ledger.open("b_00001", "search", Suggestion(cell="r1", regime_fraction=1.0), {}, {})
    whole = ledger.records
    line = json.dumps({"e": "point", "id": "b_00001", "s": 128, "p": _point(0.128)}, separators=(",", ":"))
    with open(ledger.path, "a") as log:
        log.write(line[: len(line) // 2])  # the driver was killed mid-write

    resumed = Ledger(ledger.path)
    assert resumed.records == whole == load_records(tmp_path, "search")
    assert resumed.add_point("b_00001", _point(0.128)) == 128
    lines = ledger.path.read_text().splitlines()
    assert lines[-2] == line[: len(line) // 2] and json.loads(lines[-1])["s"] == 128  # not glued onto the torn line
    assert Ledger(ledger.path).records["b_00001"]["history"] == [_point(0.128)]


@pytest.mark.parametrize("legacy", ["trials_search.json", "mlflow_runs_search.json"])
def test_a_study_folder_from_before_the_log_loads_and_continues(tmp_path, legacy):
    earlier = Ledger(tmp_path / "earlier" / "trials_search.jsonl")
    _trial(earlier, "a_00000", points=2)
    earlier.open("b_00001", "search", Suggestion(cell="r1", regime_fraction=1.0), {}, {})
    earlier.add_point("b_00001", _point(0.128))
    old = tmp_path / legacy
    old.write_text(json.dumps(earlier.records, indent=1))  # what earlier drivers rewrote at every event
    before = old.read_bytes()

    assert records_file(tmp_path, "search") == old and load_records(tmp_path, "search") == earlier.records
    resumed = Ledger(records_file(tmp_path, "search"))  # as the runner opens it on --resume
    assert resumed.records == earlier.records and not resumed.path.exists()  # reading converts nothing
    resumed.add_point("b_00001", _point(0.256))
    resumed.finish("b_00001", False, "", TOTAL, 0.1)

    assert records_file(tmp_path, "search") == tmp_path / "trials_search.jsonl" == resumed.path
    assert load_records(tmp_path, "search") == resumed.records == Ledger(resumed.path).records
    assert [p["kimg"] for p in resumed.records["b_00001"]["history"]] == [0.128, 0.256]
    assert resumed.records["a_00000"] == earlier.records["a_00000"]
    assert old.read_bytes() == before  # left as it was


def test_an_event_costs_the_same_bytes_at_any_study_size(tmp_path, monkeypatch):
    """Today's cost per event is a line, not the whole phase: the bytes a trial adds stay the same as trials add up."""
    monkeypatch.setattr(ledger_module.time, "time", lambda: 1_700_000_000.25)
    ledger = Ledger(tmp_path / "trials_search.jsonl")
    added = {}
    for n in range(1, 1001):
        size = ledger.path.stat().st_size if ledger.path.exists() else 0
        _trial(ledger, f"t_{n:05d}")
        added[n] = ledger.path.stat().st_size - size
    assert added[10] == added[100] == added[1000]
    assert len(load_records(tmp_path, "search")) == 1000
